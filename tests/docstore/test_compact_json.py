"""values.compact_json: the same text as json.JSONEncoder with the same settings,
and never more than ``JSON_BYTES_PER_CBOR_BYTE`` bytes per byte of CBOR.

The document size check and the apply log's records use it; a replica whose
text differed would measure a document differently (another ``limit``
answer) or write another record than before.
"""

from __future__ import annotations

import json
import math
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from docstore.engine.errors import DocstoreError, LimitError
from docstore.engine.validate import JSON_BYTES_PER_CBOR_BYTE, validate_command
from docstore.engine.values import DEFAULT_LIMITS, Limits, check_size, compact_json
from trioraft.transport.codec import decode_value

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


# ------------------------------------------- sizes bounded by the command's CBOR

_finite_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _json_size(value: Any) -> int:
    return len(compact_json()(value).encode())


#: The half float whose JSON text is longest: 3 bytes of CBOR, 23 characters.
WORST_HALF = -1.7881393432617188e-07


def test_every_half_float_keeps_within_the_json_per_cbor_bound() -> None:
    """The bound's worst case: a half float in an array, 3 bytes of CBOR for 23
    characters and a comma."""
    worst = 0.0
    for bits in range(1 << 16):
        data = b"\xf9" + bits.to_bytes(2, "big")
        value = cbor2.loads(data)
        if math.isfinite(value):
            worst = max(worst, (_json_size(value) + 1) / len(data))
    assert worst == 8 <= JSON_BYTES_PER_CBOR_BYTE


def test_a_command_of_worst_half_floats_keeps_within_the_bound_and_is_still_measured() -> None:
    """An array of the worst half float, as a client may send it (shortest floats):
    almost 8 bytes of JSON per byte of CBOR.  Its document is over a limit just
    below its size, with the command's size given or not (a bound of 7 would
    skip the measuring and accept it)."""
    cmd = {"op": "put", "coll": "c", "key": "k", "doc": {"": [WORST_HALF] * 2000}}
    data = cbor2.dumps(cmd, canonical=True)
    decoded = decode_value(data)
    size = _json_size(decoded["doc"])
    assert 7.9 < size / len(data) <= JSON_BYTES_PER_CBOR_BYTE
    limits = Limits(max_doc_bytes=size - 1000)
    for kw in ({}, {"encoded_size": len(data)}):
        with pytest.raises(LimitError):
            validate_command(decoded, limits, **kw)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_single_floats_keep_within_the_json_per_cbor_bound(bits: int) -> None:
    data = b"\xfa" + bits.to_bytes(4, "big")
    value = cbor2.loads(data)
    if math.isfinite(value):
        assert _json_size(value) + 1 <= JSON_BYTES_PER_CBOR_BYTE * len(data)


@settings(max_examples=300, deadline=None)
@given(_finite_json | st.text(alphabet=st.characters(max_codepoint=0x1F)))
def test_json_text_keeps_within_the_bound_of_its_cbor(value: Any) -> None:
    """Encoded with the shortest floats (as a client may), decoded as the node does."""
    data = cbor2.dumps(value, canonical=True)
    decoded = decode_value(data)
    assert _json_size(decoded) <= JSON_BYTES_PER_CBOR_BYTE * len(data)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.text(max_size=3), _finite_json, max_size=6),
    st.floats(min_value=6, max_value=12),
)
def test_a_size_skipped_by_the_bound_never_changes_the_verdict(
    doc: dict[str, Any], per_byte: float
) -> None:
    """With the command's CBOR size, the server measures fewer documents but refuses
    exactly the same commands as when it measures every one (limits around ten
    times the command's size, so about half the examples skip the measuring)."""
    data = cbor2.dumps({"op": "put", "coll": "c", "key": "k", "doc": doc}, canonical=True)
    cmd = decode_value(data)
    limits = Limits(max_doc_bytes=max(1, int(len(data) * per_byte)))

    def verdict(**kw: Any) -> str:
        try:
            validate_command(cmd, limits, **kw)
        except LimitError as exc:
            return f"limit: {exc}"
        except DocstoreError as exc:
            return type(exc).__name__
        return "ok"

    assert verdict(encoded_size=len(data)) == verdict()
