"""The client service's receive loop (trioraft/runtime/service.py)."""

from __future__ import annotations

from collections.abc import Sequence

import trio
import trio.lowlevel

from trioraft.runtime.service import HAND_ON, ClientService, Done, Session
from trioraft.transport.messages import ClientRequest, ClientResponse


class _OneFrame:
    """A client connection that brings one frame, then closes."""

    client_id = "c"
    remote = "test"
    closed = False
    queued_bytes = 0

    def __init__(self, frame: list[ClientRequest]) -> None:
        self._frames = [frame]
        self.sent: list[ClientResponse] = []

    async def receive(self) -> list[ClientRequest]:
        if not self._frames:
            raise trio.EndOfChannel
        return self._frames.pop()

    def send(self, responses: Sequence[ClientResponse]) -> None:
        self.sent.extend(responses)


class _Steps(trio.abc.Instrument):
    """How many times each task has been scheduled: one more after each yield."""

    def __init__(self) -> None:
        self.steps: dict[trio.lowlevel.Task, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task] = self.steps.get(task, 0) + 1


async def test_a_large_frame_is_handed_on_in_slices_with_a_yield_between() -> None:
    """Requests 1..HAND_ON go on in one step of the receive loop, then it yields
    (the node's Raft loop may persist and replicate them), then the next slice;
    every request is answered, in order."""
    n = 2 * HAND_ON + 10
    steps = _Steps()
    seen: list[tuple[int, int]] = []  # (request id, the loop's steps when handed on)

    def write(session: Session, req: ClientRequest, done: Done) -> None:
        seen.append((req.request_id, steps.steps.get(trio.lowlevel.current_task(), 0)))
        done(req.request_id, None)

    service = ClientService(node=None)  # type: ignore[arg-type]
    service.on_write("w", write)
    conn = _OneFrame([ClientRequest(i, "w", None) for i in range(1, n + 1)])
    trio.lowlevel.add_instrument(steps)
    try:
        await service.handle(conn)  # type: ignore[arg-type]
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert [rid for rid, _ in seen] == list(range(1, n + 1))
    first = seen[0][1]
    # Slice k (0-based) is handed on in the loop's step first + k.
    assert [step - first for _, step in seen] == [(rid - 1) // HAND_ON for rid, _ in seen]
    assert [r.request_id for r in conn.sent] == list(range(1, n + 1))
    assert all(r.ok and r.result == r.request_id for r in conn.sent)
