"""A chaos run: node processes, a proxy on every link, a nemesis, clients and the checks.

Theory of operation
===================

``nodes`` OS processes each run one node of the system under test
(:class:`System`; by default the KV machine of :mod:`trioraft.kv`, see
:mod:`trioraft.testing.chaos.kv`).  The first ``voters`` are the bootstrap
voters; the others start with ``join=True`` and are added as learners once a
leader is up.  Every ordered pair of nodes ``i -> j`` has its own TCP proxy
(:mod:`.proxy`), and node ``i`` dials ``j`` through it (:mod:`.routes`).

The *nemesis* (a seeded ``random.Random``; the seed is printed first) picks a
fault every few seconds - partition into random halves, one-way block,
isolate the leader, delays, flaky links, SIGKILL of a leader or follower
(restarted at the heal), SIGSTOP/SIGCONT of a leader or follower, leadership
transfer, membership change (add learner, promote, demote, never below three
voters), a jump of a node's wall clock by 30 s to 3 h either way (with
libfaketime, :mod:`.process`), or two of these overlapping (a partition
while a node is paused, a kill while a membership change is in flight, ...)
- holds it, heals everything (clocks back to true time), and rests before
the next.

*Clients* (``workers`` trio tasks of the system's, :meth:`System.client`)
record each call in a :class:`~trioraft.testing.linearizability.History`
of registers: ``ok``, ``fail`` (it did not take effect) or ``info``
(unknown).

At the end everything is healed, restarted and resumed, every node is made a
member again, and the run must show: (1) the history is linearizable; (2) no
acknowledged write is lost: the history plus one final linearizable read
per key (:meth:`System.final_reads`) is still linearizable; (3) every
replica, once all have applied the same index, answers the same ``digest``;
(4) the system's own checks (:meth:`System.check`) pass.

The system's client service answers the admin kinds of docstore's service
(docs/protocol.md): ``status`` (``role``, ``term``, ``voters``,
``learners``), ``digest`` (equal on replicas that applied the same
entries), ``add_learner`` ``{"id", "address"}``, ``promote`` ``{"id"}``,
``remove_node`` ``{"id"}``, ``transfer_leader`` ``{"target"}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import pathlib
import random
import socket
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from trioraft.testing.chaos.process import NodeProcess, NodeSpec, find_libfaketime
from trioraft.testing.chaos.proxy import HOST, ProxyNet
from trioraft.testing.chaos.report import ChaosReport
from trioraft.testing.chaos.router import ClientError, Router
from trioraft.testing.chaos.routes import ROUTE_HOST
from trioraft.testing.linearizability import History, check
from trioraft.transport.messages import ClientRequest

__all__ = ["ChaosOptions", "ChaosRun", "System", "run_chaos"]

MIN_VOTERS = 3
#: The nemesis' faults; besides these, ``overlap`` (two at once) and, with
#: libfaketime, ``clock``/``clock-leader`` (a node's wall clock jumps).
FAULTS = (
    "partition",
    "one-way",
    "isolate-leader",
    "delay",
    "flaky",
    "kill",
    "kill-leader",
    "pause",
    "pause-leader",
    "transfer",
    "membership",
    "membership",
)

log = logging.getLogger("trioraft.chaos")


class System(Protocol):
    """A system under test: its nodes, its clients and its own checks."""

    #: ``"module:attribute"`` of this object, for the node processes to import.
    name: str
    #: :class:`NodeSpec` fields this system sets (e.g. ``cluster_id``, ``token``).
    spec_settings: Mapping[str, Any]

    async def serve(self, spec: NodeSpec) -> None:
        """The body of a node process: run the node ``spec`` describes until killed."""

    async def client(self, run: ChaosRun, router: Router, worker: int) -> None:
        """One client task: operate until ``run.stop_clients``, recording ``run.history``."""

    async def final_reads(self, run: ChaosRun, router: Router) -> None:
        """After the heal: one linearizable read per key, as process ``"final"``."""

    def check(self, run: ChaosRun) -> list[str]:
        """The system's own checks of what the run saw: one line per violation."""


