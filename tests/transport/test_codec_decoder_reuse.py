"""The codec's strict decoder is kept per thread and pointed at each value in turn.

Nothing of one value may reach the next: not the bytes it read ahead, not
the state a refused value left.  Each decode must give what a fresh decoder
gives, in any order of good and bad values and from several threads at once.
"""

from __future__ import annotations

import threading
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioraft.transport.codec import ProtocolError, decode_value

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)

# Values the decoder refuses, each for another reason and at another depth.
REFUSED = [
    cbor2.dumps({"x": [1, 2, {"y": 3}]})[:-2],  # cut short
    cbor2.dumps([1, 2]) + cbor2.dumps("after"),  # trailing bytes, read ahead with the value
    b"\x81" * 300 + b"\x01",  # nested too deep
    cbor2.dumps(cbor2.CBORTag(28, [1])),  # a tag (shared value)
    b"\xa2\x61a\x01\x61a\x02",  # duplicate map key
    b"\x9f\x01\xff",  # indefinite length
    b"\xff",  # a break with nothing open
]


def outcome(data: bytes) -> tuple[str, Any]:
    try:
        return "ok", decode_value(data)
    except ProtocolError as exc:
        return "refused", str(exc)


@given(st.lists(st.one_of(JSONISH.map(cbor2.dumps), st.sampled_from(REFUSED)), max_size=12))
def test_each_decode_is_what_a_fresh_decoder_gives(values: list[bytes]) -> None:
    for data in values:
        kind, got = outcome(data)
        if data in REFUSED:
            assert kind == "refused", data
        else:
            assert (kind, got) == ("ok", cbor2.loads(data))


@pytest.mark.parametrize("refused", REFUSED)
def test_a_refused_value_leaves_nothing_behind(refused: bytes) -> None:
    good = cbor2.dumps({"k": "v" * 50, "n": [1, 2, 3]})
    assert outcome(good) == ("ok", cbor2.loads(good))
    assert outcome(refused)[0] == "refused"
    assert outcome(good) == ("ok", cbor2.loads(good))
    # A short value after one whose read-ahead ran past its end.
    assert outcome(b"\x01") == ("ok", 1)


def test_trailing_bytes_are_found_after_reuse() -> None:
    first = cbor2.dumps("x" * 100)
    assert outcome(first)[0] == "ok"
    kind, message = outcome(cbor2.dumps(7) + b"\x00\x00")
    assert kind == "refused" and "2 trailing bytes" in message


def test_threads_decode_at_once() -> None:
    errors: list[str] = []

    def work(i: int) -> None:
        for j in range(2000):
            value = {"thread": i, "n": j, "pad": "p" * (i * 7 + j % 13)}
            data = cbor2.dumps(value)
            if j % 97 == 0:
                if outcome(data[:-1])[0] != "refused":
                    errors.append(f"thread {i}: cut value accepted")
            elif outcome(data) != ("ok", value):
                errors.append(f"thread {i}: {j} decoded wrong")
                return

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
