"""A deterministic simulator of Raft cores over a faulty network.

Theory of operation
===================

One seed fixes everything: the network's latencies, drops, duplicates and
reorderings, slow links (every message across one held up past an election
timeout), the partitions (asymmetric and partial ones too: a node cut off
from some of the others only), crashes and restarts (quick ones too, inside
a leader's lease), pauses (a SIGSTOPped process, or a short stall), client
proposals and reads (ReadIndex and lease), membership changes, leadership
transfers, snapshots, and scripted attacks on a leader's lease (a voter
restarting inside it; a TimeoutNow arriving after its transfer timed out).
Events sit in one priority queue ordered by simulated time; a *step* handles
one event.  Nothing reads a real clock, so a seed replays exactly.

Each node runs the core's contract through the shared Ready driver
(``trioraft.core.driver``, as the runtime does): it takes a Ready and sends
what the core lets leave early, the write reaches "disk" after a simulated
latency (a crash before then loses it: unsynced writes are lost), and only
then are its other messages sent, its committed entries applied and
``advance`` called.  The state machine is a
running hash of applied entries, so replicas compare in O(1).  A snapshot
carries (index, hash).

After every step the checker upholds, and records a violation otherwise:

* election safety - at most one leader per term;
* log matching - an (index, term) names one entry everywhere, and the same
  previous term;
* leader completeness - a new leader holds every entry committed anywhere;
* state machine safety - every replica applies the same entry at an index
  (compared through the running hash), also after snapshots and restarts;
* linearizable reads - a read answered at index i was asked when no entry
  above i had been committed anywhere (commits are what clients see acked).

Liveness: after the fault phase every fault heals, and within a bounded
simulated time a leader must be elected and a new proposal committed.

``python -m trioraft.testing.sim --seeds N [--nodes 5] [--steps S]`` runs a
sweep, prints seeds per second and violations (exit status 1 on any), and
each violation's seed, which replays with ``--seed``.

Why this is one file past 600 lines: the network, the fault schedule, the
nodes' simulated I/O and the checker (nearly all of it the
:class:`Simulation` class) share the one event queue, the nodes' state and
one random stream, whose order of draws is what makes a seed replay; split,
that order would be spread over several modules.  The sweep and the command
line at the end are small.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from trioraft.core.driver import ReadyDriver
from trioraft.core.errors import NotLeader, ProposalRejected
from trioraft.core.raft import RaftConfig, RaftCore
from trioraft.core.types import (
    Entry,
    HardState,
    InstallSnapshot,
    Membership,
    Message,
    NodeId,
    Ready,
    Role,
    SnapshotMeta,
)


@dataclass(frozen=True)
class SimConfig:
    """Knobs of one simulated run.  The seed picks fault rates within these bounds."""

    nodes: int = 5
    steps: int = 1000
    learners: int = 0  # of the ``nodes``, how many start as learners
    election_timeout: tuple[float, float] = (0.3, 0.6)
    heartbeat: float = 0.05
    max_latency: float = 0.02
    max_drop: float = 0.1
    max_dup: float = 0.05
    crash_rate: float = 0.01  # chance per step that a node crashes
    partition_rate: float = 0.01
    pause_rate: float = 0.003
    #: Chance per step that the slow links change: all recover, or one more
    #: link (often one of the leader's) holds every message across it for
    #: 0.5-2 maximum election timeouts.
    slow_link_rate: float = 0.003
    #: Chance per step of a scripted attack on a leader's lease
    #: (``Simulation._attack_lease``).
    lease_attack_rate: float = 0.001
    propose_rate: float = 0.15
    read_rate: float = 0.05
    membership_rate: float = 0.005
    transfer_rate: float = 0.003
    snapshot_every: int = 25  # applied entries between a node's snapshots
    liveness_time: float = 15.0  # simulated seconds after healing
    faults: frozenset[str] = frozenset()  # RaftConfig.faults for every node


@dataclass
class SimResult:
    seed: int
    steps: int
    violations: list[str] = field(default_factory=list)
    commits: int = 0
    reads: int = 0
    elections: int = 0
    sim_time: float = 0.0


class _Node:
    __slots__ = (
        "core",
        "durable_entries",
        "durable_hs",
        "durable_snap",
        "id",
        "incoming_snaps",
        "paused_until",
        "pending",
        "reads",
        "sm_hash",
        "sm_index",
        "timer_at",
    )

    def __init__(self, node_id: NodeId) -> None:
        self.id = node_id
        self.core: RaftCore | None = None
        self.durable_hs = HardState()
        self.durable_entries: list[Entry] = []
        self.durable_snap: tuple[SnapshotMeta, int] | None = None  # (meta, sm hash)
        self.incoming_snaps: dict[tuple[int, int], int] = {}
        self.pending: Ready | None = None
        self.sm_index = 0
        self.sm_hash = 0
        self.timer_at = -1.0
        self.paused_until = 0.0
        self.reads: dict[int, tuple[int, int]] = {}  # request id -> (bound, read id)


class _SimIO:
    """One node's sends and applies for the shared Ready driver (``ReadyIO``)."""

    __slots__ = ("node", "sim")

    def __init__(self, sim: Simulation, node: _Node) -> None:
        self.sim, self.node = sim, node

    def send(self, message: Message) -> None:
        self.sim._send(self.node, message)

    def apply(self, rd: Ready) -> int | None:
        self.sim._apply_ready(self.node, rd)
        return None