def _default_system() -> System:
    from trioraft.testing.chaos.kv import SYSTEM

    return SYSTEM


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True)
class ChaosOptions:
    """One chaos run.  ``duration`` is seconds of faults and client load."""

    duration: float = 60.0
    seed: int | None = None
    nodes: int = 5
    voters: int = 3
    workers: int = 10
    keys: int = 30
    op_timeout: float = 2.0
    #: Seconds a client task waits between its operations (uniform up to this).
    think: float = 0.25
    nemesis: bool = True
    bug: str = ""
    root: str | None = None
    #: The system under test (default: the KV machine, :mod:`.kv`).
    system: System | None = None
    #: Step budget per key for the checker.
    budget: int = 5_000_000
    #: Jump nodes' wall clocks (needs libfaketime; noted in the report if missing).
    clock_jumps: bool = True
    #: The nemesis picks from these, each once first (None: all, see :data:`FAULTS`).
    faults: tuple[str, ...] | None = None


class ChaosRun:
    """One run: the processes, the proxies, the history and the report.

    A system's clients use ``history``, ``report.ops``, ``keys``,
    ``stop_clients``, ``rng_for``, ``next_value``, ``scratch`` and ``procs``
    (``direct``: each node's own port).
    """

    def __init__(self, options: ChaosOptions, root: pathlib.Path, seed: int) -> None:
        self.o = options
        self.system: System = options.system or _default_system()
        self.root = root
        self.seed = seed
        self.rng = random.Random(seed)
        self.report = ChaosReport(seed, options.duration, root=str(root))
        self.history = History()
        self.procs: dict[int, NodeProcess] = {}
        self.net = ProxyNet(random.Random(seed + 1))
        self.keys = [f"k{i:03d}" for i in range(options.keys)]
        self.stop_clients = False
        self.values = 0
        #: The system's own records of this run (a system object serves many runs).
        self.scratch: dict[str, Any] = {}
        self.libfaketime = find_libfaketime() if options.clock_jumps else None
        #: Whether the nemesis can jump a node's wall clock.
        self.clock = self.libfaketime is not None
        if options.clock_jumps and not self.clock:
            self.report.notes.append("no libfaketime (apt-get install faketime): no clock jumps")

    def rng_for(self, worker: int) -> random.Random:
        """Worker ``worker``'s own random stream (from the seed)."""
        return random.Random(self.seed * 1000 + worker)

    def next_value(self, worker: int) -> str:
        """A value no other write of the run has."""
        self.values += 1
        return f"w{worker}.{self.values}"

    # ---------------------------------------------------------- setup

    async def setup(self, nursery: trio.Nursery) -> Router:
        ids = list(range(1, self.o.nodes + 1))
        ports = dict(zip(ids, free_ports(len(ids)), strict=True))
        await self.net.start(nursery, ports)
        bootstrap = {n: f"{ROUTE_HOST}:{ports[n]}" for n in ids[: self.o.voters]}
        for n in ids:
            spec = NodeSpec(
                node_id=n,
                listen=f"{HOST}:{ports[n]}",
                address=f"{ROUTE_HOST}:{ports[n]}",
                data_dir=str(self.root / f"n{n}"),
                routes=self.net.routes(n),
                bootstrap=bootstrap,
                join=n not in bootstrap,
                system=self.system.name,
                bug=self.o.bug,
                **self.system.spec_settings,
            )
            self.procs[n] = NodeProcess(spec, self.root, libfaketime=self.libfaketime)
        for p in self.procs.values():
            await p.start()
        s = self.procs[ids[0]].spec
        router = Router(
            nursery,
            {n: p.direct for n, p in self.procs.items()},
            self.seed + 2,
            cluster_id=s.cluster_id,
            client_id=s.client_id,
            token=s.token.encode(),
        )
        with trio.fail_after(60):
            await self.wait_leader(router)
            for n in ids:
                while n not in bootstrap:
                    # A new leader refuses membership changes until it has
                    # committed an entry of its term; it may also lose the lead.
                    leader = await self.wait_leader(router)
                    args = {"id": n, "address": self.procs[n].address}
                    try:
                        await self.admin(router, leader, "add_learner", args)
                        break
                    except ClientError:
                        await trio.sleep(0.2)
        return router

    # ---------------------------------------------------------- helpers

    async def statuses(self, router: Router, within: float = 1.0) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}

        async def one(n: int) -> None:
            resp = await router.call_node(n, ClientRequest(0, "status"), within)
            if resp is not None and resp.ok and isinstance(resp.result, dict):
                out[n] = resp.result

        async with trio.open_nursery() as nursery:
            for n, p in self.procs.items():
                if p.alive and not p.paused:
                    nursery.start_soon(one, n)
        return out

    async def find_leader(self, router: Router) -> int | None:
        """The node that says it leads in the highest term, if any answers."""
        st = await self.statuses(router)
        leaders = [(s["term"], n) for n, s in st.items() if s["role"] == "leader"]
        return max(leaders)[1] if leaders else None

    async def wait_leader(self, router: Router) -> int:
        while True:
            leader = await self.find_leader(router)
            if leader is not None:
                return leader
            await trio.sleep(0.2)

    async def admin(
        self, router: Router, node: int, kind: str, payload: object, within: float = 15.0
    ) -> object:
        resp = await router.call_node(node, ClientRequest(0, kind, payload), within)
        if resp is None:
            raise ClientError(f"{kind} {payload} on node {node}: no answer")
        if not resp.ok:
            raise ClientError(f"{kind} {payload} on node {node}: {resp.error_code}")
        return resp.result

    def fault(self, text: str) -> None:
        self.report.faults.append(text)
        log.info("nemesis: %s", text)
        print(f"[{time.strftime('%H:%M:%S')}] nemesis: {text}", flush=True)

    # ---------------------------------------------------------- nemesis

    async def nemesis(self, router: Router, until: float) -> None:
        rng = self.rng
        ids = sorted(self.procs)
        faults = [*FAULTS, "overlap", "overlap"]
        if self.clock:
            faults += ["clock", "clock-leader"]
        first: list[str] = []
        if self.o.faults is not None:
            faults = [f for f in self.o.faults if self.clock or not f.startswith("clock")]
            # Each fault asked for comes once before the random picks.
            first = rng.sample(faults, len(faults))
        while trio.current_time() < until:
            await trio.sleep(rng.uniform(1.0, 3.0))
            if trio.current_time() >= until:
                break
            choice = first.pop() if first else rng.choice(faults)
            hold = rng.uniform(2.0, 6.0)
            if choice == "overlap":
                await self.overlap(router, ids, hold)
            else:
                await self.attempt(router, choice, ids, hold)
            await self.heal(router, quiet=True)

    async def attempt(self, router: Router, choice: str, ids: list[int], hold: float) -> None:
        """:meth:`inject`, with a failed admin call noted rather than raised."""
        try:
            await self.inject(router, choice, ids, hold)
        except ClientError as exc:
            self.fault(f"{choice} (failed: {exc})")

    async def overlap(self, router: Router, ids: list[int], hold: float) -> None:
        """Two faults at once: the second starts while the first holds.

        Half the time one of the pairs that matter most (a partition while a
        node is paused, a kill while a membership change is in flight, a
        clock jump of a paused or cut-off node), else any two.
        """
        rng = self.rng
        pairs: list[tuple[str, str, float]] = [
            ("pause", "partition", 1.0),
            ("pause-leader", "partition", 1.0),
            ("membership", "kill-leader", 0.05),
            ("membership", "kill", 0.05),
        ]
        if self.clock:
            pairs += [("pause", "clock", 1.0), ("isolate-leader", "clock-leader", 1.0)]
        if rng.random() < 0.5:
            first, second, within = rng.choice(pairs)
        else:
            first, second = rng.sample(sorted({*FAULTS, *(["clock"] if self.clock else [])}), 2)
            within = 1.0
        self.fault(f"overlap {first} + {second}")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.attempt, router, first, ids, hold)
            await trio.sleep(rng.uniform(0, within))
            nursery.start_soon(self.attempt, router, second, ids, hold)

    async def inject(self, router: Router, choice: str, ids: list[int], hold: float) -> None:
        rng = self.rng
        style = rng.choice(["blackhole", "reset"])
        if choice == "partition":
            shuffled = rng.sample(ids, len(ids))
            cut = rng.randint(1, len(ids) - 1)
            a, b = shuffled[:cut], shuffled[cut:]
            for i in a:
                for j in b:
                    self.net.block(i, j, style)
                    self.net.block(j, i, style)
            self.fault(f"partition {sorted(a)} | {sorted(b)} ({style}) for {hold:.1f}s")
            await trio.sleep(hold)
        elif choice == "one-way":
            src = rng.choice(ids)
            dsts = rng.sample([n for n in ids if n != src], rng.randint(1, len(ids) - 1))
            for d in dsts:
                self.net.block(src, d, style)
            self.fault(f"one-way {src} -/-> {sorted(dsts)} ({style}) for {hold:.1f}s")
            await trio.sleep(hold)
        elif choice == "isolate-leader":
            leader = await self.find_leader(router)
            if leader is None:
                return
            inbound = rng.random() < 0.5  # else fully isolated
            for n in ids:
                if n != leader:
                    self.net.block(n, leader, style)
                    if not inbound:
                        self.net.block(leader, n, style)
            what = "inbound-only " if inbound else ""
            self.fault(f"isolate-leader {what}{leader} ({style}) for {hold:.1f}s")
            await trio.sleep(hold)
        elif choice in ("delay", "flaky"):
            links = rng.sample(sorted(self.net.links), rng.randint(3, len(self.net.links)))
            amount = rng.uniform(0.05, 0.5) if choice == "delay" else rng.uniform(0.01, 0.1)
            for key in links:
                setattr(self.net.links[key], choice, amount)
            self.fault(f"{choice} {amount:.2f} on {len(links)} links for {hold:.1f}s")
            await trio.sleep(hold)
        elif choice in ("kill", "kill-leader", "pause", "pause-leader"):
            target = await self.find_leader(router) if choice.endswith("leader") else None
            if target is None:
                target = rng.choice(ids)
            proc = self.procs[target]
            if choice.startswith("kill"):
                await proc.kill()
                router.drop(target)
            else:
                proc.pause()
            self.fault(f"{choice} {target} for {hold:.1f}s")
            await trio.sleep(hold)
        elif choice == "transfer":
            leader = await self.find_leader(router)
            st = await self.statuses(router)
            if leader is None or leader not in st:
                return
            others = [v for v in st[leader]["voters"] if v != leader]
            if not others:
                return
            target = rng.choice(others)
            self.fault(f"transfer {leader} -> {target}")
            await self.admin(router, leader, "transfer_leader", {"target": target}, within=5.0)
        elif choice == "membership":
            await self.change_membership(router, ids)
        elif choice in ("clock", "clock-leader"):
            target = await self.find_leader(router) if choice == "clock-leader" else None
            if target is None:
                target = rng.choice(ids)
            # Log-uniform from 30 s to 3 h, either way (past an hour, a forward jump
            # of the leader expires every client session).
            offset = round(math.exp(rng.uniform(math.log(30), math.log(3 * 3600))))
            offset = offset if rng.random() < 0.5 else -offset
            self.procs[target].set_clock(offset)
            self.fault(f"{choice} {target} {offset:+d}s for {hold:.1f}s")
            await trio.sleep(hold)

    async def change_membership(self, router: Router, ids: list[int]) -> None:
        rng = self.rng
        leader = await self.find_leader(router)
        st = await self.statuses(router)
        if leader is None or leader not in st:
            return
        voters, learners = set(st[leader]["voters"]), set(st[leader]["learners"])
        outside = [n for n in ids if n not in voters | learners]
        if outside:
            n = rng.choice(outside)
            self.fault(f"membership add-learner {n}")
            await self.admin(
                router, leader, "add_learner", {"id": n, "address": self.procs[n].address}
            )
        elif learners and (len(voters) <= MIN_VOTERS or rng.random() < 0.5):
            n = rng.choice(sorted(learners))
            self.fault(f"membership promote {n}")
            await self.admin(router, leader, "promote", {"id": n})
        elif len(voters) > MIN_VOTERS:
            n = rng.choice(sorted(voters))
            self.fault(f"membership demote {n}{' (the leader)' if n == leader else ''}")
            await self.admin(router, leader, "remove_node", {"id": n})
            if n == leader:
                leader = await self.wait_leader(router)
            await self.admin(
                router, leader, "add_learner", {"id": n, "address": self.procs[n].address}
            )

    async def heal(self, router: Router, *, quiet: bool = False) -> None:
        self.net.heal()
        for n, p in self.procs.items():
            if p.clock_offset:
                p.set_clock(0)
            code = p.exited_on_its_own()
            if code is not None:
                self.report.problems.append(f"node {n} exited with code {code}")
                await p.kill()
            if p.paused:
                p.resume()
            if not p.alive:
                await p.start()
                router.drop(n)
        if not quiet:
            self.fault("heal all")

    # ---------------------------------------------------------- the end

    async def finish(self, router: Router) -> None:
        await self.heal(router)
        ids = sorted(self.procs)
        with trio.fail_after(90):
            # Every node a member again, so every replica can be compared.
            while True:
                leader = await self.wait_leader(router)
                st = await self.statuses(router)
                if leader not in st:
                    continue
                members = set(st[leader]["voters"]) | set(st[leader]["learners"])
                outside = [n for n in ids if n not in members]
                if not outside:
                    break
                with contextlib.suppress(ClientError):
                    await self.admin(
                        router,
                        leader,
                        "add_learner",
                        {"id": outside[0], "address": self.procs[outside[0]].address},
                    )
            # The final reads: what every key must hold.
            await self.system.final_reads(self, router)
            # Replicas converge: all applied the same index, same digest.
            while True:
                digests: dict[int, object] = {}
                for n in ids:
                    resp = await router.call_node(
                        n, ClientRequest(0, "digest", consistency="local"), 2.0
                    )
                    digests[n] = resp.result if resp is not None and resp.ok else None
                self.report.digests = digests
                values = {json.dumps(d, sort_keys=True) for d in digests.values()}
                if len(values) == 1 and None not in digests.values():
                    self.report.digests_equal = True
                    break
                await trio.sleep(0.5)

    def check(self) -> None:
        ops = self.history.ops()
        run_ops = [op for op in ops if op.process != "final"]
        self.report.linearizable = check(run_ops, budget=self.o.budget, timeout=300)
        self.report.final = check(ops, budget=self.o.budget, timeout=300)
        self.report.ops["final reads"] = len(ops) - len(run_ops)
        self.report.violations.extend(self.system.check(self))


