"""The Trio runtime: a Raft node made of the pure core, durable storage and a transport.

Theory of operation
===================

One task, the *Raft loop*, owns the core's Ready cycle.  Everything that
happens to the node reaches the core as an event, all in this Trio thread:

* peer messages: the transport calls ``_on_messages`` (never blocking), which
  queues them in a bounded inbox (full: dropped; Raft retries);
* timers: the election timer is a cancel scope whose deadline follows
  ``core.election_deadline`` (pushed back on every valid contact from the
  leader); the heartbeat task fires at ``core.heartbeat_deadline`` while
  leading;
* client calls (``propose``, ``read``, membership changes) call the core
  directly - it is plain synchronous code, safe to step between ``ready()``
  and ``advance()`` - and then wake the loop.

The loop drains the inbox, then runs the contract of ``trioraft.core.raft``:
persist (in a worker thread, one fsync per batch, so many proposals and
acknowledgements share a write) -> send -> hand committed entries to the
apply task -> ``advance``.  Entries are applied away from the loop, in
order, in chunks, by the *apply task*, which resolves each proposal's waiter
with the state machine's result (or with ``ProposalDroppedError`` when a
different entry committed at its index) and releases reads whose read index
has been applied.

Snapshots: after ``snapshot_entries`` applied entries the state machine
writes a snapshot, the snapshot store commits it, the state machine flushes,
and the log is compacted (keeping ``snapshot_keep_entries`` behind it).  A
follower behind the log start gets the snapshot streamed in checksummed
chunks with acknowledgements (resumable); only when the whole file has
arrived and verified does its core see the ``InstallSnapshot``.

A storage error (write or fsync) is fatal: the node stops and ``open_node``
raises; nothing that could not be persisted is ever acknowledged.

Nothing a client sends may stop or freeze the node: requests are checked
against the wire's limits before anything is appended (a command of at
most ``MAX_ENTRY_DATA`` bytes, a session id of at most ``MAX_SESSION_ID``
characters, node ids in 1..2**63-1, ``host:port`` addresses), so no entry
a follower would refuse reaches the log.  A log written by earlier code may
still hold a member address that is not ``host:port``: it is ignored, with
one warning, wherever the node would use it (peer routes, InstallSnapshot,
leader hints).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field

import trio
import trio.lowlevel

from trioraft.core.driver import ReadyDriver
from trioraft.core.errors import NotLeader, ProposalRejected
from trioraft.core.raft import RaftCore
from trioraft.core.types import (
    Entry,
    InstallSnapshot,
    Membership,
    Message,
    NodeId,
    Ready,
    Role,
    SnapshotMeta,
    check_node_id,
    parse_address,
)
from trioraft.runtime.config import NodeConfig
from trioraft.runtime.errors import (
    EntryTooLargeError,
    NodeClosedError,
    NotCaughtUpError,
    NotLeaderError,
    OverloadedError,
    ProposalDroppedError,
    ProposalRejectedError,
    ReadFailedError,
)
from trioraft.runtime.metrics import Histogram, HistogramSnapshot
from trioraft.runtime.service import ClientService, error_code, error_response, generic_service
from trioraft.statemachine import SnapshotError, SnapshotInfo, StateMachine
from trioraft.storage import LogStore
from trioraft.storage.errors import StorageFatalError
from trioraft.storage.fs import FileSystem, OsFileSystem
from trioraft.storage.log import FileLogStore
from trioraft.storage.recovery import reconcile
from trioraft.storage.snapshots import (
    SnapshotReceiver,
    SnapshotStore,
    StaleSnapshotError,
    StoredSnapshot,
)
from trioraft.transport._ws import open_service_nursery
from trioraft.transport.base import (
    ClientConnection,
    Transport,
    TransportStatistics,
)
from trioraft.transport.codec import MAX_ENTRY_DATA, MAX_INT, MAX_SESSION_ID
from trioraft.transport.messages import (
    AnyMessage,
    ClientRequest,
    ClientResponse,
    SnapshotChunk,
    SnapshotChunkAck,
)

__all__ = [
    "Node",
    "NodeStatistics",
    "NodeStatus",
    "PeerProgress",
    "ServiceFactory",
    "TransportFactory",
    "error_code",
    "error_response",
    "open_node",
    "serve_node",
]

CONSISTENCY = ("linearizable", "lease", "local")

#: Builds the node's transport: ``factory(node)`` -> async context manager.
TransportFactory = Callable[["Node"], AbstractAsyncContextManager[Transport]]
#: Builds the node's client service: ``factory(node)`` -> ClientService.
ServiceFactory = Callable[["Node"], ClientService]


@dataclass(frozen=True, slots=True)
class PeerProgress:
    match_index: int
    lag: int
    state: str


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """Where the node stands (``Node.status()``)."""

    node_id: NodeId
    role: str
    term: int
    leader_id: NodeId | None
    leader_address: str | None
    commit_index: int
    applied_index: int
    last_index: int
    snapshot_index: int
    voters: tuple[NodeId, ...]
    learners: tuple[NodeId, ...]
    joint: bool

    def to_dict(self) -> dict[str, object]:
        """Plain values (lists, not tuples) for a CBOR or JSON answer."""
        return {
            "node_id": self.node_id,
            "role": self.role,
            "term": self.term,
            "leader_id": self.leader_id,
            "leader_address": self.leader_address,
            "commit_index": self.commit_index,
            "applied_index": self.applied_index,
            "last_index": self.last_index,
            "snapshot_index": self.snapshot_index,
            "voters": list(self.voters),
            "learners": list(self.learners),
            "joint": self.joint,
        }


@dataclass(frozen=True, slots=True)
class NodeStatistics:
    """Counters and latencies (``Node.statistics()``)."""

    node_id: NodeId
    role: str
    term: int
    commit_index: int
    applied_index: int
    peers: dict[NodeId, PeerProgress] = field(default_factory=dict)
    proposals_pending: int = 0
    proposals_committed: int = 0
    proposal_latency_ms: dict[str, float] = field(default_factory=dict)
    entries_applied: int = 0
    persist_batches: int = 0
    persist_entries: int = 0
    snapshots_taken: int = 0
    snapshots_installed: int = 0
    snapshots_sent: int = 0
    inbox_dropped: int = 0
    transport: TransportStatistics | None = None
    leader_id: NodeId | None = None
    last_index: int = 0
    #: Proposals that failed after their append, by reason: ``replaced``
    #: (another entry took the index), ``timeout``, ``stopped``.
    proposals_failed: dict[str, int] = field(default_factory=dict)
    proposal_seconds: HistogramSnapshot = field(default_factory=lambda: Histogram().snapshot())
    #: Answered reads by consistency.
    read_seconds: dict[str, HistogramSnapshot] = field(default_factory=dict)
    #: One durable log write (append, hard state, fsync).
    persist_seconds: HistogramSnapshot = field(default_factory=lambda: Histogram().snapshot())
    elections_started: int = 0
    elections_won: int = 0
    leader_changes: int = 0
    snapshot_index: int = 0
    snapshot_bytes: int = 0


Done = Callable[[object, BaseException | None], None]


class _Waiter:
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


@dataclass(frozen=True, slots=True)
class _PeerBatch:
    """Raft messages of one transport batch, with the incarnation they came from."""

    src: NodeId
    incarnation: str
    messages: list[Message]


@dataclass(frozen=True, slots=True)
class _Wake:
    """Inbox item: the core has work (a client call or a timer stepped it)."""


_WAKE = _Wake()
#: What the Raft loop's inbox carries.
_InboxItem = _Wake | _PeerBatch | InstallSnapshot


@dataclass(frozen=True, slots=True)
class _ApplyEntries:
    """Apply task item: committed entries to apply, in order."""

    entries: Sequence[Entry]


@dataclass(frozen=True, slots=True)
class _ApplySnapshot:
    """Apply task item: restore the state machine from this (durable) snapshot."""

    meta: SnapshotMeta


@dataclass(frozen=True, slots=True)
class _ReleaseReads:
    """Apply task item: reads got their read index; release those already applied."""


_RELEASE_READS = _ReleaseReads()
#: What the apply task's channel carries.
_ApplyItem = _ApplyEntries | _ApplySnapshot | _ReleaseReads


class _NodeIO:
    """The node as the Ready driver's ``ReadyIO`` (trioraft/core/driver.py)."""

    __slots__ = ("node",)

    def __init__(self, node: Node) -> None:
        self.node = node

    def send(self, message: Message) -> None:
        self.node._send_message(message)

    def apply(self, rd: Ready) -> int:
        return self.node._hand_over(rd)


