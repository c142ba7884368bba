"""A hand-driven cluster of Raft cores for transcript-style scenario tests.

Theory of operation
===================

Where the simulator (``trioraft.testing.sim``) throws dice, ``Cluster`` does
exactly what a test says: which node's timer fires, which messages are
delivered, dropped or held back, who crashes.  Each node follows the
core's contract (persist, send, apply, advance; the shared Ready driver of
``trioraft.core.driver``) immediately when the test calls
:meth:`Cluster.process`; messages then wait in ``Cluster.inflight``
until :meth:`Cluster.deliver` hands them over.  A crash throws away
everything not persisted and rebuilds the core from its "disk".

A test reads like a transcript::

    c = Cluster(3)
    c.elect(1)                         # 1 times out, wins, commits its NOOP
    c.isolate(1)
    c.propose(1, b"x")                 # stays on node 1 only
    c.elect(2)
    assert c.core(2).term == 2
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from trioraft.core import types as t
from trioraft.core.driver import ReadyDriver
from trioraft.core.raft import RaftConfig, RaftCore

MessageFilter = Callable[[t.Message], bool]


@dataclass
class Disk:
    """What survives a crash: hard state, log, snapshot and the disk's incarnation."""

    hard_state: t.HardState = field(default_factory=t.HardState)
    entries: list[t.Entry] = field(default_factory=list)
    snapshot: t.SnapshotMeta | None = None
    incarnation: str = ""


@dataclass
class NodeRecord:
    disk: Disk = field(default_factory=Disk)
    applied: list[t.Entry] = field(default_factory=list)
    reads: list[t.ReadState] = field(default_factory=list)
    failed_reads: list[t.ReadFailed] = field(default_factory=list)
    snapshots_installed: list[t.SnapshotMeta] = field(default_factory=list)
    up: bool = True


def _persist(d: Disk, rd: t.Ready) -> None:
    if rd.snapshot is not None:
        d.snapshot = rd.snapshot
        d.entries = []
    if rd.entries:
        first = rd.entries[0].index
        d.entries = [e for e in d.entries if e.index < first] + list(rd.entries)
    if rd.hard_state is not None:
        d.hard_state = rd.hard_state


class _HarnessIO:
    """Messages go to the cluster's pool; applies are recorded (``ReadyIO``)."""

    def __init__(self, cluster: Cluster, rec: NodeRecord) -> None:
        self.cluster, self.rec = cluster, rec

    def send(self, message: t.Message) -> None:
        self.cluster.inflight.append(message)

    def apply(self, rd: t.Ready) -> int | None:
        rec = self.rec
        if rd.snapshot is not None:
            rec.snapshots_installed.append(rd.snapshot)
            rec.applied = []
        rec.applied.extend(rd.committed)
        rec.reads.extend(rd.reads)
        rec.failed_reads.extend(rd.failed_reads)
        return None