def _prepare_root(root: str | None) -> pathlib.Path:
    path = pathlib.Path(root or tempfile.mkdtemp(prefix="trioraft-chaos-"))
    path.mkdir(parents=True, exist_ok=True)
    return path


async def run_chaos(options: ChaosOptions) -> ChaosReport:
    """Run the chaos test; every child process is killed before this returns."""
    seed = options.seed if options.seed is not None else random.randrange(1 << 32)
    print(f"chaos seed {seed}", flush=True)
    root = _prepare_root(options.root)
    run = ChaosRun(options, root, seed)
    started = time.monotonic()
    try:
        async with trio.open_nursery() as nursery:
            try:
                router = await run.setup(nursery)
                until = trio.current_time() + options.duration
                async with trio.open_nursery() as load:
                    for w in range(options.workers):
                        load.start_soon(run.system.client, run, router, w)
                    if options.nemesis:
                        await run.nemesis(router, until)
                    await trio.sleep_until(until)
                    run.stop_clients = True
                try:
                    await run.finish(router)
                except trio.TooSlowError:
                    run.report.problems.append("the cluster did not converge within 90s after heal")
            except Exception as exc:  # reported with the seed and the logs, not lost
                log.exception("chaos run aborted")
                run.report.problems.append(f"run aborted: {exc!r}")
            finally:
                for p in run.procs.values():
                    run.report.logs[p.id] = p.log_tail()
                    await p.kill()
                nursery.cancel_scope.cancel()
    finally:
        for p in run.procs.values():
            await p.kill()
    run.check()
    run.report.elapsed = time.monotonic() - started
    return run.report
