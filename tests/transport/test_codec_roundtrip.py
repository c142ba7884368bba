"""Every valid message survives encode -> decode unchanged."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import trioraft.core.types as core_types
from trioraft.transport import messages as wire
from trioraft.transport.codec import PROTOCOL_VERSION, decode_envelope, decode_frame, encode_frame
from trioraft.transport.messages import AnyMessage

from .strategies import BY_TYPE, SAMPLES, any_message


def test_strategies_cover_every_message_type() -> None:
    names = {t.__name__ for t in core_types.MESSAGE_TYPES}
    names |= {n for n in wire.__all__ if n != "AnyMessage"}
    assert names == set(BY_TYPE) == set(SAMPLES)
    assert {type(m).__name__ for m in SAMPLES.values()} == names


def test_samples_round_trip() -> None:
    msgs = list(SAMPLES.values())
    assert decode_frame(encode_frame(msgs)) == msgs


@pytest.mark.parametrize("name", sorted(BY_TYPE))
def test_round_trip_each_type(name: str) -> None:
    @given(BY_TYPE[name])
    def check(msg: AnyMessage) -> None:
        assert decode_frame(encode_frame([msg])) == [msg]

    check()


@given(st.lists(any_message, min_size=1, max_size=6), st.none() | st.text(min_size=1, max_size=12))
def test_round_trip_batched_frames(msgs: list[AnyMessage], cluster: str | None) -> None:
    frame = decode_envelope(encode_frame(msgs, cluster_id=cluster), cluster_id=cluster)
    assert frame.version == PROTOCOL_VERSION
    assert frame.cluster_id == cluster
    assert list(frame.messages) == msgs
