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

import functools
import logging
import math
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass

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
    ProposalRejectedError,
    ReadFailedError,
)
from trioraft.runtime.metrics import Histogram
from trioraft.runtime.pending import Done, Pending
from trioraft.runtime.service import ClientService, error_code, error_response, generic_service
from trioraft.runtime.snapshots import NodeSnapshots
from trioraft.runtime.status import (
    NodeStatistics,
    NodeStatus,
    PeerProgress,
    node_statistics,
    node_status,
)
from trioraft.statemachine import SnapshotInfo, StateMachine
from trioraft.storage import LogStore
from trioraft.storage.fs import FileSystem, OsFileSystem
from trioraft.storage.log import FileLogStore
from trioraft.storage.recovery import reconcile
from trioraft.storage.snapshots import (
    SnapshotStore,
)
from trioraft.transport._ws import open_service_nursery
from trioraft.transport.base import (
    ClientConnection,
    Transport,
)
from trioraft.transport.codec import MAX_ENTRY_DATA, MAX_INT, MAX_SESSION_ID
from trioraft.transport.messages import (
    AnyMessage,
    ClientRequest,
    ClientResponse,
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


class Node(NodeSnapshots):
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
        #: Proposals and reads waiting for an answer (trioraft/runtime/pending.py).
        self._pending = Pending(config.proposal_timeout)
        self._applied = 0
        self._storage_lock = trio.Lock()
        self._init_snapshots()
        self._election_scope: trio.CancelScope | None = None
        self._heartbeat_scope: trio.CancelScope | None = None
        self._observed: tuple[Role, int, NodeId | None] | None = None
        self._membership_seen: Membership | None = None
        self._reachable: tuple[Membership, Membership] | None = None
        self._bad_addresses_seen: set[tuple[NodeId, str]] = set()
        self._stats: dict[str, int] = {
            "entries_applied": 0,
            "persist_batches": 0,
            "persist_entries": 0,
            "snapshots_taken": 0,
            "snapshots_installed": 0,
            "snapshots_sent": 0,
            "inbox_dropped": 0,
            "elections_started": 0,
            "elections_won": 0,
            "leader_changes": 0,
        }
        # Latency histograms for Node.statistics() (trioraft/runtime/metrics.py).
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
                nursery.start_soon(self._pending.sweep_forever)
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
            self._pending.fail_everything(self._fatal or NodeClosedError("node closed"))
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
            if self._route_snapshot_message(m):
                continue
            if isinstance(m, ClientRequest | ClientResponse):
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
            self._pending.read_index(rs.request_id, rs.index)
        if rd.reads:
            self._apply_send.send_nowait(_RELEASE_READS)
        for fr in rd.failed_reads:
            self._pending.read_failed(fr.request_id, self._not_leader_error(fr.leader, fr.reason))
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
                    self._pending.applied(chunk, await sm.apply(chunk))
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
                    self._pending.snapshot_installed(meta.index)
                self._pending.release_reads(self._applied)
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
        self._pending.wait_for(index, core.term, done)
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
        if len(self._pending) >= self.config.max_pending_proposals:
            raise OverloadedError(f"{len(self._pending)} proposals pending")
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
        w = self._pending.wait_for(index, term)
        self._kick()
        return await self._pending.result(index, w)

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
            rid, r = self._pending.new_read()
            try:
                core.read(rid, trio.current_time(), lease=consistency == "lease")
                self._kick()
                await r.event.wait()
            finally:
                self._pending.done_read(rid)
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
        """Where the node stands (trioraft/runtime/status.py)."""
        return node_status(self)

    def statistics(self) -> NodeStatistics:
        """Counters and latencies (trioraft/runtime/status.py)."""
        return node_statistics(self)

    @property
    def membership(self) -> Membership:
        return self._check_open().membership

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
