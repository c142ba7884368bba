"""encode_message + assemble_frame (the batching path) equals encode_frame byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioraft.core.types import Heartbeat
from trioraft.transport.codec import (
    FRAME_OVERHEAD,
    MAX_ID,
    ProtocolError,
    assemble_frame,
    encode_frame,
    encode_message,
)
from trioraft.transport.messages import AnyMessage, ClientRequest

from .strategies import any_message


@given(
    st.lists(any_message, min_size=1, max_size=6),
    st.none() | st.text(min_size=1, max_size=MAX_ID),
)
def test_assembled_frames_equal_encoded_frames(msgs: list[AnyMessage], cluster: str | None) -> None:
    parts = [encode_message(m) for m in msgs]
    frame = assemble_frame(parts, cluster_id=cluster)
    assert frame == encode_frame(msgs, cluster_id=cluster)
    assert len(frame) - sum(map(len, parts)) <= FRAME_OVERHEAD


@pytest.mark.parametrize("count", [1, 23, 24, 255, 256, 65_535, 65_536])
def test_array_length_boundaries(count: int) -> None:
    msgs = [Heartbeat(1, 1, 2, 0)] * count
    part = encode_message(msgs[0])
    assert assemble_frame([part] * count) == encode_frame(msgs)


def test_refusals() -> None:
    with pytest.raises(ProtocolError):
        assemble_frame([])
    with pytest.raises(TypeError):
        encode_message("nope")  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="payload"):
        encode_message(ClientRequest(1, "read", payload=object()))
