"""A node's apply task: committed entries and installed snapshots into the state machine.

Owns what the Raft loop hands over after each Ready (typed items on one
unbounded channel: :class:`ApplyEntries` in chunks of ``apply_chunk``,
:class:`ApplySnapshot`, :class:`ReleaseReads`) and the task that applies
them away from the loop, in order.  It answers each proposal's waiter with
the state machine's result (or ``ProposalDroppedError`` when a different
entry committed at its index), releases reads whose read index has been
applied, and tells the core what has been applied (``RaftCore.applied_to``),
so the core's applied index is the state machine's, never ahead of it.
A snapshot the core installed is restored from the snapshot store; the
snapshot part (trioraft/runtime/snapshots.py) then serves it.

:class:`NodeApply` is a part of :class:`~trioraft.runtime.node.Node` (a
mixin).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from trioraft.core.raft import RaftCore
from trioraft.core.types import Entry, NodeId, Ready, SnapshotMeta
from trioraft.runtime.config import NodeConfig
from trioraft.runtime.errors import NotLeaderError
from trioraft.runtime.pending import Pending
from trioraft.statemachine import SnapshotInfo, StateMachine

if TYPE_CHECKING:
    from trioraft.storage.snapshots import StoredSnapshot

__all__ = ["ApplyEntries", "ApplyItem", "ApplySnapshot", "NodeApply", "ReleaseReads"]


@dataclass(frozen=True, slots=True)
class ApplyEntries:
    """Apply task item: committed entries to apply, in order."""

    entries: Sequence[Entry]


@dataclass(frozen=True, slots=True)
class ApplySnapshot:
    """Apply task item: restore the state machine from this (durable) snapshot."""

    meta: SnapshotMeta


@dataclass(frozen=True, slots=True)
class ReleaseReads:
    """Apply task item: reads got their read index; release those already applied."""


RELEASE_READS = ReleaseReads()
#: What the apply task's channel carries.
ApplyItem = ApplyEntries | ApplySnapshot | ReleaseReads


class NodeApply:
    """The apply part of a node (see the module docstring)."""

    # The node's, used here (set by Node.__init__ and Node._run).
    id: NodeId
    config: NodeConfig
    state_machine: StateMachine
    log: logging.Logger
    core: RaftCore | None
    _fatal: BaseException | None
    _pending: Pending
    _stats: dict[str, int]
    _bytes_since_snapshot: int
    _last_snapshot_index: int

    if TYPE_CHECKING:

        def _notify(self) -> None: ...
        def _maybe_snapshot(self) -> None: ...
        async def _stored(self, meta: SnapshotMeta) -> StoredSnapshot: ...
        def _adopt(self, stored: StoredSnapshot) -> None: ...
        def _not_leader_error(self, leader: NodeId | None, reason: str = "") -> NotLeaderError: ...

    def _init_apply(self) -> None:
        self._apply_send, self._apply_recv = trio.open_memory_channel[ApplyItem](math.inf)
        #: The state machine's last applied index (the core's ``applied`` follows it).
        self._applied = 0

    def _hand_over(self, rd: Ready) -> int:
        """Hand ``rd``'s snapshot, entries and reads to the apply task; what it has applied."""
        if rd.snapshot is not None:
            self._apply_send.send_nowait(ApplySnapshot(rd.snapshot))
        if rd.committed:
            step = self.config.apply_chunk
            for i in range(0, len(rd.committed), step):
                self._apply_send.send_nowait(ApplyEntries(rd.committed[i : i + step]))
        for rs in rd.reads:
            self._pending.read_index(rs.request_id, rs.index)
        if rd.reads:
            self._apply_send.send_nowait(RELEASE_READS)
        for fr in rd.failed_reads:
            self._pending.read_failed(fr.request_id, self._not_leader_error(fr.leader, fr.reason))
        return self._applied

    async def _apply_loop(self) -> None:
        """The apply task: apply what it is handed, in order, and answer who waits."""
        sm = self.state_machine
        try:
            async for item in self._apply_recv:
                if isinstance(item, ApplyEntries):
                    chunk = item.entries
                    self._pending.applied(chunk, await sm.apply(chunk))
                    self._set_applied(chunk[-1].index)
                    self._stats["entries_applied"] += len(chunk)
                    self._bytes_since_snapshot += sum(len(e.data) for e in chunk)
                elif isinstance(item, ApplySnapshot):
                    meta = item.meta
                    stored = await self._stored(meta)
                    await self._restore(stored)
                    self._set_applied(meta.index)
                    self._last_snapshot_index = max(self._last_snapshot_index, meta.index)
                    self._adopt(stored)
                    self._stats["snapshots_installed"] += 1
                    self._pending.snapshot_installed(meta.index)
                self._pending.release_reads(self._applied)
                self._notify()
                self._maybe_snapshot()
        except BaseException as exc:
            if not isinstance(exc, trio.Cancelled):
                self._fatal = exc
                self.log.critical("node %d stops: apply failed: %r", self.id, exc)
            raise

    async def _restore(self, stored: StoredSnapshot) -> None:
        """Replace the state machine's state with ``stored``'s (installed, or found at recovery)."""
        await self.state_machine.restore_snapshot(
            stored.path,
            SnapshotInfo(
                index=stored.meta.index,
                term=stored.meta.term,
                checksum=stored.checksum,
                size=stored.size,
            ),
        )

    def _set_applied(self, index: int) -> None:
        """The state machine holds ``index``: tell the core too, so both agree."""
        self._applied = index
        assert self.core is not None
        self.core.applied_to(index)
