"""The Trio runtime: a Raft node made of the pure core, durable storage and a transport.

This module owns the node's life (start, recovery from disk, stop) and its
*Raft loop*, the one task that drives the core; the other parts of
:class:`Node` are their own modules:

=================================  ===========================================
trioraft/runtime/node.py           lifecycle, recovery, the Raft loop, timers,
                                   ``open_node`` / ``serve_node``
trioraft/runtime/calls.py          propose, read, membership changes, transfer
trioraft/runtime/apply.py          the apply task (entries, installed snapshots)
trioraft/runtime/pending.py        waiters, reads, the timeout sweeper
trioraft/runtime/snapshots.py      take, stream and receive snapshots
trioraft/runtime/peers.py          routes, addresses, incarnation warnings
trioraft/runtime/status.py         NodeStatus, NodeStatistics
trioraft/runtime/service.py        the client service (requests on a connection)
trioraft/core/driver.py            the Ready cycle, in the core's order
=================================  ===========================================

Everything that happens to the node reaches the core as an event, all in
this Trio thread: peer messages (the transport calls ``_on_messages``,
never blocking, which queues them in a bounded inbox: full, they are
dropped and Raft retries); timers (cancel scopes whose deadlines follow
``core.election_deadline`` and ``core.heartbeat_deadline``); client calls,
which step the core directly and wake the loop.  The loop drains the inbox,
then runs the core's contract through the shared Ready driver: the messages
the core lets leave early, then the persist (one ``LogStore.persist`` call,
inline when small, else in a worker thread, so many proposals and
acknowledgements share one fsync), then the other messages, then the
hand-over to the apply task, then ``advance``.

A storage error (write or fsync) is fatal: the node stops and ``open_node``
raises; nothing that could not be persisted is ever acknowledged.  Nothing
a client or a peer sends may stop or freeze the node.

Why this file is past 600 lines: the lifecycle, the loop and the timers
share the loop's state (the core, the inbox, the timers' cancel scopes), and
``open_node`` / ``serve_node`` are the two ways in; split further, each
piece would reach into the others.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass

import trio
import trio.lowlevel

from trioraft.core.driver import ReadyDriver
from trioraft.core.raft import RaftCore
from trioraft.core.types import (
    MESSAGE_TYPES,
    InstallSnapshot,
    Membership,
    Message,
    NodeId,
    Ready,
    Role,
)
from trioraft.runtime.apply import NodeApply
from trioraft.runtime.calls import CONSISTENCY, NodeCalls
from trioraft.runtime.config import NodeConfig
from trioraft.runtime.errors import (
    NodeClosedError,
)
from trioraft.runtime.metrics import Histogram
from trioraft.runtime.peers import NodePeers
from trioraft.runtime.pending import Pending
from trioraft.runtime.service import ClientService, error_code, error_response, generic_service
from trioraft.runtime.snapshots import NodeSnapshots
from trioraft.runtime.status import (
    NodeStatistics,
    NodeStatus,
    PeerProgress,
    node_statistics,
    node_status,
)
from trioraft.statemachine import StateMachine
from trioraft.storage import LogStore
from trioraft.storage.fs import FileSystem, OsFileSystem
from trioraft.storage.log import FileLogStore
from trioraft.storage.recovery import reconcile
from trioraft.storage.seed import LOG_DIR, SNAPSHOTS_DIR
from trioraft.storage.snapshots import (
    SnapshotStore,
)
from trioraft.transport._ws import open_service_nursery
from trioraft.transport.base import (
    ClientConnection,
    Transport,
)
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
#: The messages that go to the core as they are (the others are a snapshot
#: stream's or a client's): nearly every message, found with one lookup.
_STEPPED = frozenset(MESSAGE_TYPES) - {InstallSnapshot}
#: What the Raft loop's inbox carries.
_InboxItem = _Wake | _PeerBatch | InstallSnapshot


class _NodeIO:
    """The node as the Ready driver's ``ReadyIO`` (trioraft/core/driver.py)."""

    __slots__ = ("node",)

    def __init__(self, node: Node) -> None:
        self.node = node

    def send(self, message: Message) -> None:
        self.node._send_message(message)

    def apply(self, rd: Ready) -> int:
        return self.node._hand_over(rd)


class _CoreTimer:
    """One of the core's deadlines as a task: a cancel scope that sleeps until it.

    The Raft loop moves the scope's deadline (:meth:`rearm`) after each step
    of the core; when the deadline passes and the core agrees it is due, the
    timer steps the core (``fire(now)``) and wakes the loop.  Most steps
    leave a deadline where it was (a leader's election deadline, a
    follower's heartbeat deadline), so the timer keeps the deadline it set
    and touches the scope only when the core's has moved.
    """

    __slots__ = ("_armed", "_deadline", "_fire", "_kick", "_scope")

    def __init__(
        self, deadline: Callable[[], float], fire: Callable[[float], None], kick: Callable[[], None]
    ) -> None:
        self._deadline = deadline
        self._fire = fire
        self._kick = kick
        self._scope: trio.CancelScope | None = None
        self._armed = math.inf  # the scope's deadline, while there is a scope

    @classmethod
    def for_core(cls, core: RaftCore, kick: Callable[[], None]) -> tuple[_CoreTimer, _CoreTimer]:
        """The election timer and the heartbeat timer of ``core``."""
        return (
            cls(lambda: core.election_deadline, core.election_timer_fired, kick),
            cls(lambda: core.heartbeat_deadline, core.heartbeat_due, kick),
        )

    def rearm(self) -> None:
        if self._scope is not None:
            deadline = self._deadline()
            if deadline != self._armed:
                self._armed = self._scope.deadline = deadline

    async def run(self) -> None:
        while True:
            self._armed = self._deadline()
            with trio.CancelScope(deadline=self._armed) as self._scope:
                await trio.sleep_forever()
            self._scope = None
            now = trio.current_time()
            if now >= self._deadline():
                self._fire(now)
                self._kick()
            await trio.lowlevel.checkpoint()