def _entry_key(e: Entry) -> tuple[Any, ...]:
    return (e.index, e.term, int(e.kind), e.data, e.client_id, e.sequence)


class Simulation:
    """One seeded run.  ``run()`` returns a :class:`SimResult`."""

    def __init__(self, seed: int, cfg: SimConfig) -> None:
        self.seed = seed
        self.cfg = cfg
        self.rng = random.Random(seed)
        r = self.rng
        self.drop = r.uniform(0, cfg.max_drop)
        self.dup = r.uniform(0, cfg.max_dup)
        self.latency = r.uniform(0.001, cfg.max_latency)
        # Small appends split an old leader's entries from the new NOOP, which
        # is what Figure 8 needs; small windows exercise flow control.
        self.max_append = r.choice((1, 2, 4, 16))
        self.max_inflight = r.choice((1, 2, 8))
        self.keep_entries = r.choice((0, 0, 5, 20))  # log kept behind a snapshot
        self.now = 0.0
        self.queue: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self.blocked: set[tuple[NodeId, NodeId]] = set()
        self.slow: dict[tuple[NodeId, NodeId], float] = {}  # link -> extra delay
        self.attack_until = 0.0  # a scripted attack runs: no other faults, clients only read
        self.healed = False  # the fault phase is over
        ids = list(range(1, cfg.nodes + 1))
        n_learn = min(cfg.learners, cfg.nodes - 1)
        self.bootstrap = Membership(
            frozenset(ids[: cfg.nodes - n_learn]),
            frozenset(),
            frozenset(ids[cfg.nodes - n_learn :]),
        )
        self.nodes = {i: _Node(i) for i in ids}
        self.result = SimResult(seed, 0)
        # checker state
        self.leaders: dict[int, NodeId] = {}
        self.entries_seen: dict[tuple[int, int], tuple[tuple[Any, ...], int | None]] = {}
        self.committed: dict[int, tuple[Any, ...]] = {}
        self.hash_at: dict[int, int] = {0: 0}
        self.max_commit = 0
        self.committed_by_term: dict[int, int] = {}
        self._next_cmd = 0
        self._next_read = 0
        for n in self.nodes.values():
            self._start(n)

    # ------------------------------------------------------------ plumbing

    def _push(self, at: float, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self.queue, (at, self._seq, kind, payload))

    def _violation(self, what: str) -> None:
        self.result.violations.append(f"t={self.now:.4f} {what}")

    def _core_config(self, node_id: NodeId) -> RaftConfig:
        lo, hi = self.cfg.election_timeout
        return RaftConfig(
            node_id,
            election_timeout_min=lo,
            election_timeout_max=hi,
            heartbeat_interval=self.cfg.heartbeat,
            max_inflight=self.max_inflight,
            max_entries_per_append=self.max_append,
            faults=self.cfg.faults,
        )

    def _start(self, n: _Node) -> None:
        snap_meta = n.durable_snap[0] if n.durable_snap else None
        n.core = RaftCore(
            self._core_config(n.id),
            random.Random(self.rng.random()),
            membership=self.bootstrap,
            now=self.now,
            hard_state=n.durable_hs,
            entries=n.durable_entries,
            snapshot=snap_meta,
        )
        # The state machine restarts from the snapshot and replays the log.
        n.sm_index, n.sm_hash = (
            (n.durable_snap[0].index, n.durable_snap[1]) if n.durable_snap else (0, 0)
        )
        n.pending = None
        n.reads = {}
        self._after(n)

    def _after(self, n: _Node) -> None:
        """Take the node's next Ready if it has one, and keep its timer armed."""
        core = n.core
        if core is None:
            return
        if core.role is Role.LEADER:
            prev = self.leaders.setdefault(core.term, n.id)
            if prev != n.id:
                self._violation(f"election safety: {prev} and {n.id} lead term {core.term}")
            elif self.leaders.get(-core.term) is None:
                self.leaders[-core.term] = n.id
                self.result.elections += 1
                self._check_leader_complete(n)
        if n.pending is None and (rd := ReadyDriver(core, _SimIO(self, n)).start()) is not None:
            n.pending = rd  # its early messages have left (the core's decision)
            self._push(self.now + self.rng.uniform(0, 0.002), 1, n.id)  # fsync latency
        deadline = core.next_deadline()
        if deadline != n.timer_at:
            n.timer_at = deadline
            self._push(max(deadline, self.now), 2, (n.id, deadline))

    # -------------------------------------------------------------- checks

    def _check_leader_complete(self, n: _Node) -> None:
        core = n.core
        assert core is not None
        # Entries known committed by some node while it was in a term below
        # ours must be in our log (an entry committed later need not be).
        c = max((i for t, i in self.committed_by_term.items() if t < core.term), default=0)
        if c == 0:
            return
        if c <= core.offset:
            return  # inside its snapshot, whose state was checked when installed
        t = core.term_at(c)
        want = self.committed[c]
        if t is None or t != want[1]:
            self._violation(
                f"leader completeness: leader {n.id} of term {core.term} lacks "
                f"committed entry {c} (has term {t}, committed term {want[1]})"
            )

    def _check_persisted(self, n: _Node, entries: tuple[Entry, ...]) -> None:
        core = n.core
        assert core is not None
        for e in entries:
            prev = e.index - 1
            pt: int | None
            if n.durable_entries and n.durable_entries[0].index <= prev:
                pt = n.durable_entries[prev - n.durable_entries[0].index].term
            elif n.durable_snap and n.durable_snap[0].index == prev:
                pt = n.durable_snap[0].term
            elif prev == 0:
                pt = 0
            else:
                pt = None
            key = _entry_key(e)
            seen = self.entries_seen.get((e.index, e.term))
            if seen is None:
                self.entries_seen[(e.index, e.term)] = (key, pt)
            else:
                if seen[0] != key:
                    self._violation(f"log matching: two entries at ({e.index},{e.term})")
                if pt is not None and seen[1] is not None and seen[1] != pt:
                    self._violation(f"log matching: ({e.index},{e.term}) follows different terms")

    def _apply(self, n: _Node, e: Entry) -> None:
        if e.index != n.sm_index + 1:
            self._violation(f"node {n.id} applied {e.index} after {n.sm_index}")
            return
        key = _entry_key(e)
        got = self.committed.get(e.index)
        if got is None:
            self.committed[e.index] = key
        elif got != key:
            self._violation(
                f"state machine safety: node {n.id} applied {key[:2]} at {e.index}, "
                f"another applied {got[:2]}"
            )
        n.sm_hash = hash((n.sm_hash, key))
        n.sm_index = e.index
        want = self.hash_at.get(e.index)
        if want is None:
            self.hash_at[e.index] = n.sm_hash
        elif want != n.sm_hash:
            self._violation(f"state machine safety: node {n.id} state differs at {e.index}")

    # -------------------------------------------------------------- events

    def _persist(self, n: _Node) -> None:
        core, rd = n.core, n.pending
        if core is None or rd is None:
            return
        if rd.snapshot is not None:
            meta = rd.snapshot
            h = n.incoming_snaps.pop((meta.index, meta.term), None)
            if h is None:
                self._violation(f"node {n.id} installs snapshot {meta.index} it never received")
                return
            n.durable_snap = (meta, h)
            n.durable_entries = []
            for key in [k for k in n.incoming_snaps if k[0] <= meta.index]:
                del n.incoming_snaps[key]
        if rd.entries:
            first = rd.entries[0].index
            base = n.durable_snap[0].index if n.durable_snap else 0
            if first <= base:
                self._violation(f"node {n.id} writes entry {first} below its snapshot {base}")
                return
            n.durable_entries = [e for e in n.durable_entries if e.index < first]
            n.durable_entries.extend(rd.entries)
            self._check_persisted(n, rd.entries)
        if rd.hard_state is not None:
            n.durable_hs = rd.hard_state
        n.pending = None
        ReadyDriver(core, _SimIO(self, n)).finish(rd)  # send the rest, apply, advance
        self._maybe_snapshot(n)
        self._after(n)

    def _apply_ready(self, n: _Node, rd: Ready) -> None:
        """The apply step of ``rd`` on node ``n``, checking safety as it goes."""
        core = n.core
        assert core is not None
        if rd.snapshot is not None:
            n.sm_index, n.sm_hash = rd.snapshot.index, n.durable_snap[1] if n.durable_snap else 0
            want = self.hash_at.get(n.sm_index)
            if want is not None and want != n.sm_hash:
                self._violation(f"snapshot at {n.sm_index} installed on {n.id} differs")
        for e in rd.committed:
            if e.index > self.max_commit:
                self.max_commit = e.index
            self._apply(n, e)
        if rd.committed:
            last = rd.committed[-1].index
            if last > self.committed_by_term.get(core.term, 0):
                self.committed_by_term[core.term] = last
        for rs in rd.reads:
            pending = n.reads.pop(rs.request_id, None)
            if pending is None:
                continue
            bound, _ = pending
            self.result.reads += 1
            if rs.index < bound:
                self._violation(
                    f"linearizability: node {n.id} answered read {rs.request_id} at index "
                    f"{rs.index} but {bound} was committed before it was asked"
                )
        for fr in rd.failed_reads:
            n.reads.pop(fr.request_id, None)

    def _maybe_snapshot(self, n: _Node) -> None:
        core = n.core
        assert core is not None
        if n.sm_index - core.offset < self.cfg.snapshot_every or n.sm_index > core.applied:
            return
        meta = core.compact(n.sm_index, self.keep_entries)
        n.durable_snap = (meta, n.sm_hash)
        n.durable_entries = [e for e in n.durable_entries if e.index > core.offset]

    def _send(self, n: _Node, m: Message) -> None:
        if (n.id, m.dst) in self.blocked or m.dst not in self.nodes:
            return
        r = self.rng
        if r.random() < self.drop:
            return
        attach: int | None = None
        if isinstance(m, InstallSnapshot):
            if n.durable_snap is None or n.durable_snap[0].index != m.meta.index:
                return  # the snapshot it describes is gone: lost like a failed stream
            attach = n.durable_snap[1]
        copies = 2 if r.random() < self.dup else 1
        for _ in range(copies):
            delay = r.uniform(0.0002, self.latency) + self.slow.get((n.id, m.dst), 0.0)
            self._push(self.now + delay, 0, (m, attach))

    def _deliver(self, m: Message, attach: int | None) -> None:
        n = self.nodes[m.dst]
        if n.core is None or (m.src, m.dst) in self.blocked:
            return
        if isinstance(m, InstallSnapshot) and attach is not None:
            n.incoming_snaps[(m.meta.index, m.meta.term)] = attach
        n.core.step(m, self.now)
        self._after(n)

    def _timer(self, node_id: NodeId, deadline: float) -> None:
        n = self.nodes[node_id]
        if n.core is None or n.timer_at != deadline:
            return
        n.timer_at = -1.0
        n.core.tick(self.now)
        self._after(n)

    # ------------------------------------------------------------- actions

    def _random_action(self) -> None:
        c, r = self.cfg, self.rng
        x = r.random()
        attacked = self.now < self.attack_until
        if attacked:  # no other fault meanwhile: skip their branches
            x += c.crash_rate + c.partition_rate + c.pause_rate
            x += c.slow_link_rate + c.lease_attack_rate
        for rate, fault in (
            (c.crash_rate, self._crash_one),
            (c.partition_rate, self._partition),
            (c.pause_rate, self._pause_one),
            (c.slow_link_rate, self._slow_link),
            (c.lease_attack_rate, self._attack_lease),
        ):
            if x < rate:
                fault()
                return
            x -= rate
        leaders = [
            n
            for n in self.nodes.values()
            if n.core is not None and n.core.role is Role.LEADER and n.paused_until <= self.now
        ]
        if not leaders:
            return
        n = r.choice(leaders)
        core = n.core
        assert core is not None
        if attacked and not c.propose_rate <= x < c.propose_rate + c.read_rate:
            return  # clients only read while an attack runs
        if x < c.propose_rate:
            self._next_cmd += 1
            with contextlib.suppress(NotLeader, ProposalRejected):
                core.propose(b"c%d" % self._next_cmd, client_id="sim", sequence=self._next_cmd)
        elif x < c.propose_rate + c.read_rate:
            self._read(n, lease=r.random() < 0.5)
        elif x < c.propose_rate + c.read_rate + c.membership_rate:
            self._change_membership(core)
        elif x < c.propose_rate + c.read_rate + c.membership_rate + c.transfer_rate:
            voters = sorted(core.membership.all_voters - {n.id})
            if voters and core.membership.is_voter(n.id):
                with contextlib.suppress(NotLeader, ValueError):
                    core.transfer_leadership(r.choice(voters))
        else:
            return
        self._after(n)

    def _crash_one(self) -> None:
        # Half the restarts are quick (a supervisor restarting the process),
        # often inside the lease of a leader the node acked.
        r = self.rng
        quick = r.random() < 0.5
        self._crash(self.nodes[r.choice(list(self.nodes))], r.uniform(0.005, 0.1 if quick else 1.0))

    def _pause_one(self) -> None:
        r = self.rng
        n = self.nodes[r.choice(list(self.nodes))]
        # Half are short stalls (a GC pause), shorter than a lease.
        pause = r.uniform(0.01, 0.2) if r.random() < 0.5 else r.uniform(0.2, 1.5)
        n.paused_until = max(n.paused_until, self.now + pause)

    def _crash(self, n: _Node, restart_after: float) -> None:
        if n.core is not None:
            n.core = None  # the pending write, if any, is lost
            n.pending = None
            n.timer_at = -1.0
            self._push(self.now + restart_after, 3, n.id)

    def _read(self, n: _Node, *, lease: bool) -> None:
        """A client asks ``n`` for a read; the check bounds it by what was committed."""
        assert n.core is not None
        self._next_read += 1
        n.reads[self._next_read] = (self.max_commit, self._next_read)
        n.core.read(self._next_read, self.now, lease=lease)

    def _at(self, delay: float, action: Callable[[], None]) -> None:
        """Run a scripted fault's next move ``delay`` seconds from now."""
        self._push(self.now + delay, 4, action)

    def _attack_lease(self) -> None:
        """Attack a leader's lease the two ways it was found to break.

        The lease (dissertation 6.4.1) holds because every voter that acked
        the confirming round refuses to elect anyone else for a minimum
        election timeout.  A voter that restarts forgets it; a transfer
        campaign is let through by every voter.  Each attack heals the
        network, holds the other faults off and lets clients only read while
        it runs (a read-mostly spell, where leases matter, and the followers
        stay up to date), and ends with the old leader cut off inside its
        lease, a client still reading from it, while the others can elect
        and commit within that lease unless a guard stops them.
        """
        r = self.rng
        held = [
            n
            for n in self.nodes.values()
            if n.core is not None and n.core.lease_valid() and n.paused_until <= self.now
        ]
        if not held:
            return
        lead = r.choice(held)
        self.blocked = set()
        self.slow = {}
        settle = 3 * self.cfg.heartbeat  # the followers catch up meanwhile
        self.attack_until = self.now + settle + 0.01

        def start() -> None:
            core = lead.core
            if core is None or core.role is not Role.LEADER or lead.paused_until > self.now:
                return
            caught_up = [
                f
                for f, p in sorted(core.progress.items())
                if p.match == core.last_index()
                and core.membership.is_voter(f)
                and self.nodes[f].core is not None
            ]
            if r.random() < 0.5:
                self._restart_inside_a_lease(lead, caught_up)
            else:
                self._late_timeout_now(lead, caught_up)

        self._at(settle, start)

    def _restart_inside_a_lease(self, lead: _Node, caught_up: list[NodeId]) -> None:
        # A minority of up-to-date followers cannot reach the leader: they
        # time out and ask the others, who refuse (they hear the leader).
        # Just before one of them asks again, voters of the leader's quorum
        # (as many as they need) restart quickly and the leader is cut off.
        r, core = self.rng, lead.core
        assert core is not None
        if core.membership.joint:
            return
        followers = sorted(core.membership.voters - {lead.id})
        deaf = r.sample(caught_up, min(len(caught_up), len(followers) // 2))
        rest = [f for f in followers if f not in deaf]
        restarts = len(core.membership.voters) // 2 + 1 - len(deaf)
        if not deaf or len(rest) < restarts:
            return
        self.blocked = {(lead.id, d) for d in deaf} | {(d, lead.id) for d in deaf}
        lo, hi = self.cfg.election_timeout
        wait = hi + r.uniform(0.0, lo)  # every one of them has asked once
        self.attack_until = self.now + wait + 2 * hi

        def restart_and_cut_off() -> None:
            cores = [c for c in (self.nodes[d].core for d in deaf) if c is not None]
            if not cores:
                return
            ahead = min(c.election_deadline for c in cores) - self.now
            if ahead <= 0.01:
                return
            early = r.uniform(0.01, min(ahead, 0.5 * lo))
            self._at(ahead - early, lambda: restart(early))

        def restart(early: float) -> None:
            for victim in r.sample(rest, restarts):
                self._crash(self.nodes[victim], r.uniform(0.002, early))
            self._cut_off(lead, deaf=False)

        self._at(wait, restart_and_cut_off)

    def _late_timeout_now(self, lead: _Node, caught_up: list[NodeId]) -> None:
        # The leader hands over to a caught-up follower over a link that then
        # turns slow: the TimeoutNow arrives after the transfer timed out and
        # the leader renewed its lease.  Just before it arrives, the leader
        # stops hearing the others (it can still send).
        r, core = self.rng, lead.core
        assert core is not None
        if not caught_up:
            return
        target = r.choice(caught_up)
        delay = r.uniform(1.2, 2.0) * self.cfg.election_timeout[1]
        self.slow[(lead.id, target)] = self.slow[(target, lead.id)] = delay
        with contextlib.suppress(NotLeader, ValueError):
            core.transfer_leadership(target)
        self._after(lead)
        self.attack_until = self.now + delay + self.cfg.election_timeout[1]
        self._at(delay - r.uniform(0.0, 0.1), lambda: self._cut_off(lead, deaf=True))

    def _cut_off(self, lead: _Node, *, deaf: bool) -> None:
        """The leader hears nobody (and, unless ``deaf``, reaches nobody); its client reads on."""
        others = [y for y in self.nodes if y != lead.id]
        self.blocked = {(y, lead.id) for y in others}
        if not deaf:
            self.blocked |= {(lead.id, y) for y in others}

        def read() -> None:
            if lead.core is not None and lead.core.role is Role.LEADER:
                self._read(lead, lease=True)

        longer_than_any_lease = self.cfg.election_timeout[0]
        for i in range(1, 30):
            self._at(i * longer_than_any_lease / 30, read)

    def _change_membership(self, core: RaftCore) -> None:
        r = self.rng
        m = core.membership
        voters, learners = set(m.voters), set(m.learners)
        if learners and (r.random() < 0.5 or len(voters) <= 2):
            x = r.choice(sorted(learners))
            learners.discard(x)
            voters.add(x)
        elif len(voters) > 2:
            x = r.choice(sorted(voters))
            voters.discard(x)
            learners.add(x)
        else:
            return
        with contextlib.suppress(NotLeader, ProposalRejected):
            core.change_membership(voters, learners)

    def _partition(self) -> None:
        r = self.rng
        ids = list(self.nodes)
        self.blocked = set()
        kind = r.randrange(5)
        if kind == 0 or len(ids) < 2:
            return  # heal
        if kind == 1:  # split into two sides
            r.shuffle(ids)
            cut = r.randrange(1, len(ids))
            a, b = ids[:cut], ids[cut:]
            self.blocked = {(x, y) for x in a for y in b} | {(y, x) for x in a for y in b}
        elif kind == 2:  # one node can send but not receive (or the reverse)
            x = self._pick()
            if r.random() < 0.5:
                self.blocked = {(y, x) for y in ids if y != x}
            else:
                self.blocked = {(x, y) for y in ids if y != x}
        elif kind == 3:  # a random set of one-way links
            self.blocked = {(x, y) for x in ids for y in ids if x != y and r.random() < 0.3}
        else:  # partial: one node and some of the others cannot talk
            x = self._pick()
            others = [y for y in ids if y != x]
            far = r.sample(others, r.randrange(1, len(others) + 1))
            self.blocked = {(x, y) for y in far} | {(y, x) for y in far}

    def _slow_link(self) -> None:
        r = self.rng
        if r.random() < 1 / 3 or len(self.nodes) < 2:
            self.slow = {}
            return
        a = self._pick()
        b = r.choice([y for y in self.nodes if y != a])
        delay = r.uniform(0.5, 2.0) * self.cfg.election_timeout[1]
        self.slow[(a, b)] = self.slow[(b, a)] = delay

    def _pick(self) -> NodeId:
        """A node to single out: half the time a leader (cut off inside its lease)."""
        r = self.rng
        leaders = [n.id for n in self.nodes.values() if n.core and n.core.role is Role.LEADER]
        if leaders and r.random() < 0.5:
            return r.choice(leaders)
        return r.choice(list(self.nodes))

    # ----------------------------------------------------------------- run

    def _events(self, until_steps: int | None, until_time: float | None) -> Iterator[None]:
        steps = 0
        while self.queue:
            if until_steps is not None and steps >= until_steps:
                return
            at, _, kind, payload = self.queue[0]
            if until_time is not None and at > until_time:
                return
            heapq.heappop(self.queue)
            self.now = max(self.now, at)
            if kind == 4:  # a scripted fault's next move (none once healed)
                if not self.healed:
                    payload()
                steps += 1
                yield
                continue
            target = payload[0].dst if kind == 0 else payload if kind in (1, 3) else payload[0]
            node = self.nodes[target]
            if node.paused_until > self.now and kind != 3:
                self._push(node.paused_until, kind, payload)  # a paused process queues
                continue
            if kind == 0:
                self._deliver(payload[0], payload[1])
            elif kind == 1:
                self._persist(node)
            elif kind == 2:
                self._timer(payload[0], payload[1])
            else:
                if node.core is None:
                    self._start(node)
            steps += 1
            yield

    def run(self) -> SimResult:
        cfg = self.cfg
        for _ in self._events(cfg.steps, None):
            self._random_action()
            if self.result.violations:
                break
        self.result.steps = cfg.steps
        if not self.result.violations:
            self._check_liveness()
        self.result.sim_time = self.now
        self.result.commits = self.max_commit
        return self.result

    def _check_liveness(self) -> None:
        self.blocked = set()
        self.drop = 0.0
        self.dup = 0.0
        self.slow = {}
        self.attack_until = 0.0
        self.healed = True
        for n in self.nodes.values():
            n.paused_until = 0.0
            if n.core is None:
                self._start(n)
        deadline = self.now + self.cfg.liveness_time
        target: tuple[NodeId, int, int] | None = None  # (leader, index, term)
        while self.queue and self.queue[0][0] <= deadline:
            for _ in self._events(50, deadline):
                pass
            if self.result.violations:
                return
            if target is not None:
                node_id, index, term = target
                got = self.committed.get(index)
                if got is not None and got[1] == term:
                    return
                core = self.nodes[node_id].core
                if got is not None or core is None or core.role is not Role.LEADER:
                    target = None  # lost with its leader: propose again
            if target is None:
                for n in self.nodes.values():
                    if n.core is not None and n.core.role is Role.LEADER:
                        try:
                            idx = n.core.propose(b"liveness %.6f" % self.now)
                        except (NotLeader, ProposalRejected):
                            continue
                        target = (n.id, idx, n.core.term)
                        self._after(n)
                        break
        self._violation(
            f"liveness: no leader committed a new proposal within "
            f"{self.cfg.liveness_time}s of healing"
        )


def run_seed(seed: int, cfg: SimConfig | None = None) -> SimResult:
    """Run one seeded simulation."""
    return Simulation(seed, cfg or SimConfig()).run()


class Outcome(Protocol):
    """What a seeded run reports (this simulator's and the whole-node one's)."""

    seed: int
    violations: list[str]


R = TypeVar("R", bound=Outcome)
C = TypeVar("C")


def sweep_runs(
    run: Callable[[int, C], R],
    seeds: range,
    cfg: C,
    on_result: Callable[[R], None] | None = None,
) -> list[R]:
    """``run(seed, cfg)`` for every seed; returns the results that found violations."""
    bad = []
    for s in seeds:
        res = run(s, cfg)
        if on_result is not None:
            on_result(res)
        if res.violations:
            bad.append(res)
    return bad


def first_violating_run(run: Callable[[int, C], R], cfg: C, seeds: range) -> R | None:
    """The first seed's result in ``seeds`` that finds a violation, or None."""
    for s in seeds:
        res = run(s, cfg)
        if res.violations:
            return res
    return None


def sweep(
    seeds: range, cfg: SimConfig, on_result: Callable[[SimResult], None] | None = None
) -> list[SimResult]:
    """Run many seeds; returns the results that found violations."""
    return sweep_runs(run_seed, seeds, cfg, on_result)


def first_violation(cfg: SimConfig, seeds: range) -> SimResult | None:
    """The first seed in ``seeds`` whose run finds a violation, or None."""
    return first_violating_run(run_seed, cfg, seeds)


def add_sweep_arguments(
    p: argparse.ArgumentParser,
    *,
    seeds: int,
    nodes: int,
    steps: int,
    node_choices: tuple[int, ...] | None = None,
    fault_help: str,
) -> None:
    """The options both simulators' command lines take: the seeds, the nodes, the
    steps and the faults (see :func:`parse_sweep_arguments`)."""
    p.add_argument("--seeds", type=int, default=seeds, help="how many seeds to run")
    p.add_argument("--start", type=int, default=0, help="first seed")
    p.add_argument("--seed", type=int, help="replay one seed and print its violations")
    p.add_argument("--nodes", type=int, default=nodes, choices=node_choices)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--fault", action="append", default=[], help=fault_help)


def parse_sweep_arguments(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``p``'s arguments, refusing a count below one."""
    a = p.parse_args(argv)
    if a.nodes < 1 or a.steps < 1 or a.seeds < 1:
        p.error("--nodes, --steps and --seeds must be positive")
    return a


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trioraft.testing.sim",
        description="Run seeded Raft simulations and check safety and liveness.",
    )
    add_sweep_arguments(
        p,
        seeds=200,
        nodes=5,
        steps=SimConfig.steps,
        fault_help="test-only: disable a guard (see trioraft.core.raft.FAULTS)",
    )
    p.add_argument("--learners", type=int, default=0)
    a = parse_sweep_arguments(p, argv)
    cfg = SimConfig(nodes=a.nodes, steps=a.steps, learners=a.learners, faults=frozenset(a.fault))
    return report(
        a,
        cfg,
        run_seed,
        lambda res: (
            f"{res.elections} elections, {res.commits} committed, "
            f"{res.reads} reads, {res.sim_time:.2f}s simulated"
        ),
    )


def report(
    a: argparse.Namespace,
    cfg: C,
    run: Callable[[int, C], R],
    describe: Callable[[R], str],
    replay: Callable[[int], str] | None = None,
) -> int:
    """What both simulators' command lines print: one seed (``a.seed``) and its
    violations, or a sweep of ``a.seeds`` from ``a.start`` with its rate (by the
    wall clock and per CPU second), the violating seeds and, with ``replay``, the
    command that replays each.  A long sweep reports its progress on stderr
    every 100 seeds.  Returns the exit code."""
    if a.seed is not None:
        res = run(a.seed, cfg)
        print(f"seed {a.seed}: {describe(res)}")
        for v in res.violations:
            print("  VIOLATION", v)
        return 1 if res.violations else 0
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    done = 0
    found = 0

    def progress(res: R) -> None:
        nonlocal done, found
        done += 1
        found += bool(res.violations)
        if done % 100 == 0:
            rate = done / (time.perf_counter() - t0)
            print(f"... {done} seeds, {found} violations, {rate:.2f} seeds/s", file=sys.stderr)

    bad = sweep_runs(run, range(a.start, a.start + a.seeds), cfg, progress)
    dt = time.perf_counter() - t0
    # Per CPU second as well: on a shared machine the wall clock also counts
    # the time other processes held the core.
    cpu = max(time.process_time() - cpu0, 1e-9)
    print(
        f"{a.seeds} seeds, {a.nodes} nodes, {a.steps} steps: {a.seeds / dt:.2f} seeds/s "
        f"({a.seeds / cpu:.2f} per CPU second), {len(bad)} violations"
    )
    for res in bad[:20]:
        print(f"  seed {res.seed}: {res.violations[0][:2000]}")
        if replay is not None:
            print(f"    replay: {replay(res.seed)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