class _Read:
    __slots__ = ("deadline", "error", "event", "index")

    def __init__(self, deadline: float) -> None:
        self.index: int | None = None
        self.deadline = deadline
        self.event = trio.Event()
        self.error: BaseException | None = None


class Node:
    """A running Raft node.  Get one from :func:`open_node` or :func:`serve_node`."""

    def __init__(
        self,
        config: NodeConfig,
        state_machine: StateMachine,
        transport_factory: TransportFactory | None = None,
        client_service: ServiceFactory | None = None,
        *,
        log_store: LogStore | None = None,
    ) -> None:
        """``log_store``: where the node writes its log and hard state (default: a
        :class:`~trioraft.storage.log.FileLogStore` in ``data_dir/log``, opened at
        start).  The node closes it when it stops.
        """
        self.config = config
        #: Serves client connections (built with the node, so no request
        #: arrives before it exists); the default offers propose/read/status.
        self.client_service: ClientService = (client_service or generic_service)(self)
        if transport_factory is None and not config.cluster_secret:
            raise ValueError("NodeConfig.cluster_secret is required: peers authenticate with it")
        self.state_machine = state_machine
        self.id = config.node_id
        #: This node's data directory incarnation (hex), read from storage at start.
        self.incarnation = ""
        # What each peer presented in its connection's handshake (transport news).
        self._peer_incarnations: dict[NodeId, str] = {}
        self._incarnations_told: set[tuple[NodeId, str]] = set()
        self.log = logging.getLogger(f"trioraft.node.{config.node_id}")
        self._transport_factory = transport_factory or websocket_transport
        self.transport: Transport | None = None
        self.core: RaftCore | None = None
        self._closed = False
        self._fatal: BaseException | None = None
        self._nursery: trio.Nursery | None = None
        inbox_send, self._inbox = trio.open_memory_channel[_InboxItem](config.inbox_size)
        self._inbox_send = inbox_send
        self._kicked = False
        apply_send, self._apply_recv = trio.open_memory_channel[_ApplyItem](math.inf)
        self._apply_send = apply_send
        self._chunks_send, self._chunks_recv = trio.open_memory_channel[SnapshotChunk](256)
        self._waiters: dict[int, _Waiter] = {}
        self._reads: dict[int, _Read] = {}
        self._read_ids = 0
        self._applied = 0
        self._storage_lock = trio.Lock()
        self._snapshot_lock = trio.Lock()
        self._snapshot_running = False
        self._last_snapshot_index = 0
        self._bytes_since_snapshot = 0
        self._current_snapshot: StoredSnapshot | None = None
        self._snap_senders: dict[NodeId, trio.MemorySendChannel[SnapshotChunkAck]] = {}
        self._snap_rx_meta: dict[NodeId, InstallSnapshot] = {}
        self._snap_rx: dict[NodeId, tuple[SnapshotReceiver, int]] = {}
        self._election_scope: trio.CancelScope | None = None
        self._heartbeat_scope: trio.CancelScope | None = None
        self._observed: tuple[Role, int, NodeId | None] | None = None
        self._membership_seen: Membership | None = None
        self._reachable: tuple[Membership, Membership] | None = None
        self._bad_addresses_seen: set[tuple[NodeId, str]] = set()
        self._latencies: deque[float] = deque(maxlen=4096)
        self._stats: dict[str, int] = {
            "proposals_committed": 0,
            "entries_applied": 0,
            "persist_batches": 0,
            "persist_entries": 0,
            "snapshots_taken": 0,
            "snapshots_installed": 0,
            "snapshots_sent": 0,
            "inbox_dropped": 0,
            "proposals_replaced": 0,
            "proposals_timed_out": 0,
            "proposals_stopped": 0,
            "elections_started": 0,
            "elections_won": 0,
            "leader_changes": 0,
        }
        # Latency histograms for Node.statistics() (trioraft/runtime/metrics.py).
        self._proposal_seconds = Histogram()
        self._read_seconds = {c: Histogram() for c in CONSISTENCY}
        self._persist_seconds = Histogram()
        self._known_leader: NodeId | None = None
        self._logstore: LogStore | None = log_store
        self._snaps: SnapshotStore | None = None
        self._stopped = trio.Event()
        self._running = False  # _run has begun (so _stopped will be set)
        # The node's environment, replaced before ``_run`` by the whole-node
        # simulator (trioraft/testing/simnode.py): the file system storage
        # and ``snapshot`` go through, the core's random source, the wall
        # clock entries are stamped with and the source of random bytes
        # (the data directory's incarnation, temp file names).
        self.fs: FileSystem = OsFileSystem()
        self.random = random.Random()
        self.wall_clock: Callable[[], float] = time.time
        self.randbytes: Callable[[int], bytes] = os.urandom
        self._changed_event = trio.Event()
        self._driver: ReadyDriver | None = None

    @property
    def _changed(self) -> trio.Event:
        """An event set at the next change of role, leader, commit or applied index."""
        return self._changed_event

    def _notify(self) -> None:
        self._changed_event.set()
        self._changed_event = trio.Event()

    # ================================================================ start

    async def _run(self, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        self._running = True
        try:
            await self._run_storage(task_status)
        finally:
            self._closed = True
            self._stopped.set()

    async def _run_storage(self, task_status: trio.TaskStatus[Node]) -> None:
        cfg = self.config
        self.fs.makedirs(cfg.data_dir)
        if self._logstore is None:
            self._logstore = await trio.to_thread.run_sync(
                functools.partial(FileLogStore.open, fs=self.fs, randbytes=self.randbytes),
                os.path.join(cfg.data_dir, "log"),
            )
        log = self._logstore
        try:
            self.incarnation = log.incarnation()
            self._snaps = await trio.to_thread.run_sync(
                functools.partial(SnapshotStore, fs=self.fs, randbytes=self.randbytes),
                os.path.join(cfg.data_dir, "snapshots"),
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(log.close)
            raise
        try:
            await self.state_machine.start()
            self.core = await self._recover()
            self._driver = ReadyDriver(self.core, _NodeIO(self))
            async with self._transport_factory(self) as transport, trio.open_nursery() as nursery:
                self.transport = transport
                self._nursery = nursery
                self._update_peers()
                nursery.start_soon(self._raft_loop)
                nursery.start_soon(self._apply_loop)
                nursery.start_soon(self._election_timer)
                nursery.start_soon(self._heartbeat_timer)
                nursery.start_soon(self._snapshot_receiver)
                nursery.start_soon(self._timeout_sweeper)
                self.log.info(
                    "node %d started: incarnation %s, term %d, log %d..%d, applied %d",
                    self.id,
                    self.incarnation,
                    self.core.term,
                    self.core.offset,
                    self.core.last_index(),
                    self._applied,
                )
                task_status.started(self)
                self._kick()
        finally:
            self._closed = True
            self._fail_everything(self._fatal or NodeClosedError("node closed"))
            with trio.CancelScope(shield=True):
                try:
                    await self.state_machine.close()
                finally:
                    await trio.to_thread.run_sync(log.close)

    async def _recover(self) -> RaftCore:
        """Rebuild the core from disk; bring the state machine up to the log's start.

        First the log is made to agree with the newest readable snapshot, durably
        (``trioraft.storage.recovery.reconcile``): a snapshot committed above the
        log's boundary gets Raft's discard rule applied to the log.
        """
        assert self._logstore is not None and self._snaps is not None
        log = self._logstore
        stored = await trio.to_thread.run_sync(reconcile, log, self._snaps)
        self._current_snapshot = stored
        applied = self.state_machine.last_applied()
        boundary, _ = log.boundary()
        snap_meta = stored.meta if stored else None
        if stored is not None and snap_meta is not None and applied.index < snap_meta.index:
            self.log.info("restoring the state machine from snapshot %d", snap_meta.index)
            await self.state_machine.restore_snapshot(
                stored.path,
                SnapshotInfo(snap_meta.index, snap_meta.term, stored.checksum, stored.size),
            )
            applied = self.state_machine.last_applied()
        if applied.index < boundary:
            raise RuntimeError(
                f"node {self.id}: the log starts after {boundary} but the state machine is at "
                f"{applied.index} and no readable snapshot covers the gap"
            )
        if snap_meta is not None:
            self._last_snapshot_index = snap_meta.index
        first = max(log.first_index(), (snap_meta.index + 1) if snap_meta else 1)
        entries = await trio.to_thread.run_sync(log.entries, first, log.last_index() + 1)
        core = RaftCore(
            self.config.raft_config(),
            self.random,
            membership=self.config.bootstrap_membership(),
            now=trio.current_time(),
            hard_state=log.hard_state(),
            entries=entries,
            snapshot=snap_meta,
            applied=applied.index,
            incarnation=self.incarnation,
        )
        self._applied = applied.index
        return core

    # ========================================================= raft loop

    def _kick(self) -> None:
        if not self._kicked:
            self._kicked = True
            with suppress(trio.WouldBlock):  # a full inbox wakes the loop anyway
                self._inbox_send.send_nowait(_WAKE)

    def _on_peer(self, src: NodeId, incarnation: bytes) -> None:
        """Transport callback: the batches from ``src`` that follow come from ``incarnation``."""
        self._peer_incarnations[src] = incarnation.hex()

    def _on_messages(self, src: NodeId, messages: list[AnyMessage]) -> None:
        """Transport callback: never blocks."""
        raft: list[Message] = []
        for m in messages:
            if isinstance(m, SnapshotChunk):
                try:
                    self._chunks_send.send_nowait(m)
                except trio.WouldBlock:
                    self._stats["inbox_dropped"] += 1
            elif isinstance(m, SnapshotChunkAck):
                ch = self._snap_senders.get(m.src)
                if ch is not None:
                    with suppress(trio.WouldBlock):
                        ch.send_nowait(m)
            elif isinstance(m, InstallSnapshot):
                # Held back until its bytes have arrived and verified.
                self._snap_rx_meta[m.src] = m
            elif isinstance(m, ClientRequest | ClientResponse):
                continue  # not on a peer connection
            else:
                raft.append(m)  # type: ignore[arg-type]
        if raft:
            try:
                batch = _PeerBatch(src, self._peer_incarnations.get(src, ""), raft)
                self._inbox_send.send_nowait(batch)
            except trio.WouldBlock:
                self._stats["inbox_dropped"] += len(raft)

    async def _raft_loop(self) -> None:
        core = self.core
        assert core is not None
        try:
            while True:
                item = await self._inbox.receive()
                self._kicked = False
                now = trio.current_time()
                self._step(core, item, now)
                for _ in range(4096):
                    try:
                        item = self._inbox.receive_nowait()
                    except trio.WouldBlock:
                        break
                    self._step(core, item, now)
                await self._drain_ready(core)
        except BaseException as exc:
            if not isinstance(exc, trio.Cancelled):
                self._fatal = exc
                self.log.critical("node %d stops: %r", self.id, exc)
            raise

    def _step(self, core: RaftCore, item: _InboxItem, now: float) -> None:
        if isinstance(item, _Wake):
            return
        if isinstance(item, InstallSnapshot):
            core.step(item, now)
            return
        if item.incarnation:
            core.peer_incarnation(item.src, item.incarnation)
            self._tell_incarnation(core, item.src)
        for m in item.messages:
            core.step(m, now)

    def _tell_incarnation(self, core: RaftCore, node: NodeId) -> None:
        """One warning per node and incarnation the cluster does not know it by."""
        conflict = core.incarnation_conflict(node)
        if conflict is None or (node, conflict[1]) in self._incarnations_told:
            return
        self._incarnations_told.add((node, conflict[1]))
        old, new = conflict
        if node == self.id:
            self.log.warning(
                "node %(n)d: this data directory is incarnation %(new)s but the cluster knows"
                " node %(n)d as incarnation %(old)s (its data was lost or replaced): it will"
                " not vote or campaign; an operator must remove node %(n)d and add it back as"
                " a new member (docstore remove-node %(n)d, then docstore add-node %(n)d %(a)s)",
                {"n": node, "new": new, "old": old, "a": self.config.address},
            )
        else:
            self.log.warning(
                "node %(me)d: node %(n)d presents incarnation %(new)s but the cluster knows it"
                " as incarnation %(old)s (its data directory was lost or replaced): its votes"
                " and acknowledgements are not counted until an operator removes it and adds"
                " it back as a new member (docstore remove-node %(n)d, then docstore add-node"
                " %(n)d ADDRESS)",
                {"me": self.id, "n": node, "new": new, "old": old},
            )

    async def _drain_ready(self, core: RaftCore) -> None:
        """Run the core's Ready cycle (trioraft/core/driver.py) until it has no work."""
        driver = self._driver
        assert driver is not None
        while (rd := driver.start()) is not None:  # its early messages have left
            if rd.needs_persist:
                # A small write costs less than the hop to a worker thread
                # (measured: 170 us inline vs 385 us threaded).
                inline = rd.snapshot is None and _ready_bytes(rd) <= self.config.inline_write_bytes
                if inline and rd.early_messages:
                    # Let the senders put the appends on the wire before the
                    # inline fsync blocks this thread.
                    await trio.lowlevel.checkpoint()
                async with self._storage_lock:
                    if inline:
                        self._persist(rd)
                    else:
                        await trio.to_thread.run_sync(self._persist, rd)
            driver.finish(rd)  # the other messages, the hand-over to the apply task, advance
            self._observe(core)
            self._notify()
        self._rearm_timers(core)

    # What the Ready driver calls (through _NodeIO): how this node sends and applies.

    def _send_message(self, message: Message) -> None:
        """Send one Raft message; an ``InstallSnapshot`` starts a snapshot stream."""
        assert self.transport is not None
        if isinstance(message, InstallSnapshot):
            self._start_snapshot_send(message)
        else:
            self.transport.send(message.dst, message)

    def _hand_over(self, rd: Ready) -> int:
        """Hand ``rd``'s snapshot, entries and reads to the apply task; what it has applied."""
        if rd.snapshot is not None:
            self._apply_send.send_nowait(_ApplySnapshot(rd.snapshot))
        if rd.committed:
            step = self.config.apply_chunk
            for i in range(0, len(rd.committed), step):
                self._apply_send.send_nowait(_ApplyEntries(rd.committed[i : i + step]))
        for rs in rd.reads:
            r = self._reads.get(rs.request_id)
            if r is not None:
                r.index = rs.index
        if rd.reads:
            self._apply_send.send_nowait(_RELEASE_READS)
        for fr in rd.failed_reads:
            r = self._reads.get(fr.request_id)
            if r is not None:
                r.error = self._not_leader_error(fr.leader, fr.reason)
                r.event.set()
        return self._applied

    def _persist(self, rd: Ready) -> None:
        """Runs in a worker thread (or inline when small): one ``LogStore.persist`` call."""
        started = time.perf_counter()
        log = self._logstore
        assert log is not None
        log.persist(rd.hard_state, rd.entries, rd.snapshot)
        if rd.entries:
            self._stats["persist_batches"] += 1
            self._stats["persist_entries"] += len(rd.entries)
        self._persist_seconds.observe(time.perf_counter() - started)

    def _observe(self, core: RaftCore) -> None:
        if core.membership is not self._membership_seen:
            self._membership_seen = core.membership
            self._update_peers()  # followers learn new members' addresses from the log
            for n in [self.id, *self._peer_incarnations]:
                self._tell_incarnation(core, n)
        now = (core.role, core.term, core.leader)
        if now == self._observed:
            return
        prev = self._observed
        self._observed = now
        if core.role is Role.CANDIDATE:  # a new candidate term: one more election
            self._stats["elections_started"] += 1
        elif core.role is Role.LEADER and (prev is None or prev[0] is not Role.LEADER):
            self._stats["elections_won"] += 1
        if core.leader is not None and core.leader != self._known_leader:
            self._known_leader = core.leader
            self._stats["leader_changes"] += 1
        if prev is None or prev[0] is not core.role or prev[1] != core.term:
            self.log.info(
                "node %d is %s in term %d (leader %s)",
                self.id,
                core.role.value,
                core.term,
                core.leader,
            )
        if prev is not None and (prev[0] is Role.LEADER) != (core.role is Role.LEADER):
            self._update_peers()
        elif prev is not None and prev[2] != core.leader:
            self.log.info("node %d follows leader %s in term %d", self.id, core.leader, core.term)

    def _rearm_timers(self, core: RaftCore) -> None:
        if self._election_scope is not None:
            self._election_scope.deadline = core.election_deadline
        if self._heartbeat_scope is not None:
            self._heartbeat_scope.deadline = core.heartbeat_deadline

    async def _election_timer(self) -> None:
        core = self.core
        assert core is not None
        while True:
            with trio.CancelScope(deadline=core.election_deadline) as scope:
                self._election_scope = scope
                await trio.sleep_forever()
            self._election_scope = None
            now = trio.current_time()
            if now >= core.election_deadline:
                core.election_timer_fired(now)
                self._kick()
            await trio.lowlevel.checkpoint()

    async def _heartbeat_timer(self) -> None:
        core = self.core
        assert core is not None
        while True:
            with trio.CancelScope(deadline=core.heartbeat_deadline) as scope:
                self._heartbeat_scope = scope
                await trio.sleep_forever()
            self._heartbeat_scope = None
            now = trio.current_time()
            if now >= core.heartbeat_deadline:
                core.heartbeat_due(now)
                self._kick()
            await trio.lowlevel.checkpoint()

    # ============================================================= apply

    async def _apply_loop(self) -> None:
        sm = self.state_machine
        try:
            async for item in self._apply_recv:
                if isinstance(item, _ApplyEntries):
                    chunk = item.entries
                    results = await sm.apply(chunk)
                    for e, res in zip(chunk, results, strict=True):
                        w = self._waiters.pop(e.index, None)
                        if w is None:
                            continue
                        if w.term == e.term:
                            took = time.perf_counter() - w.started
                            self._latencies.append(took)
                            self._proposal_seconds.observe(took)
                            self._stats["proposals_committed"] += 1
                            w.resolve(res)
                        else:
                            self._stats["proposals_replaced"] += 1
                            w.fail(ProposalDroppedError(f"entry {e.index} was replaced"))
                    self._set_applied(chunk[-1].index)
                    self._stats["entries_applied"] += len(chunk)
                    self._bytes_since_snapshot += sum(len(e.data) for e in chunk)
                elif isinstance(item, _ApplySnapshot):
                    meta = item.meta
                    stored = await self._stored(meta)
                    await sm.restore_snapshot(
                        stored.path,
                        SnapshotInfo(meta.index, meta.term, stored.checksum, stored.size),
                    )
                    self._set_applied(meta.index)
                    self._last_snapshot_index = max(self._last_snapshot_index, meta.index)
                    self._adopt(stored)
                    self._stats["snapshots_installed"] += 1
                    for idx in [i for i in self._waiters if i <= meta.index]:
                        self._stats["proposals_replaced"] += 1
                        self._waiters.pop(idx).fail(
                            ProposalDroppedError(
                                "outcome unknown: a snapshot replaced the log; "
                                "retry with the same client session"
                            )
                        )
                self._release_reads()
                self._notify()
                self._maybe_snapshot()
        except BaseException as exc:
            if not isinstance(exc, trio.Cancelled):
                self._fatal = exc
                self.log.critical("node %d stops: apply failed: %r", self.id, exc)
            raise

    def _set_applied(self, index: int) -> None:
        """The state machine holds ``index``: tell the core too, so both agree."""
        self._applied = index
        assert self.core is not None
        self.core.applied_to(index)

    def _release_reads(self) -> None:
        for r in self._reads.values():
            if r.index is not None and r.index <= self._applied:
                r.event.set()

    # ============================================================ client

    def _check_open(self) -> RaftCore:
        if self._closed or self.core is None:
            raise NodeClosedError("node is closed") from self._fatal
        return self.core

    def _address_of(self, node: NodeId | None) -> str | None:
        if node is None:
            return None
        if node == self.id:
            return self.config.address
        core = self.core
        if core is not None:
            addr = self._reachable_membership(core.membership).address_of(node)
            if addr is not None:
                return addr
        return self.config.peers.get(node)

    def _not_leader_error(self, leader: NodeId | None, reason: str = "") -> NotLeaderError:
        return NotLeaderError(leader, self._address_of(leader))

    async def propose(
        self,
        command: bytes,
        *,
        client_id: str = "",
        sequence: int = 0,
    ) -> object:
        """Replicate ``command`` and return the state machine's result for it.

        Raises:
            NotLeaderError: this node is not the leader (carries the leader's id and address).
            OverloadedError: too many proposals are pending.
            ProposalRejectedError: a leadership transfer is in progress.
            ProposalDroppedError: a new leader replaced the entry; retry with the same session.
            TimeoutError: not applied within ``proposal_timeout`` (wrap the call in
                ``trio.fail_after`` for a shorter one); it may still be applied later.
            NodeClosedError: the node stopped.
        """
        core = self._check_open()
        index = self._append_proposal(core, command, client_id, sequence)
        return await self._wait_index(index, core.term)

    def propose_nowait(
        self, command: bytes, done: Done, *, client_id: str = "", sequence: int = 0
    ) -> None:
        """Like :meth:`propose`, but calls ``done(result, error)`` instead of waiting.

        For services that answer many requests: no task per proposal.  The
        errors :meth:`propose` raises before appending are raised here;
        later ones (dropped, timeout, closed) reach ``done`` as ``error``.
        ``done`` runs in the node's apply task and must not block.
        """
        core = self._check_open()
        index = self._append_proposal(core, command, client_id, sequence)
        self._add_waiter(
            index, _Waiter(core.term, trio.current_time() + self.config.proposal_timeout, done)
        )
        self._kick()

    def _append_proposal(
        self, core: RaftCore, command: bytes, client_id: str, sequence: int
    ) -> int:
        # Followers refuse an entry beyond the wire's limits: refuse it here,
        # before it is in the log, or replication would stop for good.
        if not isinstance(command, bytes | bytearray | memoryview):
            raise TypeError("a command is bytes")
        data = bytes(command)
        if len(data) > MAX_ENTRY_DATA:
            raise EntryTooLargeError(
                f"a command of {len(data)} bytes is over the entry limit of {MAX_ENTRY_DATA}"
            )
        if not isinstance(client_id, str):
            raise TypeError("client_id is a str")
        if len(client_id) > MAX_SESSION_ID:
            raise ValueError(f"client_id of {len(client_id)} characters; at most {MAX_SESSION_ID}")
        if not isinstance(sequence, int) or isinstance(sequence, bool):
            raise TypeError("sequence is an int")
        if not 0 <= sequence <= MAX_INT:
            raise ValueError(f"sequence must be in 0..{MAX_INT}, got {sequence}")
        if len(self._waiters) >= self.config.max_pending_proposals:
            raise OverloadedError(f"{len(self._waiters)} proposals pending")
        try:
            return core.propose(
                data,
                client_id=client_id,
                sequence=sequence,
                timestamp_ms=int(self.wall_clock() * 1000),
            )
        except NotLeader as exc:
            raise self._not_leader_error(exc.leader) from None
        except ProposalRejected as exc:
            raise ProposalRejectedError(str(exc)) from None

    async def _wait_index(self, index: int, term: int) -> object:
        # No cancel scope per call (it showed up as a fifth of the leader's
        # time under load): the timeout sweeper fails waiters past deadline.
        w = _Waiter(term, trio.current_time() + self.config.proposal_timeout)
        self._add_waiter(index, w)
        self._kick()
        try:
            await w.event.wait()
        finally:
            if not w.event.is_set() and self._waiters.get(index) is w:  # the caller was cancelled
                del self._waiters[index]
        if w.error is not None:
            raise w.error
        return w.result

    def _add_waiter(self, index: int, w: _Waiter) -> None:
        """Wait for ``index``; a proposal still waiting there was replaced: fail it.

        A node that leads again after a snapshot install (or a truncation) can
        append at an index where one of its old proposals waits; that entry
        is gone, and without this its caller would wait forever.
        """
        old = self._waiters.get(index)
        if old is not None:
            self._stats["proposals_replaced"] += 1
            old.fail(
                ProposalDroppedError(f"entry {index} was replaced: a new proposal took its index")
            )
        self._waiters[index] = w

    async def _timeout_sweeper(self) -> None:
        """Fail proposals and reads that outlived ``proposal_timeout``."""
        period = max(self.config.proposal_timeout / 10, 0.01)
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            late = [i for i, w in self._waiters.items() if w.deadline <= now]
            self._stats["proposals_timed_out"] += len(late)
            for i in late:
                self._waiters.pop(i).fail(
                    TimeoutError(
                        f"entry {i} not applied within {self.config.proposal_timeout}s; "
                        "it may still be applied later"
                    )
                )
            for r in self._reads.values():
                if r.deadline <= now and not r.event.is_set():
                    r.error = TimeoutError("read not confirmed in time")
                    r.event.set()

    async def read(
        self,
        query: object,
        *,
        consistency: str = "linearizable",
    ) -> object:
        """Answer ``query`` from the state machine.

        ``"linearizable"`` (ReadIndex: confirmed by a quorum, sees every
        write acknowledged before it started), ``"lease"`` (the leader's
        lease, no round trip; relies on bounded clock drift) or ``"local"``
        (this node's state as it is, possibly stale; any node).
        """
        core = self._check_open()
        if consistency not in CONSISTENCY:
            raise ValueError(f"consistency must be one of {CONSISTENCY}")
        started = time.perf_counter()
        if consistency == "local":
            await trio.lowlevel.checkpoint()  # a loop of local reads must not starve the node
        else:
            self._read_ids += 1
            rid = self._read_ids
            now = trio.current_time()
            r = _Read(now + self.config.proposal_timeout)
            self._reads[rid] = r
            try:
                core.read(rid, now, lease=consistency == "lease")
                self._kick()
                await r.event.wait()
            finally:
                self._reads.pop(rid, None)
            if r.error is not None:
                if isinstance(r.error, NotLeaderError) and core.role is Role.LEADER:
                    raise ReadFailedError(str(r.error))
                raise r.error
        result = await self.state_machine.query(query)
        self._read_seconds[consistency].observe(time.perf_counter() - started)
        return result

    # ======================================================== membership

    async def _change(
        self,
        voters: set[NodeId],
        learners: set[NodeId],
        addresses: dict[NodeId, str],
    ) -> None:
        core = self._check_open()
        # proposal_timeout bounds the change as a whole: waiting for one in
        # progress, the entry's apply and, for a voter change, leaving the
        # joint configuration.
        deadline = trio.current_time() + self.config.proposal_timeout
        # A change in progress (the leader may be recording an incarnation on
        # its own) is waited for rather than refused.
        with trio.move_on_at(deadline):
            while core.role is Role.LEADER and (
                core.membership.joint or core.commit < core.config_index
            ):
                await self._changed.wait()
        try:
            index = core.change_membership(voters, learners, addresses)
        except NotLeader as exc:
            raise self._not_leader_error(exc.leader) from None
        except ProposalRejected as exc:
            raise ProposalRejectedError(str(exc)) from None
        with trio.move_on_at(deadline) as scope:
            await self._wait_index(index, core.term)
            while core.membership.joint or core.commit < core.config_index:
                if core.role is not Role.LEADER:
                    raise self._not_leader_error(core.leader)
                await self._changed.wait()
        if scope.cancelled_caught:
            raise TimeoutError(
                f"membership change at entry {index} not done within "
                f"{self.config.proposal_timeout}s; it may still complete"
            )
        self._update_peers()

    async def add_learner(self, node_id: NodeId, address: str) -> None:
        """Add ``node_id`` (listening at ``address``) as a learner: it gets the log, never votes.

        Raises ValueError for a node id outside 1..2**63-1 or an address that
        is not ``host:port``, before anything is proposed.
        """
        check_node_id(node_id)
        parse_address(address)
        core = self._check_open()
        m = core.membership
        if m.is_voter(node_id):
            raise ValueError(f"node {node_id} is already a voter")
        await self._change(set(m.voters), set(m.learners) | {node_id}, {node_id: address})

    async def promote(self, node_id: NodeId) -> None:
        """Make learner ``node_id`` a voter, once it has caught up with the log."""
        check_node_id(node_id)
        core = self._check_open()
        m = core.membership
        if node_id not in m.learners:
            raise ValueError(f"node {node_id} is not a learner")
        conflict = core.incarnation_conflict(node_id)
        if conflict is not None:
            raise ValueError(
                f"node {node_id} presents incarnation {conflict[1]}, not the {conflict[0]}"
                " it was added with: remove it and add it again"
            )
        pr = core.progress.get(node_id)
        lag = core.last_index() - (pr.match if pr else 0)
        if lag > self.config.promote_max_lag:
            raise NotCaughtUpError(f"node {node_id} lags {lag} entries")
        await self._change(set(m.voters) | {node_id}, set(m.learners) - {node_id}, {})

    async def remove_node(self, node_id: NodeId) -> None:
        """Remove a voter or learner (the leader may remove itself: it then steps down)."""
        check_node_id(node_id)
        core = self._check_open()
        m = core.membership
        if node_id not in m.members:
            raise ValueError(f"node {node_id} is not a member")
        voters = set(m.voters) - {node_id}
        if not voters:
            raise ValueError("cannot remove the last voter")
        await self._change(voters, set(m.learners) - {node_id}, {})

    async def transfer_leadership(self, target: NodeId | None = None) -> NodeId:
        """Hand leadership to ``target`` (default: the most caught-up voter); returns it."""
        if target is not None:
            check_node_id(target)
        core = self._check_open()
        if core.role is not Role.LEADER:
            raise self._not_leader_error(core.leader)
        if target is None:
            refused = core.refused_peers()
            candidates = [
                (p.match, n)
                for n, p in core.progress.items()
                if core.membership.is_voter(n) and n not in refused
            ]
            if not candidates:
                raise ValueError("no other voter to transfer to")
            target = max(candidates)[1]
        core.transfer_leadership(target)
        self._kick()
        limit = self.config.election_timeout_max * 2
        with trio.move_on_after(limit):
            while core.leader != target or core.role is Role.LEADER:
                await self._changed.wait()
            return target
        raise TimeoutError(f"leadership did not move to {target} within {limit}s")

    # ========================================================= snapshots

    def _maybe_snapshot(self) -> None:
        due = (
            self._applied - self._last_snapshot_index >= self.config.snapshot_entries
            or self._bytes_since_snapshot >= self.config.snapshot_bytes
        )
        if due and not self._snapshot_running and self._nursery is not None:
            self._snapshot_running = True
            self._nursery.start_soon(self._take_snapshot_task)

    async def _take_snapshot_task(self) -> None:
        try:
            await self.snapshot()
        finally:
            self._snapshot_running = False

    async def snapshot(self) -> SnapshotMeta:
        """Snapshot the state machine now and compact the log behind it.

        Returns the newest snapshot's metadata: this one's, or that of a
        newer snapshot received from the leader while this one was written
        (an older snapshot is never committed over a newer one).  The log
        store keeps the entries after the oldest snapshot kept
        (``SnapshotStore.fallback_index``), so a damaged newest snapshot can
        fall back to the older one at a restart.

        A storage error stops the node, whoever called (and is raised here).
        """
        try:
            return await self._snapshot()
        except (OSError, StorageFatalError) as exc:
            self._stop_fatally(exc)
            raise

    def _stop_fatally(self, exc: BaseException) -> None:
        """Storage failed in a caller's task (not the node's own): stop the node with it."""
        if self._fatal is None:
            self._fatal = exc
            self.log.critical("node %d stops: %r", self.id, exc)
        if self._nursery is not None and not self._closed:
            self._nursery.start_soon(_fail, StorageFatalError(f"storage failed: {exc!r}"))

    async def _snapshot(self) -> SnapshotMeta:
        core = self._check_open()
        assert self._snaps is not None and self._logstore is not None
        snaps, logstore = self._snaps, self._logstore
        async with self._snapshot_lock:
            path = snaps.new_path()
            info = await self.state_machine.write_snapshot(path)
            newest = await trio.to_thread.run_sync(snaps.latest_stored)
            known = max(
                self._last_snapshot_index,
                core.snapshot.index if core.snapshot is not None else 0,
                newest.meta.index if newest is not None else 0,
            )
            newer = newest.meta if newest is not None else core.snapshot
            if info.index <= known and newer is not None:
                await trio.to_thread.run_sync(self.fs.unlink, path)
                return self._skip_snapshot(known, newer)
            meta = SnapshotMeta(info.index, info.term, core.membership_at(info.index))
            try:
                stored = await trio.to_thread.run_sync(
                    snaps.commit, path, meta, info.checksum, info.size
                )
            except StaleSnapshotError:  # a received snapshot won the race (path is gone)
                newest = await trio.to_thread.run_sync(snaps.latest_stored)
                assert newest is not None
                return self._skip_snapshot(newest.meta.index, newest.meta)
            await self.state_machine.flush()  # its own state must not lag the log start
            self._adopt(stored)
            self._last_snapshot_index = info.index
            self._bytes_since_snapshot = 0
            core.compact(info.index, self.config.snapshot_keep_entries)
            floor = await trio.to_thread.run_sync(snaps.fallback_index)
            start = min(core.offset, floor)
            async with self._storage_lock:
                if start > logstore.boundary()[0]:
                    term = logstore.term(start)  # committed: the log's term is the one
                    await trio.to_thread.run_sync(logstore.compact, start, term)
            self._stats["snapshots_taken"] += 1
            self.log.info("node %d took snapshot %d, log starts at %d", self.id, info.index, start)
            return meta

    def _skip_snapshot(self, known: int, newer: SnapshotMeta) -> SnapshotMeta:
        """The snapshot just written is not newer than one stored: drop it."""
        self._last_snapshot_index = max(self._last_snapshot_index, known)
        self._bytes_since_snapshot = 0
        return newer

    def _adopt(self, stored: StoredSnapshot) -> None:
        """``stored`` is the core's snapshot now (what a leader streams); never go back."""
        cur = self._current_snapshot
        if cur is None or stored.meta.index > cur.meta.index:
            self._current_snapshot = stored

    async def _stored(self, meta: SnapshotMeta) -> StoredSnapshot:
        """The stored snapshot the core installed (the receiver committed it first)."""
        assert self._snaps is not None
        cur = self._current_snapshot
        if cur is not None and (cur.meta.index, cur.meta.term) == (meta.index, meta.term):
            return cur
        stored = await trio.to_thread.run_sync(self._snaps.find, meta)
        if stored is None:
            raise RuntimeError(f"snapshot {meta.index} (term {meta.term}) to install is not stored")
        return stored

    def _start_snapshot_send(self, msg: InstallSnapshot) -> None:
        if msg.dst in self._snap_senders or self._nursery is None:
            return
        members = self._reachable_membership(msg.meta.membership)
        if members is not msg.meta.membership:  # the codec carries host:port only
            msg = dataclasses.replace(msg, meta=dataclasses.replace(msg.meta, membership=members))
        send, recv = trio.open_memory_channel[SnapshotChunkAck](64)
        self._snap_senders[msg.dst] = send
        self._nursery.start_soon(self._send_snapshot, msg, recv)

    async def _send_snapshot(
        self, msg: InstallSnapshot, acks: trio.MemoryReceiveChannel[SnapshotChunkAck]
    ) -> None:
        """Stream the snapshot file to one follower, resuming where its acks say."""
        core = self.core
        assert core is not None and self.transport is not None
        peer, ok = msg.dst, False
        stored = self._current_snapshot
        try:
            if stored is None or stored.meta.index != msg.meta.index:
                return
            digest = bytes.fromhex(stored.checksum)
            size, chunk = stored.size, self.config.snapshot_chunk_bytes
            acked, failures = 0, 0
            try:
                f = await trio.to_thread.run_sync(self.fs.open, stored.path)
            except FileNotFoundError:
                # Pruned: a newer snapshot was committed and not adopted yet (the
                # node's own snapshot task between commit and adopt).  Lost like a
                # failed stream; the core asks again with the newer one.
                return
            try:
                while acked < size or size == 0:
                    if core.term != msg.term or core.role is not Role.LEADER:
                        # A stream of an earlier term never ends by itself: the
                        # follower refuses its chunks and acks offset 0.
                        return
                    self.transport.send(peer, msg)
                    offset = acked
                    for _ in range(4):  # a small window of chunks in flight
                        if offset >= size and size > 0:
                            break
                        data = await trio.to_thread.run_sync(f.pread, chunk, offset)
                        done = offset + len(data) >= size
                        self.transport.send(
                            peer,
                            SnapshotChunk(
                                msg.term,
                                self.id,
                                peer,
                                msg.meta.index,
                                msg.meta.term,
                                offset,
                                data,
                                size,
                                digest,
                                done,
                            ),
                        )
                        offset += len(data)
                        if done:
                            break
                    with trio.move_on_after(self.config.election_timeout_max) as cs:
                        ack = await acks.receive()
                        while ack.snapshot_index != msg.meta.index:
                            ack = await acks.receive()
                    if cs.cancelled_caught:
                        failures += 1
                        if failures >= 5 or core.role is not Role.LEADER:
                            return
                        continue
                    failures = 0
                    acked = ack.next_offset
                    if acked >= size:
                        ok = True
                        self._stats["snapshots_sent"] += 1
                        return
            finally:
                f.close()
        finally:
            del self._snap_senders[peer]
            if not self._closed:
                core.report_snapshot(peer, ok)
                self._kick()

    async def _snapshot_receiver(self) -> None:
        """Collect streamed snapshot chunks; hand the core a verified InstallSnapshot."""
        assert self._snaps is not None and self.transport is not None
        async for c in self._chunks_recv:
            meta_msg = self._snap_rx_meta.get(c.src)
            core = self.core
            assert core is not None
            if (
                meta_msg is None
                or meta_msg.meta.index != c.snapshot_index
                or meta_msg.meta.term != c.snapshot_term
                or c.term < core.term
            ):
                self._ack_chunk(c, 0)
                continue
            rx = self._snap_rx.get(c.src)
            if rx is None and meta_msg.meta.index <= core.commit:
                # We hold all of it already (a leader restarting a stream it
                # lost track of): no bytes needed; the core answers with our commit.
                self._ack_chunk(c, c.total_size)
                if c.offset == 0:
                    await self._inbox_send.send(meta_msg)
                continue
            if rx is not None and (rx[0].meta.index, rx[0].meta.term) != (
                c.snapshot_index,
                c.snapshot_term,
            ):
                await trio.to_thread.run_sync(rx[0].abort)
                rx = None
            if rx is None:
                if c.offset != 0:
                    self._ack_chunk(c, 0)
                    continue
                receiver = await trio.to_thread.run_sync(
                    self._snaps.receive, meta_msg.meta, c.sha256.hex(), c.total_size
                )
                rx = (receiver, 0)
            receiver, expect = rx
            if c.offset != expect:
                self._snap_rx[c.src] = rx
                self._ack_chunk(c, expect)
                continue
            try:
                await trio.to_thread.run_sync(receiver.write, c.data)
                expect += len(c.data)
                if c.done:
                    install = await self._commit_received(receiver, meta_msg)
                    self._snap_rx.pop(c.src, None)
                    self._ack_chunk(c, expect)
                    self.log.info("node %d received snapshot %d", self.id, c.snapshot_index)
                    try:
                        self._inbox_send.send_nowait(install)
                    except trio.WouldBlock:
                        await self._inbox_send.send(install)
                    continue
            except SnapshotError as exc:  # a bad stream: start over (storage errors are fatal)
                self.log.warning("node %d: snapshot stream from %d failed: %s", self.id, c.src, exc)
                self._snap_rx.pop(c.src, None)
                self._ack_chunk(c, 0)
                continue
            self._snap_rx[c.src] = (receiver, expect)
            self._ack_chunk(c, expect)

    async def _commit_received(
        self, receiver: SnapshotReceiver, msg: InstallSnapshot
    ) -> InstallSnapshot:
        """Commit a received snapshot; the InstallSnapshot the core should step.

        The core does not see the snapshot before it is durable.  If a newer
        one is stored already (one the core refused earlier, its term having
        moved), the core is handed that one instead: any committed snapshot
        is committed state, whichever leader sent it, and the older one would
        not even be stored (the store never commits one below its newest).
        """
        assert self._snaps is not None
        with suppress(StaleSnapshotError):
            await trio.to_thread.run_sync(receiver.commit)
        newest = await trio.to_thread.run_sync(self._snaps.latest_stored)
        if newest is not None and newest.meta.index > msg.meta.index:
            return dataclasses.replace(msg, meta=newest.meta)
        return msg

    def _ack_chunk(self, c: SnapshotChunk, next_offset: int) -> None:
        assert self.transport is not None and self.core is not None
        self.transport.send(
            c.src,
            SnapshotChunkAck(
                self.core.term, self.id, c.src, c.snapshot_index, c.snapshot_term, next_offset
            ),
        )

    # ======================================================== inspection

    def _update_peers(self) -> None:
        core, transport = self.core, self.transport
        if core is None or transport is None:
            return
        # Locally configured routes win over the addresses in the membership
        # (an operator may reach a peer through a proxy or another interface).
        addresses = {**self._reachable_membership(core.membership).address_map, **self.config.peers}
        members = core.membership.members | set(self.config.peers)
        transport.set_peers({n: a for n, a in addresses.items() if n in members and n != self.id})

    def _reachable_membership(self, m: Membership) -> Membership:
        """``m`` without addresses that are not ``host:port``; warns once for each.

        Only a log written by earlier code holds such an address (the core
        refuses them now).  Using it would stop the transport, or make an
        InstallSnapshot no follower decodes.
        """
        if self._reachable is not None and self._reachable[0] is m:
            return self._reachable[1]
        clean = m.without_bad_addresses()
        for n, a in set(m.addresses) - set(clean.addresses) - self._bad_addresses_seen:
            self._bad_addresses_seen.add((n, a))
            self.log.warning(
                "node %d: ignoring the address %r of member %d in the configuration:"
                " not host:port (written by an earlier version?)",
                self.id,
                a,
                n,
            )
        self._reachable = (m, clean)
        return clean

    def status(self) -> NodeStatus:
        core = self._check_open()
        m = core.membership
        return NodeStatus(
            self.id,
            core.role.value,
            core.term,
            core.leader,
            self._address_of(core.leader),
            core.commit,
            self._applied,
            core.last_index(),
            core.offset,
            tuple(sorted(m.all_voters)),
            tuple(sorted(m.learners - m.all_voters)),
            m.joint,
        )

    @property
    def membership(self) -> Membership:
        return self._check_open().membership

    def statistics(self) -> NodeStatistics:
        core = self._check_open()
        last = core.last_index()
        peers = {
            n: PeerProgress(p.match, last - p.match, p.state.value)
            for n, p in core.progress.items()
        }
        lat = sorted(self._latencies)

        def pct(q: float) -> float:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 3) if lat else 0.0

        return NodeStatistics(
            self.id,
            core.role.value,
            core.term,
            core.commit,
            self._applied,
            peers,
            len(self._waiters),
            self._stats["proposals_committed"],
            {"p50": pct(0.5), "p99": pct(0.99), "p999": pct(0.999)},
            self._stats["entries_applied"],
            self._stats["persist_batches"],
            self._stats["persist_entries"],
            self._stats["snapshots_taken"],
            self._stats["snapshots_installed"],
            self._stats["snapshots_sent"],
            self._stats["inbox_dropped"],
            self.transport.statistics() if self.transport is not None else None,
            leader_id=core.leader,
            last_index=last,
            proposals_failed={
                "replaced": self._stats["proposals_replaced"],
                "timeout": self._stats["proposals_timed_out"],
                "stopped": self._stats["proposals_stopped"],
            },
            proposal_seconds=self._proposal_seconds.snapshot(),
            read_seconds={c: h.snapshot() for c, h in self._read_seconds.items()},
            persist_seconds=self._persist_seconds.snapshot(),
            elections_started=self._stats["elections_started"],
            elections_won=self._stats["elections_won"],
            leader_changes=self._stats["leader_changes"],
            snapshot_index=core.offset,
            snapshot_bytes=self._current_snapshot.size if self._current_snapshot else 0,
        )

    @property
    def is_leader(self) -> bool:
        return self.core is not None and self.core.role is Role.LEADER

    async def wait_changed(self) -> None:
        """Wait for the next change of role, leader, commit or applied index."""
        self._check_open()
        await self._changed.wait()

    async def wait_for_leader(self) -> NodeId:
        """Wait until this node knows a leader; returns its id (wrap in ``fail_after``)."""
        core = self._check_open()
        while core.leader is None:
            await self._changed.wait()
        return core.leader

    async def wait_applied(self, index: int) -> None:
        """Wait until this node has applied ``index`` (wrap in ``fail_after``)."""
        self._check_open()
        while self._applied < index:
            await self._changed.wait()

    def _fail_everything(self, error: BaseException) -> None:
        self._stats["proposals_stopped"] += len(self._waiters)
        for w in self._waiters.values():
            w.fail(error)
        self._waiters.clear()
        for r in self._reads.values():
            r.error = error
            r.event.set()

    async def aclose(self) -> None:
        """Stop the node: cancel its tasks, fail pending calls, close storage.

        Returns once the node has stopped (its state machine and log store
        closed); at once if it never started.
        """
        self._closed = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        if self._running:
            await self._stopped.wait()

    async def wait_stopped(self) -> None:
        """Wait until the node has stopped, for whatever reason (``aclose``, cancel, failure)."""
        if self._running:
            await self._stopped.wait()

    # ===================================================== client service

    async def handle_client(self, conn: ClientConnection) -> None:
        """Serve one client connection with :attr:`client_service` (trioraft/runtime/service.py)."""
        await self.client_service.handle(conn)


async def _fail(exc: BaseException) -> None:
    raise exc


def _ready_bytes(rd: Ready) -> int:
    return sum(len(e.data) for e in rd.entries) + 64 * len(rd.entries)


# ===================================================================== API


def websocket_transport(node: Node) -> AbstractAsyncContextManager[Transport]:
    """The default transport: WebSockets on ``config.listen``."""
    from trioraft.transport.websocket import open_websocket_transport

    cfg = node.config
    return open_websocket_transport(
        node_id=cfg.node_id,
        listen=cfg.listen,
        peers=dict(cfg.peers),
        cluster_id=cfg.cluster_id,
        secret=cfg.cluster_secret,
        on_messages=node._on_messages,
        on_peer=node._on_peer,
        incarnation=bytes.fromhex(node.incarnation),
        client_handler=node.handle_client,
        client_tokens=dict(cfg.client_tokens),
        ssl_context=cfg.ssl_context,
        client_ssl_context=cfg.client_ssl_context,
    )


async def serve_node(
    config: NodeConfig,
    state_machine: StateMachine,
    *,
    transport_factory: TransportFactory | None = None,
    client_service: ServiceFactory | None = None,
    log_store: LogStore | None = None,
    task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a node until cancelled; ``await nursery.start(serve_node, config, sm)`` returns it.

    ``client_service(node)`` builds the node's client service (default:
    :func:`~trioraft.runtime.service.generic_service`); ``log_store`` is the
    store the node writes its log to (default: files in ``data_dir/log``).
    """
    node = Node(config, state_machine, transport_factory, client_service, log_store=log_store)
    await node._run(task_status)


@asynccontextmanager
async def open_node(
    config: NodeConfig,
    state_machine: StateMachine,
    *,
    transport_factory: TransportFactory | None = None,
    client_service: ServiceFactory | None = None,
    log_store: LogStore | None = None,
) -> AsyncIterator[Node]:
    """Run a node for the duration of the block.

    Example::

        async with trioraft.open_node(config, MyStateMachine(path)) as node:
            await node.wait_for_leader()
            result = await node.propose(b"...")

    An exception out of the block, or out of starting the node (a data dir
    that cannot be created, a port in use), propagates as itself rather than
    inside an ExceptionGroup, so ``except TimeoutError`` around it works.
    """
    async with open_service_nursery() as nursery:
        node: Node = await nursery.start(
            functools.partial(
                serve_node,
                transport_factory=transport_factory,
                client_service=client_service,
                log_store=log_store,
            ),
            config,
            state_machine,
        )
        try:
            yield node
        finally:
            await node.aclose()
