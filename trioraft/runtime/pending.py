"""The calls a node owes an answer: proposals waiting for their entry, reads for their index.

Owns the waiters (one per proposed log index), the pending reads, their
deadlines, the timeout sweeper that fails whatever outlived
``proposal_timeout``, and the figures about proposals (committed, failed by
reason, latency).  It never touches the core: the node's apply task tells it
what was applied (:meth:`Pending.applied`, :meth:`Pending.snapshot_installed`),
the Raft loop what the core decided about reads (:meth:`Pending.read_index`,
:meth:`Pending.read_failed`), and the node's own stop fails everything left
(:meth:`Pending.fail_everything`).

No cancel scope per call (it showed up as a fifth of the leader's time under
load): each waiter carries its deadline and one sweeper task fails the late
ones.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence

import trio

from trioraft.core.types import Entry
from trioraft.runtime.errors import ProposalDroppedError
from trioraft.runtime.metrics import Histogram

__all__ = ["Done", "Pending", "PendingRead", "Waiter"]

#: ``done(result, error)``: how :meth:`Node.propose_nowait` answers.
Done = Callable[[object, BaseException | None], None]


class Waiter:
    """One proposal waiting for its entry to be applied."""

    __slots__ = ("deadline", "done", "error", "event", "result", "started", "term")

    def __init__(self, term: int, deadline: float, done: Done | None = None) -> None:
        self.term = term
        self.deadline = deadline
        self.done = done
        self.event = trio.Event()
        self.result: object = None
        self.error: BaseException | None = None
        self.started = time.perf_counter()

    def resolve(self, result: object) -> None:
        self.result = result
        self.event.set()
        if self.done is not None:
            self.done(result, None)

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.event.set()
        if self.done is not None:
            self.done(None, error)


class PendingRead:
    """One read waiting for its read index, then for that index to be applied."""

    __slots__ = ("deadline", "error", "event", "index")

    def __init__(self, deadline: float) -> None:
        self.index: int | None = None
        self.deadline = deadline
        self.event = trio.Event()
        self.error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.event.set()


class Pending:
    """Waiters and reads of one node, and the figures about them."""

    def __init__(self, proposal_timeout: float) -> None:
        self.timeout = proposal_timeout
        self.waiters: dict[int, Waiter] = {}
        self.reads: dict[int, PendingRead] = {}
        self._read_ids = 0
        self.latencies: deque[float] = deque(maxlen=4096)
        self.proposal_seconds = Histogram()
        self.committed = 0
        self.replaced = 0
        self.timed_out = 0
        self.stopped = 0

    def __len__(self) -> int:
        return len(self.waiters)

    # ------------------------------------------------------------ proposals

    def wait_for(self, index: int, term: int, done: Done | None = None) -> Waiter:
        """A new waiter for the entry at ``index`` proposed in ``term``.

        A proposal still waiting there was replaced: it fails.  A node that
        leads again after a snapshot install (or a truncation) can append at
        an index where one of its old proposals waits; that entry is gone,
        and without this its caller would wait forever.
        """
        old = self.waiters.get(index)
        if old is not None:
            self.replaced += 1
            old.fail(
                ProposalDroppedError(f"entry {index} was replaced: a new proposal took its index")
            )
        w = Waiter(term, trio.current_time() + self.timeout, done)
        self.waiters[index] = w
        return w

    async def result(self, index: int, w: Waiter) -> object:
        """Wait for ``w`` (the waiter at ``index``); its result, or its error raised."""
        try:
            await w.event.wait()
        finally:
            if not w.event.is_set() and self.waiters.get(index) is w:  # the caller was cancelled
                del self.waiters[index]
        if w.error is not None:
            raise w.error
        return w.result

    def applied(self, chunk: Sequence[Entry], results: Sequence[object]) -> None:
        """``chunk`` was applied with ``results``: answer the proposals among them."""
        for e, res in zip(chunk, results, strict=True):
            w = self.waiters.pop(e.index, None)
            if w is None:
                continue
            if w.term == e.term:
                took = time.perf_counter() - w.started
                self.latencies.append(took)
                self.proposal_seconds.observe(took)
                self.committed += 1
                w.resolve(res)
            else:
                self.replaced += 1
                w.fail(ProposalDroppedError(f"entry {e.index} was replaced"))

    def snapshot_installed(self, index: int) -> None:
        """A snapshot at ``index`` replaced the log: proposals up to it have unknown outcomes."""
        for idx in [i for i in self.waiters if i <= index]:
            self.replaced += 1
            self.waiters.pop(idx).fail(
                ProposalDroppedError(
                    "outcome unknown: a snapshot replaced the log; "
                    "retry with the same client session"
                )
            )

    # ---------------------------------------------------------------- reads

    def new_read(self) -> tuple[int, PendingRead]:
        """A new read request id, and the read waiting under it (remove it with ``done_read``)."""
        self._read_ids += 1
        r = PendingRead(trio.current_time() + self.timeout)
        self.reads[self._read_ids] = r
        return self._read_ids, r

    def done_read(self, request_id: int) -> None:
        self.reads.pop(request_id, None)

    def read_index(self, request_id: int, index: int) -> None:
        """The core confirmed read ``request_id`` at ``index``."""
        r = self.reads.get(request_id)
        if r is not None:
            r.index = index

    def read_failed(self, request_id: int, error: BaseException) -> None:
        r = self.reads.get(request_id)
        if r is not None:
            r.fail(error)

    def release_reads(self, applied: int) -> None:
        """Release the reads whose read index is applied."""
        for r in self.reads.values():
            if r.index is not None and r.index <= applied:
                r.event.set()

    # ------------------------------------------------------------- failure

    def fail_everything(self, error: BaseException) -> None:
        """The node stopped: every proposal and read fails with ``error``."""
        self.stopped += len(self.waiters)
        for w in self.waiters.values():
            w.fail(error)
        self.waiters.clear()
        for r in self.reads.values():
            r.fail(error)

    async def sweep_forever(self) -> None:
        """Fail proposals and reads that outlived ``proposal_timeout``."""
        period = max(self.timeout / 10, 0.01)
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            late = [i for i, w in self.waiters.items() if w.deadline <= now]
            self.timed_out += len(late)
            for i in late:
                self.waiters.pop(i).fail(
                    TimeoutError(
                        f"entry {i} not applied within {self.timeout}s; "
                        "it may still be applied later"
                    )
                )
            for r in self.reads.values():
                if r.deadline <= now and not r.event.is_set():
                    r.fail(TimeoutError("read not confirmed in time"))
