"""values.compact_json: the same text as json.JSONEncoder with the same settings.

The document size check and the apply log's records use it; a replica whose
text differed would measure a document differently (another ``limit``
answer) or write another record than before.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from docstore.engine.errors import LimitError
from docstore.engine.values import DEFAULT_LIMITS, check_size, compact_json

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats()
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_same_text_as_the_json_encoder(value: Any) -> None:
    reference = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    assert compact_json()(value) == reference(value)


@settings(max_examples=200, deadline=None)
@given(_json_values)
def test_same_text_or_error_without_nan(value: Any) -> None:
    reference = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        expected = reference.encode(value)
    except ValueError:
        with pytest.raises(ValueError):
            compact_json(allow_nan=False)(value)
        return
    assert compact_json(allow_nan=False)(value) == expected


def test_non_json_values_raise_type_error_and_leave_it_usable() -> None:
    dumps = compact_json()
    with pytest.raises(TypeError, match="not JSON serializable"):
        dumps({"a": [1, b"bytes"]})
    # No state is left behind by the failure (no circular-reference markers).
    shared = [1, 2]
    assert dumps({"x": shared, "y": shared}) == '{"x":[1,2],"y":[1,2]}'
    assert dumps([math.inf]) == "[Infinity]"


def test_size_check_counts_utf8_bytes_of_the_compact_text() -> None:
    limit = DEFAULT_LIMITS.max_doc_bytes
    # '{"v":"' + s + '"}' is 8 bytes around the string; 'é' is 2 bytes in UTF-8.
    check_size({"v": "é" * ((limit - 8) // 2)})
    with pytest.raises(LimitError):
        check_size({"v": "é" * ((limit - 8) // 2 + 1)})
