"""The whole-node simulator: real nodes, storage and docstore in one seeded, deterministic run.

Theory of operation
===================

Where ``trioraft.testing.sim`` drives bare cores, this runs N real
:class:`~trioraft.runtime.Node` s (runtime, Raft log, hard state, snapshot
store, :class:`~docstore.state_machine.DocstoreStateMachine`) in one
``trio.run`` on virtual time that jumps to the next deadline whenever no
task can run (as ``MockClock(autojump_threshold=0)`` does), over the memory
transport (the real codec), each on its own simulated disk
(:mod:`trioraft.testing.simfs`), with clients inside the run
(:mod:`trioraft.testing.simclients`).

One seed fixes everything: Trio's scheduler is made deterministic
(``_ALLOW_DETERMINISTIC_SCHEDULING``, its random stream seeded), worker
threads run inline (so simulated time stands still while the disk works),
and every random choice - the network's delays, drops and duplicates, the
cores' election timeouts, incarnations, file names, the faults and the
clients - comes from streams seeded by it.  ``--seed S`` replays a run and
its trace hash shows it is the same run byte for byte (the CLI pins
``PYTHONHASHSEED`` so a replay in another process matches too).

A *step* is one move of the fault driver, a simulated few milliseconds
apart: it may crash a node (power lost: unsynced writes go, the last one may
tear; or a process kill), arm a crash point at one of the node's next
storage operations, make a node's disk fail writes or fsyncs (``EIO``,
``ENOSPC``: the node must stop; a node still running 2 s after a failed
fsync is a violation), partition the network (symmetric, one-way,
isolating), stall a node (its traffic held both ways, then delivered at
once), remove a voter and add it back (learner, then promoted), transfer
leadership, snapshot a node, jump the wall clock a leader stamps entries
with (hours, either way: sessions expire by those stamps), or wipe a node's
data directory (it comes back with a new incarnation; the operator removes
it and adds it back).  The leader records the cluster's settings as
docstore's leader does (``mixed_settings`` configures each node's
``max_sessions`` on its own).  A
dead node is restarted from its disk's image by a supervisor a little
later.  A node that stops without an injected fault is a violation.

After the last step every fault heals, every node runs and is a voter
again, and within ``liveness_time`` a leader must commit a new write that
every node applies (no node stuck), with one digest everywhere.  Then every
node loses power at once and restarts, and must converge to the same
digest again.  Then the checks on what clients saw
(:meth:`Workload.check`: linearizable per key, every counter within its
acknowledged and unknown increments), and no task of a stopped node may be
left running.  Violations stop the run; ``--seed`` replays it.

``python -m trioraft.testing.simnode --seeds N [--start S] [--nodes 3|5]
[--steps K] [--fault F]`` runs a sweep and prints seeds per second.

Why this is one file past 600 lines: :class:`Simulation` is the fault
driver, the supervisor that restarts dead nodes and the checker at once,
and all three draw from the run's seeded streams in one order, which is
what makes a seed replay byte for byte; split, that order would be spread
over several modules.  The simulated disk (``simfs.py``) and the clients
with their checks (``simclients.py``) are already their own modules.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import logging
import math
import os
import random
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.lowlevel
import trio.testing

from docstore.state_machine import DocstoreStateMachine, encode_command
from trioraft.core.raft import FAULTS, RaftConfig
from trioraft.core.types import Entry, NodeId, Role
from trioraft.runtime.config import NodeConfig
from trioraft.runtime.node import Node
from trioraft.testing.cluster import inline_threads
from trioraft.testing.sim import (
    add_sweep_arguments,
    first_violating_run,
    parse_sweep_arguments,
    report,
    sweep_runs,
)
from trioraft.testing.simclients import Workload
from trioraft.testing.simfs import SimFS
from trioraft.testing.simtime import (
    Alarm,
    JumpClock,
    Timers,
    deterministic_scheduling,
    skip_idle_polls,
)
from trioraft.transport.base import Transport, TransportStatistics
from trioraft.transport.memory import MemoryNetwork, MemoryTransport
from trioraft.transport.messages import AnyMessage

__all__ = ["SIM_FAULTS", "SimConfig", "SimResult", "main", "run_seed", "sweep"]

#: Test-only defects of the layers around the core (``--fault``), besides the core's FAULTS.
SIM_FAULTS = frozenset(
    {
        "log_sync_skipped",  # the Raft log acknowledges writes it never fsyncs
        "sessions_ignored",  # docstore applies a retried write again (no session table)
        "settings_local",  # docstore applies with its own settings, not the cluster's record
    }
)

EPOCH = 1_700_000_000.0  # the simulated wall clock's start (seconds)


@dataclass(frozen=True)
class SimConfig:
    """Knobs of one run; the seed picks the rates within them."""

    nodes: int = 3
    steps: int = 2000
    clients: int = 4
    #: Mean simulated seconds between two steps.
    step_time: float = 0.005
    crash_rate: float = 0.003
    crash_point_rate: float = 0.003
    disk_error_rate: float = 0.001
    partition_rate: float = 0.005
    stall_rate: float = 0.003
    membership_rate: float = 0.002
    transfer_rate: float = 0.002
    snapshot_rate: float = 0.003
    clock_jump_rate: float = 0.002
    wipe_rate: float = 0.001
    liveness_time: float = 30.0
    #: Configure each node's ``max_sessions`` on its own (3 or 10,000) instead of
    #: one value for all, as ``docstore serve`` does.  Entries applied before the
    #: first leader's settings record differed between replicas this way, until
    #: they took the built-in settings (docs/architecture.md).
    mixed_settings: bool = False
    #: Clients back off after failed attempts (False: the older schedule, see
    #: :attr:`trioraft.testing.simclients.Workload.backoff`).
    client_backoff: bool = True
    faults: frozenset[str] = frozenset()


@dataclass
class SimResult:
    seed: int
    violations: list[str] = field(default_factory=list)
    trace_hash: str = ""
    sim_time: float = 0.0
    stats: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _SimNodeConfig(NodeConfig):
    faults: frozenset[str] = frozenset()

    def raft_config(self) -> RaftConfig:
        return dataclasses.replace(super().raft_config(), faults=self.faults)


class _SessionlessMachine(DocstoreStateMachine):
    """The ``sessions_ignored`` defect: every write applied as if it had no session."""

    def _apply_one(self, e: Entry, fx: list[list[Any]], changes: list[Any]) -> object:
        if e.client_id and e.sequence:
            e = dataclasses.replace(e, client_id="", sequence=0)
        return super()._apply_one(e, fx, changes)


class _LocalSettingsMachine(DocstoreStateMachine):
    """The ``settings_local`` defect: the recorded settings are ignored at apply."""

    def _adopt_settings(self, record: dict[str, Any] | None) -> None:
        self._settings = record


class _SimNode:
    """One node slot: its disk survives the node's incarnations."""

    def __init__(self, node_id: NodeId, fs: SimFS) -> None:
        self.id = node_id
        self.fs = fs
        self.node: Node | None = None
        self.sm: DocstoreStateMachine | None = None
        self.scope: trio.CancelScope | None = None
        self.done = trio.Event()
        self.expected_death = False
        self.restart_at: float | None = None
        self.stalled_until = 0.0
        self.held_in: list[tuple[NodeId, bytes, list[AnyMessage]]] = []
        self.held_out: list[tuple[NodeId, AnyMessage]] = []
        self.transport: MemoryTransport | None = None
        self.clock_offset = 0.0
        self.sync_failed_at: float | None = None
        self.starts = 0
        self.wipe = False  # start next time on an empty disk

    def stalled(self) -> bool:
        return bool(self.stalled_until) and self.stalled_until > trio.current_time()

    def usable(self) -> Node | None:
        """The running node, if a client can reach it now."""
        n = self.node
        if n is None or n.core is None or n._closed or self.stalled():
            return None
        return n


