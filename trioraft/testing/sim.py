"""A deterministic simulator of Raft cores over a faulty network.

Theory of operation
===================

One seed fixes everything: the network's latencies, drops, duplicates and
reorderings, the partitions (asymmetric ones too), crashes and restarts,
pauses (a SIGSTOPped process), client proposals and reads, membership
changes, leadership transfers and snapshots.  Events sit in one priority
queue ordered by simulated time; a *step* handles one event.  Nothing reads
a real clock, so a seed replays exactly.

Each node follows the runtime's contract: it takes a Ready, the write
reaches "disk" after a simulated latency (a crash before then loses it:
unsynced writes are lost), and only then are its messages sent, its
committed entries applied and ``advance`` called.  The state machine is a
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
from typing import Any

from trioraft.core.errors import NotLeader, ProposalRejected
from trioraft.core.raft import RaftConfig, RaftCore
from trioraft.core.types import (
    AppendEntries,
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
        if n.pending is None and core.has_ready():
            rd = n.pending = core.ready()
            if rd.hard_state is None and rd.snapshot is None:
                # The contract's one exception: a leader's appends may leave
                # before its own write (as the runtime does).
                for m in rd.messages:
                    if isinstance(m, AppendEntries):
                        self._send(n, m)
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
        # send (a leader's appends may have left already, see _after)
        early = rd.hard_state is None and rd.snapshot is None
        for m in rd.messages:
            if not (early and isinstance(m, AppendEntries)):
                self._send(n, m)
        # apply
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
        n.pending = None
        core.advance(rd)
        self._maybe_snapshot(n)
        self._after(n)

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
            self._push(self.now + r.uniform(0.0002, self.latency), 0, (m, attach))

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
        ids = list(self.nodes)
        if x < c.crash_rate:
            n = self.nodes[r.choice(ids)]
            if n.core is not None:
                n.core = None  # the pending write, if any, is lost
                n.pending = None
                n.timer_at = -1.0
                self._push(self.now + r.uniform(0.05, 1.0), 3, n.id)
            return
        x -= c.crash_rate
        if x < c.partition_rate:
            self._partition()
            return
        x -= c.partition_rate
        if x < c.pause_rate:
            n = self.nodes[r.choice(ids)]
            n.paused_until = max(n.paused_until, self.now + r.uniform(0.2, 1.5))
            return
        x -= c.pause_rate
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
        if x < c.propose_rate:
            self._next_cmd += 1
            with contextlib.suppress(NotLeader, ProposalRejected):
                core.propose(b"c%d" % self._next_cmd, client_id="sim", sequence=self._next_cmd)
        elif x < c.propose_rate + c.read_rate:
            self._next_read += 1
            n.reads[self._next_read] = (self.max_commit, self._next_read)
            core.read(self._next_read, self.now, lease=r.random() < 0.5)
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
        kind = r.randrange(4)
        if kind == 0 or len(ids) < 2:
            return  # heal
        if kind == 1:  # split into two sides
            r.shuffle(ids)
            cut = r.randrange(1, len(ids))
            a, b = ids[:cut], ids[cut:]
            self.blocked = {(x, y) for x in a for y in b} | {(y, x) for x in a for y in b}
        elif kind == 2:  # one node can send but not receive (or the reverse)
            x = r.choice(ids)
            if r.random() < 0.5:
                self.blocked = {(y, x) for y in ids if y != x}
            else:
                self.blocked = {(x, y) for y in ids if y != x}
        else:  # a random set of one-way links
            self.blocked = {(x, y) for x in ids for y in ids if x != y and r.random() < 0.3}

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


def sweep(
    seeds: range, cfg: SimConfig, on_result: Callable[[SimResult], None] | None = None
) -> list[SimResult]:
    """Run many seeds; returns the results that found violations."""
    bad = []
    for s in seeds:
        res = run_seed(s, cfg)
        if on_result is not None:
            on_result(res)
        if res.violations:
            bad.append(res)
    return bad


def first_violation(cfg: SimConfig, seeds: range) -> SimResult | None:
    """The first seed in ``seeds`` whose run finds a violation, or None."""
    for s in seeds:
        res = run_seed(s, cfg)
        if res.violations:
            return res
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trioraft.testing.sim",
        description="Run seeded Raft simulations and check safety and liveness.",
    )
    p.add_argument("--seeds", type=int, default=200, help="how many seeds to run")
    p.add_argument("--start", type=int, default=0, help="first seed")
    p.add_argument("--seed", type=int, help="replay one seed and print its violations")
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--learners", type=int, default=0)
    p.add_argument("--steps", type=int, default=SimConfig.steps)
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        help="test-only: disable a guard (see trioraft.core.raft.FAULTS)",
    )
    a = p.parse_args(argv)
    if a.nodes < 1 or a.steps < 1 or a.seeds < 1:
        p.error("--nodes, --steps and --seeds must be positive")
    cfg = SimConfig(nodes=a.nodes, steps=a.steps, learners=a.learners, faults=frozenset(a.fault))
    if a.seed is not None:
        res = run_seed(a.seed, cfg)
        print(
            f"seed {a.seed}: {res.elections} elections, {res.commits} committed, "
            f"{res.reads} reads, {res.sim_time:.2f}s simulated"
        )
        for v in res.violations:
            print("  VIOLATION", v)
        return 1 if res.violations else 0
    t0 = time.perf_counter()
    bad = sweep(range(a.start, a.start + a.seeds), cfg)
    dt = time.perf_counter() - t0
    print(
        f"{a.seeds} seeds, {a.nodes} nodes, {a.steps} steps: {a.seeds / dt:.1f} seeds/s, "
        f"{len(bad)} violations"
    )
    for res in bad[:20]:
        print(f"  seed {res.seed}: {res.violations[0]}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