class Cluster:
    """N cores, a message pool and a clock, all driven by the test."""

    def __init__(
        self,
        voters: int | Iterable[t.NodeId] = 3,
        *,
        learners: Iterable[t.NodeId] = (),
        seed: int = 0,
        incarnations: bool = False,
        leader: t.NodeId | None = None,
        **config: object,
    ) -> None:
        """``incarnations=True`` gives every disk an incarnation id and tells a
        node the sender's with every message, as the transport's handshake does;
        ``leader`` is elected (:meth:`elect`) before the cluster is returned."""
        self.incarnations = incarnations
        ids = list(range(1, voters + 1)) if isinstance(voters, int) else list(voters)
        self.membership = t.Membership(frozenset(ids), frozenset(), frozenset(learners))
        self.config = config
        self.rng = random.Random(seed)
        self.now = 0.0
        self.cores: dict[t.NodeId, RaftCore] = {}
        self.records: dict[t.NodeId, NodeRecord] = {}
        self.inflight: list[t.Message] = []
        self.blocked: set[tuple[t.NodeId, t.NodeId]] = set()
        self.paused: set[t.NodeId] = set()
        for n in self.membership.members:
            self.add_node(n)
        if leader is not None:
            self.elect(leader)

    # ------------------------------------------------------------- nodes

    def raft_config(self, node: t.NodeId) -> RaftConfig:
        return RaftConfig(node, **self.config)  # type: ignore[arg-type]

    def add_node(self, node: t.NodeId) -> None:
        """Start a node with an empty disk (it joins with the bootstrap membership)."""
        self.records[node] = self._new_record()
        self._boot(node)

    def _new_record(self) -> NodeRecord:
        rec = NodeRecord()
        if self.incarnations:
            rec.disk.incarnation = f"{self.rng.getrandbits(128):032x}"
        return rec

    def _boot(self, node: t.NodeId) -> None:
        rec = self.records[node]
        d = rec.disk
        self.cores[node] = RaftCore(
            self.raft_config(node),
            random.Random(self.rng.random()),
            membership=self.membership,
            now=self.now,
            hard_state=d.hard_state,
            entries=d.entries,
            snapshot=d.snapshot,
            incarnation=d.incarnation,
        )
        rec.applied = [e for e in rec.applied if d.snapshot is None or e.index <= d.snapshot.index]
        rec.up = True

    def core(self, node: t.NodeId) -> RaftCore:
        return self.cores[node]

    def crash(self, node: t.NodeId) -> None:
        """Lose the node's memory; what it persisted stays."""
        self.records[node].up = False

    def restart(self, node: t.NodeId) -> None:
        rec = self.records[node]
        rec.applied = []  # the state machine replays from the snapshot and the log
        self._boot(node)

    def wipe(self, node: t.NodeId) -> None:
        """Lose the node's data directory: it restarts with an empty disk, the same id.

        Messages it sent before are lost with its connections.
        """
        self.inflight = [m for m in self.inflight if m.src != node]
        self.records[node] = self._new_record()
        self._boot(node)

    def pause(self, node: t.NodeId) -> None:
        """Freeze the node (a SIGSTOP): no timers, and messages to it wait in flight."""
        self.paused.add(node)

    def resume(self, node: t.NodeId) -> None:
        self.paused.discard(node)

    def _live(self, node: t.NodeId) -> bool:
        return self.records[node].up and node not in self.paused

    def leader(self) -> t.NodeId | None:
        leaders = [
            n for n, c in self.cores.items() if self.records[n].up and c.role is t.Role.LEADER
        ]
        if not leaders:
            return None
        return max(leaders, key=lambda n: self.cores[n].term)

    # ----------------------------------------------------------- network

    def isolate(self, node: t.NodeId) -> None:
        for other in self.cores:
            if other != node:
                self.blocked |= {(node, other), (other, node)}

    def partition(self, *groups: Iterable[t.NodeId]) -> None:
        sets = [set(g) for g in groups]
        self.blocked = set()
        for i, a in enumerate(sets):
            for b in sets[i + 1 :]:
                self.blocked |= {(x, y) for x in a for y in b} | {(y, x) for x in a for y in b}

    def block(self, src: t.NodeId, dst: t.NodeId) -> None:
        self.blocked.add((src, dst))

    def heal(self) -> None:
        self.blocked = set()

    # ------------------------------------------------------------ driving

    def process(self, node: t.NodeId | None = None) -> None:
        """Run the t.Ready loop of one node (or all) until it has nothing to do."""
        for n in [node] if node is not None else list(self.cores):
            if not self._live(n):
                continue
            ReadyDriver(self.cores[n], _HarnessIO(self, self.records[n])).run(
                functools.partial(_persist, self.records[n].disk)
            )

    def deliver(
        self,
        match: MessageFilter | None = None,
        *,
        drop: MessageFilter | None = None,
        rounds: int = 1000,
    ) -> list[t.Message]:
        """Deliver in-flight messages (those ``match`` selects) until none are left.

        Messages ``drop`` selects, and those crossing a blocked link or to a
        crashed node, are lost.  Messages not selected by ``match`` stay in
        flight.  Returns everything delivered, in order.
        """
        delivered: list[t.Message] = []
        for _ in range(rounds):
            self.process()

            def chosen(m: t.Message) -> bool:
                return (match is None or match(m)) and m.dst not in self.paused

            batch = [m for m in self.inflight if chosen(m)]
            if not batch:
                break
            self.inflight = [m for m in self.inflight if not chosen(m)]
            for m in batch:
                if (drop is not None and drop(m)) or (m.src, m.dst) in self.blocked:
                    continue
                if m.dst not in self.cores or not self.records[m.dst].up:
                    continue
                self._introduce(m)
                self.cores[m.dst].step(m, self.now)
                delivered.append(m)
                self.process(m.dst)
        return delivered

    def take(self, match: MessageFilter) -> list[t.Message]:
        """Remove and return the in-flight messages ``match`` selects (hold them back)."""
        self.process()
        got = [m for m in self.inflight if match(m)]
        self.inflight = [m for m in self.inflight if not match(m)]
        return got

    def inject(self, messages: Iterable[t.Message]) -> None:
        """Deliver exactly these messages now (e.g. ones held back with ``take``)."""
        for m in messages:
            if self.records[m.dst].up:
                self._introduce(m)
                self.cores[m.dst].step(m, self.now)
                self.process(m.dst)

    def _introduce(self, m: t.Message) -> None:
        # What the transport's handshake tells the receiver: who sent this.
        if self.incarnations and m.src in self.records:
            self.cores[m.dst].peer_incarnation(m.src, self.records[m.src].disk.incarnation)

    def advance(self, dt: float) -> None:
        """Move the clock on and fire every due timer, without delivering."""
        self.now += dt
        for n, c in self.cores.items():
            if self._live(n):
                c.tick(self.now)
        self.process()

    def fire_election(self, node: t.NodeId) -> None:
        """Make ``node``'s election timer fire now."""
        core = self.cores[node]
        self.now = max(self.now, core.election_deadline)
        core.election_timer_fired(self.now)
        self.process(node)

    def elect(self, node: t.NodeId, *, attempts: int = 3) -> None:
        """Let ``node`` campaign (again, up to ``attempts`` times) until it wins.

        A second attempt is normal when the first taught the node a newer term.
        """
        for _ in range(attempts):
            self.fire_election(node)
            self.deliver()
            if self.cores[node].role is t.Role.LEADER:
                return
        raise AssertionError(f"node {node} did not win")

    def heartbeat(self, node: t.NodeId) -> None:
        """Make the leader's heartbeat due now."""
        core = self.cores[node]
        self.now = max(self.now, core.heartbeat_deadline)
        core.heartbeat_due(self.now)
        self.process(node)

    def propose(self, node: t.NodeId, data: bytes, **kw: object) -> int:
        index = self.cores[node].propose(data, **kw)  # type: ignore[arg-type]
        self.process(node)
        return index

    def applied_data(self, node: t.NodeId) -> list[bytes]:
        return [e.data for e in self.records[node].applied if e.data]

    def committed_terms(self, node: t.NodeId) -> list[tuple[int, int]]:
        return [(e.index, e.term) for e in self.records[node].applied]


def is_type(*types: type) -> MessageFilter:
    return lambda m: isinstance(m, types)


def to(node: t.NodeId, *types: type) -> MessageFilter:
    return lambda m: m.dst == node and (not types or isinstance(m, types))


def from_(node: t.NodeId, *types: type) -> MessageFilter:
    return lambda m: m.src == node and (not types or isinstance(m, types))


__all__ = ["Cluster", "Disk", "from_", "is_type", "to"]