class _HeldTransport:
    """The node's transport; while the node stalls, what it sends is held."""

    def __init__(self, sn: _SimNode, inner: MemoryTransport) -> None:
        self._sn = sn
        self._inner = inner

    def send(self, dst: NodeId, message: AnyMessage) -> None:
        if self._sn.stalled():
            self._sn.held_out.append((dst, message))
        else:
            self._inner.send(dst, message)

    def set_peers(self, peers: Mapping[NodeId, str]) -> None:
        self._inner.set_peers(peers)

    def statistics(self) -> TransportStatistics:
        return self._inner.statistics()


class _GridNetwork(MemoryNetwork):
    """Deliveries land on a 1 ms grid: messages due in the same millisecond arrive
    together (one wake-up of the network and of each receiver, not one per message),
    still in a random order across the grid.  The delivery task sleeps on the
    simulation's timers (simtime.py), not in a cancel scope."""

    def __init__(self, timers: Timers, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._alarm = Alarm(timers)

    async def _sleep_until(self, deadline: float) -> None:
        await self._alarm.sleep_until(deadline)

    def _wake_by(self, at: float) -> None:
        self._alarm.move(at)

    def _delay(self) -> float:
        now = trio.current_time()
        return math.ceil((now + super()._delay()) * 1000) / 1000 - now


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


class Simulation:
    """One seeded run; ``run_seed`` drives it."""

    def __init__(self, seed: int, cfg: SimConfig) -> None:
        self.seed = seed
        self.cfg = cfg
        unknown = cfg.faults - FAULTS - SIM_FAULTS
        if unknown:
            raise ValueError(f"unknown fault switches {sorted(unknown)}")
        self.rng = random.Random(seed)
        r = self.rng
        self.result = SimResult(seed)
        self._trace: list[str] = []
        self.nodes: dict[NodeId, _SimNode] = {}
        for i in range(1, cfg.nodes + 1):
            fs = SimFS(random.Random(r.random()))
            if "log_sync_skipped" in cfg.faults:
                fs.unsynced = frozenset({f"/n{i}/log"})
            self.nodes[i] = _SimNode(i, fs)
        # The seed's own character.
        self.drop = r.uniform(0, 0.05)
        self.dup = r.uniform(0, 0.03)
        self.max_delay = r.uniform(0.001, 0.02)
        self.snapshot_entries = r.choice((15, 40, 200))
        self.keep_entries = r.choice((0, 5, 50))
        # 3 sessions or 10,000 (eviction matters); the first leader records its
        # settings, and every replica must apply with them from then on.
        one = r.choice((3, 10_000))
        self.max_sessions = {
            i: r.choice((3, 10_000)) if cfg.mixed_settings else one for i in self.nodes
        }
        self.workload = Workload(self, clients=cfg.clients, backoff=cfg.client_backoff)
        self.net: MemoryNetwork | None = None
        self.heal_at: float | None = None
        self._nursery: trio.Nursery | None = None
        #: The simulation's own sleeps (clients, fault driver, network): see simtime.py.
        self.timers = Timers()
        #: The fault driver's sleep (:meth:`_due` brings its deadline forward).
        self._wait = Alarm(self.timers)

    # ---------------------------------------------------------------- log

    def note(self, what: str) -> None:
        self._trace.append(f"{trio.current_time():.6f} {what}")

    def violation(self, what: str) -> None:
        self.result.violations.append(f"t={trio.current_time():.3f} {what}")
        self.note("VIOLATION " + what)
        self._due(trio.current_time())  # the fault phase ends

    def _count(self, what: str) -> None:
        self.workload._count(what)

    # -------------------------------------------------------------- nodes

    def _config(self, sn: _SimNode) -> _SimNodeConfig:
        return _SimNodeConfig(
            node_id=sn.id,
            data_dir=f"/n{sn.id}",
            listen=f"mem:{sn.id}",
            peers={n: f"mem:{n}" for n in self.nodes if n != sn.id},
            election_timeout_min=0.3,
            election_timeout_max=0.6,
            heartbeat_interval=0.05,
            proposal_timeout=3.0,
            snapshot_entries=self.snapshot_entries,
            snapshot_keep_entries=self.keep_entries,
            snapshot_chunk_bytes=4096,
            # The node picks inline or threaded writes by how long recent
            # writes took in real time; the run must not depend on the host.
            inline_write_seconds=math.inf,
            faults=self.cfg.faults & FAULTS,
        )

    def _transport(self, sn: _SimNode) -> Callable[[Node], AbstractAsyncContextManager[Transport]]:
        net = self.net
        assert net is not None

        @asynccontextmanager
        async def open_(node: Node) -> AsyncIterator[Transport]:
            async with net.open_transport(
                node.id,
                functools.partial(self._incoming, sn, node),
                incarnation=bytes.fromhex(node.incarnation),
                on_peer=functools.partial(self._on_peer, sn, node),
            ) as t:
                sn.transport = t
                yield _HeldTransport(sn, t)

        return open_

    def _on_peer(self, sn: _SimNode, node: Node, src: NodeId, incarnation: bytes) -> None:
        if sn.stalled():
            sn.held_in.append((src, incarnation, []))
        else:
            node._on_peer(src, incarnation)

    def _incoming(self, sn: _SimNode, node: Node, src: NodeId, messages: list[Any]) -> None:
        if sn.stalled():
            sn.held_in.append((src, b"", messages))
        else:
            node._on_messages(src, messages)

    def _release(self, sn: _SimNode) -> None:
        """A stall ends: what was held in both directions goes through at once."""
        sn.stalled_until = 0.0
        held_in, held_out, sn.held_in, sn.held_out = sn.held_in, sn.held_out, [], []
        node, t = sn.node, sn.transport
        if node is None or node._closed:
            return
        for src, inc, messages in held_in:
            if inc:
                node._on_peer(src, inc)
            if messages:
                node._on_messages(src, messages)
        if t is not None:
            for dst, m in held_out:
                t.send(dst, m)

    def _start(self, sn: _SimNode) -> None:
        assert self._nursery is not None and sn.node is None
        if sn.fs.dead:
            assert sn.fs.image is not None
            fs = sn.fs.image
            fs.unsynced = sn.fs.unsynced
            sn.fs = fs
        r = self.rng
        if sn.wipe:
            fs = SimFS(random.Random(r.random()))
            fs.unsynced = sn.fs.unsynced
            sn.fs, sn.wipe = fs, False
            self.note(f"node {sn.id} starts on an empty disk")
        sn.fs.on_power_loss = functools.partial(self._power_lost, sn)
        sn.fs.on_sync_failed = functools.partial(self._sync_failed, sn)
        sn.fs.error_rate = 0.0
        cls = DocstoreStateMachine
        if "sessions_ignored" in self.cfg.faults:
            cls = _SessionlessMachine
        elif "settings_local" in self.cfg.faults:
            cls = _LocalSettingsMachine
        sm = cls(f"/n{sn.id}/docstore", fs=sn.fs, max_sessions=self.max_sessions[sn.id])
        node = Node(self._config(sn), sm, self._transport(sn))
        node.fs = sn.fs
        node.random = random.Random(r.random())
        node.randbytes = random.Random(r.random()).randbytes
        node.wall_clock = lambda: EPOCH + trio.current_time() + sn.clock_offset
        sn.node, sn.sm = node, sm
        sn.expected_death = False
        sn.restart_at = None
        sn.sync_failed_at = None
        sn.stalled_until = 0.0
        sn.held_in, sn.held_out = [], []
        sn.done = trio.Event()
        sn.starts += 1
        self.note(f"start node {sn.id} ({sn.starts})")
        self._nursery.start_soon(self._serve, sn, node)

    async def _serve(self, sn: _SimNode, node: Node) -> None:
        try:
            with trio.CancelScope() as scope:
                sn.scope = scope
                await node._run()
        except BaseException as exc:
            leaves = _leaves(exc)
            if all(isinstance(e, trio.Cancelled) for e in leaves):
                raise
            expected = sn.expected_death or sn.fs.dead or bool(sn.fs.injected)
            what = ", ".join(repr(e)[:200] for e in leaves if not isinstance(e, trio.Cancelled))
            self.note(f"node {sn.id} stopped: {what}")
            if not expected:
                self.violation(f"node {sn.id} stopped without an injected fault: {what}")
        finally:
            if not sn.fs.dead:
                sn.fs.power_off("process" if self.rng.random() < 0.5 else "power")
            sn.node = None
            sn.scope = None
            sn.transport = None
            sn.restart_at = trio.current_time() + self.rng.uniform(0.01, 1.0)
            self._due(sn.restart_at)
            sn.done.set()

    def _sync_failed(self, sn: _SimNode, fs: SimFS) -> None:
        """An injected fsync failure: the node must stop within 2 s."""
        if fs is sn.fs and sn.sync_failed_at is None:
            sn.sync_failed_at = trio.current_time()
            self._due(sn.sync_failed_at + 2)

    def _power_lost(self, sn: _SimNode, fs: SimFS) -> None:
        """A crash point fired inside one of the node's storage operations."""
        if fs is sn.fs and sn.scope is not None:
            self.note(f"node {sn.id} lost power at storage operation {fs.ops}")
            sn.expected_death = True
            sn.scope.cancel()

    def _kill(self, sn: _SimNode, kind: str) -> None:
        if sn.node is None or sn.scope is None or sn.fs.dead:
            return
        self.note(f"kill node {sn.id} ({kind})")
        sn.expected_death = True
        sn.fs.power_off(kind)
        sn.scope.cancel()

    def _leader(self) -> _SimNode | None:
        """The reachable leader of the highest term, if any."""
        best, term = None, -1
        for sn in self.nodes.values():
            n = sn.usable()
            core = n.core if n is not None else None
            if core is not None and core.role is Role.LEADER and core.term > term:
                best, term = sn, core.term
        return best

    # -------------------------------------------------------------- steps

    async def _drive(self) -> None:
        """The fault driver: ``cfg.steps`` moves, ``cfg.step_time`` apart on average.

        Most moves do nothing, so the driver draws moves ahead and sleeps until
        the next one that acts, waking meanwhile only for what falls due (a
        restart, the end of a stall or a partition, a failed fsync's 2 s): a
        wake-up for every move was a sixth of a run's task steps.
        """
        c, r = self.cfg, self.rng
        ids = sorted(self.nodes)
        actions = (
            (c.crash_rate, self._crash),
            (c.crash_point_rate, self._crash_point),
            (c.disk_error_rate, self._disk_errors),
            (c.partition_rate, self._partition),
            (c.stall_rate, self._stall),
            (c.membership_rate, self._membership),
            (c.transfer_rate, self._transfer),
            (c.snapshot_rate, self._snapshot),
            (c.clock_jump_rate, self._clock_jump),
            (c.wipe_rate, self._wipe),
        )
        acting = sum(rate for rate, _ in actions)
        at = trio.current_time()
        for _ in range(c.steps):
            at += r.expovariate(1 / c.step_time)
            x = r.random()
            sn = self.nodes[r.choice(ids)]
            if x >= acting:
                continue
            for rate, action in actions:
                if x < rate:
                    await self._until(at)
                    if self.result.violations:
                        return
                    action(sn)
                    break
                x -= rate
        await self._until(at)

    async def _until(self, at: float) -> None:
        """Sleep until ``at``, seeing to what falls due meanwhile; early on a violation."""
        while True:
            self._housekeeping()
            if self.result.violations or trio.current_time() >= at:
                return
            await self._wait.sleep_until(min(at, self._next_due()))

    def _due(self, when: float) -> None:
        """Wake the driver by ``when`` (something falls due then)."""
        self._wait.move(when)

    def _next_due(self) -> float:
        due = [] if self.heal_at is None else [self.heal_at]
        for sn in self.nodes.values():
            if sn.node is None and sn.restart_at is not None:
                due.append(sn.restart_at)
            if sn.stalled_until:
                due.append(sn.stalled_until)
            if sn.sync_failed_at is not None and sn.node is not None:
                due.append(sn.sync_failed_at + 2)
        return min(due, default=math.inf)

    def _housekeeping(self) -> None:
        now = trio.current_time()
        for sn in self.nodes.values():
            if sn.node is None and sn.restart_at is not None and now >= sn.restart_at:
                self._start(sn)
            if sn.stalled_until and now >= sn.stalled_until:
                self._release(sn)
            if (
                sn.sync_failed_at is not None
                and sn.node is not None
                and now - sn.sync_failed_at >= 2
            ):
                self.violation(f"node {sn.id} still runs 2 s after a failed fsync")
                sn.sync_failed_at = None
        if self.heal_at is not None and now >= self.heal_at:
            assert self.net is not None
            self.net.heal()
            self.heal_at = None
            self.note("partition heals")

    def _crash(self, sn: _SimNode) -> None:
        self._kill(sn, "power" if self.rng.random() < 0.7 else "process")

    def _settled(self) -> bool:
        """Every node runs, and every node holds all of them as voters with the
        incarnations they run from (no change or repair under way)."""
        running = {s.id: s.node for s in self.nodes.values()}
        incarnations = {i: n.incarnation for i, n in running.items() if n is not None}
        for n in running.values():
            if n is None or n.core is None or len(incarnations) < len(running):
                return False
            m = n.core.membership
            if m.joint or m.voters != set(running):
                return False
            if any(m.incarnation_of(i) != inc for i, inc in incarnations.items()):
                return False
        return True

    def _wipe(self, sn: _SimNode) -> None:
        """Lose the node's data directory; the operator removes it and adds it back.

        Only when :meth:`_settled`: a voter wiped before its incarnation record
        reached the others is not detected (a documented limit of the
        incarnation rule), and a wiped voter of two leaves no quorum (Raft
        cannot go on without an operator's disaster recovery); neither case
        is simulated.
        """
        if not self._settled():
            return
        self.note(f"wipe node {sn.id}")
        sn.wipe = True
        self._kill(sn, "process")

    def _crash_point(self, sn: _SimNode) -> None:
        if sn.node is not None and not sn.fs.dead:
            n = self.rng.randint(1, 40)
            self.note(f"node {sn.id}: power loss at its storage operation +{n}")
            sn.fs.crash_after(n)

    def _disk_errors(self, sn: _SimNode) -> None:
        if sn.node is not None and not sn.fs.dead:
            self.note(f"node {sn.id}: disk errors")
            sn.fs.error_rate = self.rng.choice((0.01, 0.05, 0.3))

    def _partition(self, sn: _SimNode) -> None:
        net, r = self.net, self.rng
        assert net is not None
        net.heal()
        self.heal_at = trio.current_time() + r.uniform(0.1, 2.0)
        kind = r.randrange(4)
        ids = sorted(self.nodes)
        if kind == 0:
            self.note("heal")
        elif kind == 1:
            self.note(f"isolate {sn.id}")
            net.isolate(sn.id)
        elif kind == 2:
            others = [i for i in ids if i != sn.id]
            far = r.sample(others, r.randint(1, len(others)))
            self.note(f"one way: {sn.id} to {far}" if r.random() < 0.5 else f"from {far}")
            for f in far:
                net.block(sn.id, f)
        else:
            r.shuffle(ids)
            cut = r.randrange(1, len(ids))
            self.note(f"partition {ids[:cut]} | {ids[cut:]}")
            net.partition(ids[:cut], ids[cut:])

    def _stall(self, sn: _SimNode) -> None:
        if sn.node is not None and not sn.stalled():
            r = self.rng
            d = r.uniform(0.05, 0.4) if r.random() < 0.7 else r.uniform(0.4, 1.5)
            self.note(f"stall node {sn.id} for {d:.3f}s")
            sn.stalled_until = trio.current_time() + d

    def _operator(self, what: str, fn: Callable[[], Any]) -> None:
        """Run an operator's call in the background, bounded; its failure is fine."""
        assert self._nursery is not None

        async def go() -> None:
            with trio.move_on_after(5):
                try:
                    await fn()
                    self.note(f"{what}: done")
                except Exception as exc:  # the call may fail in many ways under faults
                    self.note(f"{what}: {type(exc).__name__}")

        self.note(what)
        self._nursery.start_soon(go)

    def _membership(self, _: _SimNode) -> None:
        lead = self._leader()
        if lead is None or lead.node is None or lead.node.core is None:
            return
        node, core = lead.node, lead.node.core
        m = core.membership
        if m.joint:
            return
        missing = [i for i in sorted(self.nodes) if i not in m.members]
        wiped = [i for i in sorted(m.members) if core.incarnation_conflict(i) is not None]
        if wiped and wiped[0] != lead.id:
            x = wiped[0]
            self._operator(f"remove wiped {x}", functools.partial(node.remove_node, x))
        elif m.learners:
            x = min(m.learners)
            self._operator(f"promote {x}", functools.partial(node.promote, x))
        elif missing:
            x = missing[0]
            self._operator(f"add learner {x}", functools.partial(node.add_learner, x, f"mem:{x}"))
        elif len(m.voters) > 2 and self._settled():
            x = self.rng.choice(sorted(m.voters))
            self._operator(f"remove {x}", functools.partial(node.remove_node, x))

    def _transfer(self, _: _SimNode) -> None:
        lead = self._leader()
        if lead is not None and lead.node is not None:
            self._operator("transfer", lead.node.transfer_leadership)

    def _snapshot(self, sn: _SimNode) -> None:
        node = sn.usable()
        if node is not None:
            self._operator(f"snapshot {sn.id}", node.snapshot)

    def _clock_jump(self, _: _SimNode) -> None:
        lead = self._leader()
        if lead is not None:
            jump = self.rng.choice((-1, 1)) * self.rng.uniform(1, 7200)
            lead.clock_offset += jump
            self.note(f"clock of node {lead.id} jumps {jump:+.0f}s")

    # --------------------------------------------------------------- run

    async def main(self) -> None:
        skip_idle_polls()
        r = self.rng
        net = _GridNetwork(
            self.timers,
            seed=r.randrange(2**32),
            drop_rate=self.drop,
            duplicate_rate=self.dup,
            delay=(0.0002, self.max_delay),
        )
        self.net = net
        async with net, trio.open_nursery() as nursery:
            self._nursery = nursery
            for sn in self.nodes.values():
                self._start(sn)
            clients = trio.CancelScope()
            nursery.start_soon(self._clients, clients)
            duties = trio.CancelScope()
            nursery.start_soon(self._leader_duties, duties)
            await self._drive()
            clients.cancel()
            duties.cancel()
            if not self.result.violations:
                await self._final_checks()
            for sn in self.nodes.values():
                self._kill(sn, "process")
            for sn in self.nodes.values():
                if sn.node is not None:
                    await sn.done.wait()
            self._check_no_leaks()
            nursery.cancel_scope.cancel()
        self.result.sim_time = trio.current_time()

    async def _leader_duties(self, scope: trio.CancelScope) -> None:
        """What docstore's leader does on its own: record the cluster's settings."""
        with scope:
            while True:
                await self.timers.sleep(0.5)
                lead = self._leader()
                if lead is None or lead.node is None or lead.sm is None:
                    continue
                if not lead.sm.settings_recorded:
                    cmd = encode_command(lead.sm.settings_command())
                    with trio.move_on_after(2):
                        try:
                            await lead.node.propose(cmd)
                            self.note(f"node {lead.id} recorded the settings")
                        except Exception as exc:  # lost leadership...: the next round retries
                            self.note(f"settings: {type(exc).__name__}")

    async def _clients(self, scope: trio.CancelScope) -> None:
        with scope:
            await self.workload.run()

    def _heal(self) -> None:
        net = self.net
        assert net is not None
        net.heal()
        net.drop_rate = net.duplicate_rate = 0.0
        for sn in self.nodes.values():
            if sn.stalled_until:
                self._release(sn)
            sn.fs.error_rate = 0.0
            sn.fs._crash_at = None
            if sn.node is None:
                self._start(sn)
        self.note("healed")

    async def _final_checks(self) -> None:
        self._heal()
        converged = await self._converge("after healing")
        if converged is None:
            return
        index, first = converged
        self.note("every node loses power")
        for sn in self.nodes.values():
            self._kill(sn, "power")
        for sn in self.nodes.values():
            await sn.done.wait()
        for sn in self.nodes.values():
            self._start(sn)
        again = await self._converge("after every node restarted", index)
        if again is None:
            return
        if again[1] != first:
            self.violation(
                f"the digest at index {index} changed across a restart of every node: "
                f"{first[:16]}, then {again[1][:16]}"
            )
        counters = await self._counters()
        for v in self.workload.check(counters):
            self.violation(v)

    async def _converge(self, when: str, known: int = 0) -> tuple[int, str] | None:
        """Wait for a leader to commit a new write that every node applies: (its index, the
        common digest).  With ``known``, wait for index ``known`` instead, writing nothing."""
        deadline = trio.current_time() + self.cfg.liveness_time
        mark = 0
        with trio.move_on_at(deadline):
            while True:
                await self.timers.sleep(0.05)
                for sn in self.nodes.values():
                    if sn.node is None and sn.done.is_set():
                        self._start(sn)
                lead = self._leader()
                if lead is None or lead.node is None or lead.node.core is None:
                    continue
                node, m = lead.node, lead.node.core.membership
                if m.joint:
                    continue
                missing = [i for i in sorted(self.nodes) if i not in m.voters]
                core = lead.node.core
                wiped = [i for i in sorted(m.members) if core.incarnation_conflict(i) is not None]
                if missing or wiped:
                    x = (wiped or missing)[0]
                    with trio.move_on_after(3):
                        try:
                            if x in wiped:
                                await node.remove_node(x)
                            elif x in m.learners:
                                await node.promote(x)
                            else:
                                await node.add_learner(x, f"mem:{x}")
                        except Exception as exc:  # under way, not caught up: again
                            self.note(f"re-add {x}: {type(exc).__name__}")
                    continue
                if known:
                    if node.core is None or node.core.commit < known:
                        continue
                    index = known
                else:
                    mark += 1
                    try:
                        with trio.fail_after(3):
                            res = await node.propose(
                                encode_command(
                                    {"op": "put", "coll": "sim", "key": "mark", "doc": {"n": mark}}
                                )
                            )
                    except Exception as exc:  # lost leadership meanwhile: again
                        self.note(f"mark {mark}: {type(exc).__name__}")
                        continue
                    if not isinstance(res, dict) or not res.get("ok"):
                        self.violation(f"the liveness write answered {res!r}")
                        return None
                    index = int(res["rev"])
                with trio.move_on_after(5):
                    for sn in self.nodes.values():
                        # Polled: the node may restart meanwhile (a new Node object).
                        while sn.node is None or sn.node._applied < index:
                            await self.timers.sleep(0.02)
                    digests = set()
                    for sn in self.nodes.values():
                        assert sn.node is not None and sn.sm is not None
                        digests.add(sn.sm.digest())
                    if len(digests) > 1:
                        self.violation(f"replicas differ at index {index} {when}: {digests}")
                        return None
                    digest = digests.pop()
                    self.note(f"converged {when} at {index}: {digest[:16]}")
                    return index, digest
        states = []
        for sn in self.nodes.values():
            n = sn.node
            if n is None or n.core is None:
                states.append(f"node {sn.id} down")
            else:
                c = n.core
                states.append(
                    f"node {sn.id} {c.role.value} term {c.term} commit {c.commit} "
                    f"applied {n._applied} voters {sorted(c.membership.voters)}"
                )
        self.violation(
            f"liveness {when}: no write committed and applied everywhere within "
            f"{self.cfg.liveness_time}s ({'; '.join(states)})"
        )
        return None

    async def _counters(self) -> dict[str, int]:
        out = {}
        sn = next(iter(self.nodes.values()))
        assert sn.node is not None
        for c in self.workload.counts:
            res = await sn.node.read({"op": "get", "coll": "n", "key": c}, consistency="local")
            doc = res.get("value") if isinstance(res, dict) else None
            out[c] = doc.get("n", 0) if isinstance(doc, dict) else 0
        return out

    def _check_no_leaks(self) -> None:
        """No task of a stopped node (runtime or docstore code) is left running."""
        left = []
        root = trio.lowlevel.current_root_task()
        stack = [root] if root is not None else []
        while stack:
            task = stack.pop()
            code = getattr(task.coro, "cr_code", None)
            name = code.co_filename if code is not None else ""
            if "runtime" in name or "docstore" in name:
                left.append(task.name)
            for nursery in task.child_nurseries:
                stack.extend(nursery.child_tasks)
        if left:
            self.violation(f"tasks left after every node stopped: {sorted(left)}")

    def trace_hash(self) -> str:
        return hashlib.sha256("\n".join(self._trace).encode()).hexdigest()


def run_seed(
    seed: int, cfg: SimConfig | None = None, *, trace: list[str] | None = None
) -> SimResult:
    """Run one seed; the same seed gives the same run (and trace hash)."""
    sim = Simulation(seed, cfg or SimConfig())
    try:
        with deterministic_scheduling(seed), inline_threads():
            trio.run(sim.main, clock=JumpClock(sim.timers))
    except Exception as exc:  # the run itself broke (e.g. a peer sent what no codec decodes)
        leaves = ", ".join(repr(e)[:300] for e in _leaves(exc))
        sim.result.violations.append(f"the simulation stopped: {leaves}")
    res = sim.result
    res.trace_hash = sim.trace_hash()
    res.stats = dict(sorted(sim.workload.stats.items()))
    if trace is not None:
        trace.extend(sim._trace)
    return res


#: ``sweep(seeds, cfg)``: run many seeds; the results that found violations.
sweep = functools.partial(sweep_runs, run_seed)
#: ``first_violation(cfg, seeds)``: the first seed's result that finds a violation, or None.
first_violation = functools.partial(first_violating_run, run_seed)


def _replay_command(seed: int, a: argparse.Namespace) -> str:
    faults = "".join(f" --fault {f}" for f in a.fault)
    if a.mixed_settings:
        faults += " --mixed-settings"
    return (
        f"python -m trioraft.testing.simnode --seed {seed} --nodes {a.nodes} "
        f"--steps {a.steps}{faults}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trioraft.testing.simnode",
        description="Run seeded whole-node simulations (runtime, storage, docstore).",
    )
    add_sweep_arguments(
        p,
        seeds=100,
        nodes=3,
        steps=SimConfig.steps,
        node_choices=(3, 5),
        fault_help="test-only: re-introduce a defect (trioraft.core.raft.FAULTS or SIM_FAULTS)",
    )
    p.add_argument("--trace", action="store_true", help="with --seed: print the run's trace")
    p.add_argument(
        "--mixed-settings", action="store_true", help="configure each node's max_sessions alone"
    )
    a = parse_sweep_arguments(p, argv)
    cfg = SimConfig(
        nodes=a.nodes, steps=a.steps, faults=frozenset(a.fault), mixed_settings=a.mixed_settings
    )
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # nodes log every injected fault
    try:
        return _run(a, cfg)
    finally:
        logging.disable(previous)  # main() also runs inside test processes


def _run(a: argparse.Namespace, cfg: SimConfig) -> int:
    def run(seed: int, cfg: SimConfig) -> SimResult:
        trace: list[str] = []
        res = run_seed(seed, cfg, trace=trace if a.trace else None)
        if a.trace:
            print("\n".join(trace))
        return res

    return report(
        a,
        cfg,
        run,
        lambda res: f"{res.sim_time:.1f}s simulated, trace {res.trace_hash[:16]}, {res.stats}",
        lambda seed: _replay_command(seed, a),
    )


def _pin_hash_seed() -> None:
    """Re-run under PYTHONHASHSEED=0, so a seed replays the same in any process."""
    if os.environ.get("PYTHONHASHSEED") != "0":
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        os.execve(
            sys.executable, [sys.executable, "-m", "trioraft.testing.simnode", *sys.argv[1:]], env
        )


if __name__ == "__main__":
    _pin_hash_seed()
    sys.exit(main())
