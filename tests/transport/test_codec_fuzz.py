"""Whatever arrives, decode returns wire messages or raises ProtocolError: nothing else."""

from __future__ import annotations

from typing import Any

import cbor2
from hypothesis import given
from hypothesis import strategies as st

from trioraft.core.types import MESSAGE_TYPES
from trioraft.transport import messages as wire
from trioraft.transport.codec import PROTOCOL_VERSION, ProtocolError, decode_frame, encode_frame
from trioraft.transport.messages import AnyMessage

from .strategies import any_message

WIRE_TYPES = tuple(MESSAGE_TYPES) + tuple(
    getattr(wire, n) for n in wire.__all__ if n != "AnyMessage"
)


def _check(data: bytes) -> None:
    try:
        out = decode_frame(data, max_size=4096)
    except ProtocolError:
        return
    assert isinstance(out, list) and out
    assert all(type(m) in WIRE_TYPES for m in out)
    # Anything accepted is canonical enough to survive another round trip.
    assert decode_frame(encode_frame(out)) == out


@given(st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    _check(data)


@given(st.binary(max_size=200))
def test_random_bytes_behind_a_valid_prefix(tail: bytes) -> None:
    # Past the envelope's first bytes, so the fuzz reaches the message decoders.
    _check(b"\xa2av\x01am\x81" + tail)


cbor_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=5)
    | st.binary(max_size=5)
    | st.sampled_from([cbor2.undefined, cbor2.CBORSimpleValue(99)]),
    lambda inner: (
        st.lists(inner, max_size=8)
        | st.dictionaries(st.text(max_size=3) | st.integers(0, 3), inner, max_size=3)
        | st.builds(cbor2.CBORTag, st.sampled_from([0, 1, 2, 28, 29, 258, 55799, 999]), inner)
    ),
    max_leaves=30,
)


@given(cbor_values, st.integers(0, 40))
def test_random_cbor_structures(body: Any, tag: int) -> None:
    _check(cbor2.dumps(body))
    _check(cbor2.dumps({"v": PROTOCOL_VERSION, "m": [body]}))
    if isinstance(body, list):
        _check(cbor2.dumps({"v": PROTOCOL_VERSION, "m": [[tag, *body]]}))


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    data = bytearray(encode_frame(draw(st.lists(any_message, min_size=1, max_size=3))))
    how = draw(st.sampled_from(["flip", "truncate", "splice", "insert", "overwrite"]))
    if how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            bit = draw(st.integers(0, len(data) * 8 - 1))
            data[bit // 8] ^= 1 << (bit % 8)
    elif how == "truncate":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif how == "splice":
        other = encode_frame(draw(st.lists(any_message, min_size=1, max_size=3)))
        data = data[: draw(st.integers(0, len(data)))] + other[draw(st.integers(0, len(other))) :]
    elif how == "insert":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=8))
    else:
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    return bytes(data)


@given(mutated_frames())
def test_mutated_valid_frames(data: bytes) -> None:
    _check(data)


def test_decoded_messages_are_our_dataclasses() -> None:
    msgs: list[AnyMessage] = [wire.HelloAuth(b"m" * 32)]
    assert all(type(m) is wire.HelloAuth for m in decode_frame(encode_frame(msgs)))