class Node(NodeCalls, NodeApply, NodePeers, NodeSnapshots):
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
        self._init_peers()
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
        self._init_apply()
        #: Proposals and reads waiting for an answer (trioraft/runtime/pending.py).
        self._pending = Pending(config.proposal_timeout)
        self._storage_lock = trio.Lock()
        self._init_snapshots()
        #: The core's election and heartbeat deadlines as tasks (set once the core is built).
        self._timers: tuple[_CoreTimer, ...] = ()
        self._observed: tuple[Role, int, NodeId | None] | None = None
        self._membership_seen: Membership | None = None
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
        #: Moving average of the last writes' durations: whether to write inline.
        self._write_seconds = 0.0
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
        # Made when someone waits: most changes have no waiter.
        self._changed_event: trio.Event | None = None
        self._driver: ReadyDriver | None = None

    @property
    def _changed(self) -> trio.Event:
        """An event set at the next change of role, leader, commit or applied index."""
        if self._changed_event is None:
            self._changed_event = trio.Event()
        return self._changed_event

    def _notify(self) -> None:
        if self._changed_event is not None:
            self._changed_event.set()
            self._changed_event = None

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
                os.path.join(cfg.data_dir, LOG_DIR),
            )
        log = self._logstore
        try:
            self.incarnation = log.incarnation()
            self._snaps = await trio.to_thread.run_sync(
                functools.partial(SnapshotStore, fs=self.fs, randbytes=self.randbytes),
                os.path.join(cfg.data_dir, SNAPSHOTS_DIR),
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(log.close)
            raise
        try:
            await self.state_machine.start()
            self.core = await self._recover()
            self._driver = ReadyDriver(self.core, _NodeIO(self))
            self._timers = _CoreTimer.for_core(self.core, self._kick)
            async with self._transport_factory(self) as transport, trio.open_nursery() as nursery:
                self.transport = transport
                self._nursery = nursery
                self._update_peers()
                nursery.start_soon(self._raft_loop)
                nursery.start_soon(self._apply_loop)
                for timer in self._timers:
                    nursery.start_soon(timer.run)
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
            await self._restore(stored)
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

    def _on_messages(self, src: NodeId, messages: list[AnyMessage]) -> None:
        """Transport callback: never blocks."""
        raft: list[Message] = []
        for m in messages:
            if type(m) not in _STEPPED and (
                self._route_snapshot_message(m) or isinstance(m, ClientRequest | ClientResponse)
            ):
                continue  # a snapshot stream's, or not on a peer connection
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

    async def _drain_ready(self, core: RaftCore) -> None:
        """Run the core's Ready cycle (trioraft/core/driver.py) until it has no work."""
        driver = self._driver
        assert driver is not None
        while (rd := driver.start()) is not None:  # its early messages have left
            if rd.needs_persist:
                # A small write costs less than the hop to a worker thread
                # (measured: 170 us inline vs 385 us threaded) while the disk
                # is fast; on a disk whose fsync took 4 ms, writing in a thread
                # gave 1.14x (1 writer) and 1.28x (64 writers) the docstore's
                # writes/s: the node keeps receiving and answering meanwhile.
                inline = (
                    rd.snapshot is None
                    and _ready_bytes(rd) <= self.config.inline_write_bytes
                    and self._write_seconds <= self.config.inline_write_seconds
                )
                if inline and rd.early_messages:
                    # Let the senders put the appends on the wire before the
                    # inline fsync blocks this thread.  A sender needs two
                    # scheduling rounds to write (the WebSocket's send lock
                    # yields once), and trio runs a round's tasks in random
                    # order: with one round here and the storage lock's, the
                    # fsync came first in half the writes, and the leader's
                    # and followers' fsyncs did not overlap.
                    await trio.lowlevel.checkpoint()
                    await trio.lowlevel.checkpoint()
                async with self._storage_lock:
                    if inline:
                        self._persist(rd)
                    else:
                        await trio.to_thread.run_sync(self._persist, rd)
            driver.finish(rd)  # the other messages, the hand-over to the apply task, advance
            self._observe(core)
            self._notify()
        for timer in self._timers:  # the core's deadlines may have moved
            timer.rearm()

    # What the Ready driver calls (through _NodeIO): how this node sends and applies.

    def _send_message(self, message: Message) -> None:
        """Send one Raft message; an ``InstallSnapshot`` starts a snapshot stream."""
        assert self.transport is not None
        if isinstance(message, InstallSnapshot):
            self._start_snapshot_send(message)
        else:
            self.transport.send(message.dst, message)

    def _persist(self, rd: Ready) -> None:
        """Runs in a worker thread (or inline when small): one ``LogStore.persist`` call."""
        started = time.perf_counter()
        log = self._logstore
        assert log is not None
        log.persist(rd.hard_state, rd.entries, rd.snapshot)
        if rd.entries:
            self._stats["persist_batches"] += 1
            self._stats["persist_entries"] += len(rd.entries)
        took = time.perf_counter() - started
        self._persist_seconds.observe(took)
        self._write_seconds += (took - self._write_seconds) / 8

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

    def _check_open(self) -> RaftCore:
        if self._closed or self.core is None:
            raise NodeClosedError("node is closed") from self._fatal
        return self.core

    # ======================================================== inspection

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
