"""Chaos testing: real node processes, a fault-injecting proxy on every link, a checker.

Theory of operation
===================

Five OS processes each run :func:`trioraft.runtime.serve_node` with a
:class:`~trioraft.kv.KVStateMachine` (``python -m
trioraft.testing.chaos _node CONFIG``).  Three are the bootstrap voters; two
start with ``join=True`` and are added as learners once a leader is up.

Every ordered pair of nodes ``i -> j`` has its own TCP proxy: node ``i``'s
route to ``j`` is the proxy's port, which forwards to ``j``'s real port.  A
node sends only on connections it dialled, so proxy ``(i, j)`` carries
exactly the ``i -> j`` traffic (and the handshake and pings of those
connections): blocking it alone is a real one-way partition.  A link is
``pass``, ``blackhole`` (connections stay open, bytes vanish, new
connections hang: closed when healed) or ``reset`` (connections closed, new
ones refused), and independently ``delay`` (chunks held up to that many
seconds, order kept) and ``flaky`` (each chunk closes the connection with
that probability; TCP cannot lose single chunks without corrupting the
stream, so a loss is a broken connection).  Routes reach the transport through
a wrapper (``_RoutedTransport``) so they also cover members added later,
whose addresses in the membership are their real ones.

The *nemesis* (a seeded ``random.Random``; the seed is printed first) picks a
fault every few seconds - partition into random halves, one-way block,
isolate the leader, delays, flaky links, SIGKILL of a leader or follower
(restarted at the heal), SIGSTOP/SIGCONT of a leader or follower, leadership
transfer, membership change (add learner, promote, demote, never below three
voters) - holds it, heals everything, and rests before the next.

*Clients* (``workers`` trio tasks sharing one connection per node, always to
the nodes' real ports) loop over put / get (linearizable or lease) / cas on
``keys`` keys with unique values and record each call in a
:class:`~trioraft.testing.linearizability.History`.  An error that proves
the command was not accepted (``not_leader``, ``overloaded``, ``rejected``)
is retried within the call's deadline; if nothing could have been applied
the call is ``fail``; a timeout or a lost connection after sending is
``info`` (unknown).

At the end everything is healed, restarted and resumed, every node is made a
member again, and the run must show: (1) the history is linearizable; (2) no
acknowledged write is lost: the history plus one final linearizable read
per key is still linearizable; (3) every replica, once all have applied the
same index, reports the same ``digest``.

Run by hand::

    python -m trioraft.testing.chaos --duration 600 --seed 42
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import trio
import trio.lowlevel

from trioraft.client.connection import (
    ClientConnectionError,
    Connection,
    ConnectionClosedError,
    open_client_connection,
)
from trioraft.core.types import Entry, NodeId
from trioraft.kv import KVStateMachine, encode_command
from trioraft.runtime import (
    ClientService,
    Node,
    NodeConfig,
    Session,
    generic_service,
    serve_node,
)
from trioraft.runtime.node import websocket_transport
from trioraft.testing.linearizability import History, Result, check
from trioraft.transport.base import Transport, TransportStatistics
from trioraft.transport.messages import AnyMessage, ClientRequest, ClientResponse

__all__ = ["ChaosOptions", "ChaosReport", "main", "run_chaos"]

CLUSTER_ID: Final = "chaos"
SECRET: Final = b"chaos-cluster-secret"
CLIENT_ID: Final = "chaos"
TOKEN: Final = b"chaos-client-token"
HOST: Final = "127.0.0.1"
MIN_VOTERS: Final = 3

log = logging.getLogger("trioraft.chaos")


# ============================================================ node process


@dataclass(frozen=True)
class NodeSpec:
    """What a node process needs (written as JSON next to its data)."""

    node_id: int
    listen: str
    data_dir: str
    #: Every other node's route (its proxy from this node).
    routes: dict[int, str]
    bootstrap: list[int]
    join: bool
    #: "" or "stale-reads" (a deliberate bug, to prove the checks catch it).
    bug: str = ""
    election_timeout_min: float = 0.6
    election_timeout_max: float = 1.2
    heartbeat_interval: float = 0.1
    snapshot_entries: int = 500
    snapshot_keep_entries: int = 100
    proposal_timeout: float = 10.0

    def config(self) -> NodeConfig:
        return NodeConfig(
            node_id=self.node_id,
            data_dir=os.path.join(self.data_dir, "raft"),
            listen=self.listen,
            peers={n: self.routes[n] for n in self.bootstrap if n != self.node_id},
            join=self.join,
            cluster_id=CLUSTER_ID,
            cluster_secret=SECRET,
            client_tokens={CLIENT_ID: TOKEN},
            election_timeout_min=self.election_timeout_min,
            election_timeout_max=self.election_timeout_max,
            heartbeat_interval=self.heartbeat_interval,
            snapshot_entries=self.snapshot_entries,
            snapshot_keep_entries=self.snapshot_keep_entries,
            proposal_timeout=self.proposal_timeout,
        )

    @classmethod
    def load(cls, path: str) -> NodeSpec:
        with open(path) as f:
            raw = json.load(f)
        raw["routes"] = {int(k): v for k, v in raw["routes"].items()}
        return cls(**raw)


class _RoutedTransport:
    """The WebSocket transport with every peer reached through its local route."""

    def __init__(self, inner: Transport, routes: Mapping[NodeId, str]) -> None:
        self._inner = inner
        self._routes = routes

    def send(self, dst: NodeId, message: AnyMessage) -> None:
        self._inner.send(dst, message)

    def set_peers(self, peers: Mapping[NodeId, str]) -> None:
        self._inner.set_peers({n: self._routes.get(n, a) for n, a in peers.items()})

    def statistics(self) -> TransportStatistics:
        return self._inner.statistics()


@asynccontextmanager
async def _routed_transport(routes: Mapping[NodeId, str], node: Node) -> AsyncIterator[Transport]:
    async with websocket_transport(node) as inner:
        yield _RoutedTransport(inner, routes)


class _StaleKV(KVStateMachine):
    """A deliberately broken KV machine: some ``get`` answers the key's previous value.

    Like a replica serving reads from a state one write behind; the chaos
    checks must reject it.
    """

    def __init__(self, path: str, probability: float) -> None:
        super().__init__(path)
        self._previous: dict[str, Any] = {}
        self._stale_rng = random.Random()
        self._probability = probability

    async def apply(self, entries: Sequence[Entry]) -> list[object]:
        before = dict(self._data)
        results = await super().apply(entries)
        for key, value in self._data.items():
            if before.get(key) != value:
                self._previous[key] = before.get(key)
        return results

    async def query(self, query: object) -> object:
        if (
            isinstance(query, dict)
            and query.get("op") == "get"
            and query.get("key") in self._previous
            and self._stale_rng.random() < self._probability
        ):
            return self._previous[query["key"]]
        return await super().query(query)


def _chaos_service(node: Node) -> ClientService:
    """The generic service plus the nemesis' kinds: transfer and membership changes."""
    service = generic_service(node)
    service.on_call("transfer", _transfer)
    service.on_call("add_learner", _add_learner)
    service.on_call("promote", _promote)
    service.on_call("remove", _remove)
    return service


def _args(req: ClientRequest) -> dict[Any, Any]:
    return req.payload if isinstance(req.payload, dict) else {}


async def _transfer(session: Session, req: ClientRequest) -> object:
    target = _args(req).get("target")
    return await session.node.transfer_leadership(target if isinstance(target, int) else None)


async def _add_learner(session: Session, req: ClientRequest) -> object:
    p = _args(req)
    await session.node.add_learner(int(p["id"]), str(p["addr"]))
    return None


async def _promote(session: Session, req: ClientRequest) -> object:
    await session.node.promote(int(_args(req)["id"]))
    return None


async def _remove(session: Session, req: ClientRequest) -> object:
    await session.node.remove_node(int(_args(req)["id"]))
    return None


async def serve_chaos_node(spec: NodeSpec) -> None:
    """Run one node until killed (the body of the node process)."""
    sm_path = os.path.join(spec.data_dir, "kv")
    sm: KVStateMachine = (
        _StaleKV(sm_path, 0.3) if spec.bug == "stale-reads" else KVStateMachine(sm_path)
    )
    if spec.bug not in ("", "stale-reads"):
        raise ValueError(f"unknown bug {spec.bug!r}")
    await serve_node(
        spec.config(),
        sm,
        transport_factory=functools.partial(_routed_transport, spec.routes),
        client_service=_chaos_service,
    )


def node_main(config_path: str) -> None:
    spec = NodeSpec.load(config_path)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    trio.run(serve_chaos_node, spec)


# ================================================================== proxy


class _Conn:
    __slots__ = ("dead", "scope")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        #: Blackholed: bytes are read and thrown away until it is closed.
        self.dead = False


class Link:
    """The proxy for one direction ``src -> dst`` and its fault settings."""

    def __init__(self, src: int, dst: int, target: int, rng: random.Random) -> None:
        self.src, self.dst, self.target = src, dst, target
        self.rng = rng
        self.state = "pass"  # pass | blackhole | reset
        self.delay = 0.0
        self.flaky = 0.0
        self.conns: set[_Conn] = set()
        self.port = 0

    def block(self, style: str) -> None:
        self.state = style
        for c in list(self.conns):
            if style == "reset":
                c.scope.cancel()
            else:
                c.dead = True

    def heal(self) -> None:
        self.state, self.delay, self.flaky = "pass", 0.0, 0.0
        for c in list(self.conns):
            if c.dead:
                c.scope.cancel()

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await trio.open_tcp_listeners(0, host=HOST)
        self.port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, self._handle, listeners)

    async def _handle(self, down: trio.SocketStream) -> None:
        conn = _Conn()
        self.conns.add(conn)
        try:
            with conn.scope:
                if self.state == "reset":
                    return
                if self.state == "blackhole":
                    conn.dead = True
                    await trio.sleep_forever()
                try:
                    up = await trio.open_tcp_stream(HOST, self.target)
                except OSError:
                    return
                async with up, trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, conn, down, up)
                    nursery.start_soon(self._pump, conn, up, down)
        finally:
            self.conns.discard(conn)
            await down.aclose()

    async def _pump(self, conn: _Conn, src: trio.SocketStream, dst: trio.SocketStream) -> None:
        send, recv = trio.open_memory_channel[tuple[float, bytes]](math.inf)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._deliver, conn, recv, dst)
            async with send:
                last = 0.0
                while True:
                    try:
                        data = await src.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break
                    if not data:
                        break
                    if conn.dead:
                        continue
                    if self.flaky and self.rng.random() < self.flaky:
                        break
                    at = trio.current_time()
                    if self.delay:
                        at += self.rng.uniform(0, self.delay)
                    last = max(last, at)
                    send.send_nowait((last, data))
        # One side ended (or the chunk was "lost"): the connection is over.
        conn.scope.cancel()

    async def _deliver(
        self,
        conn: _Conn,
        recv: trio.MemoryReceiveChannel[tuple[float, bytes]],
        dst: trio.SocketStream,
    ) -> None:
        async with recv:
            async for at, data in recv:
                await trio.sleep_until(at)
                if conn.dead:
                    continue
                try:
                    await dst.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    conn.scope.cancel()
                    return


class ProxyNet:
    """One :class:`Link` per ordered pair of nodes."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.links: dict[tuple[int, int], Link] = {}

    async def start(self, nursery: trio.Nursery, ports: Mapping[int, int]) -> None:
        for i in ports:
            for j, target in ports.items():
                if i != j:
                    link = Link(i, j, target, self.rng)
                    await link.start(nursery)
                    self.links[i, j] = link

    def route(self, src: int, dst: int) -> str:
        return f"{HOST}:{self.links[src, dst].port}"

    def block(self, src: int, dst: int, style: str) -> None:
        self.links[src, dst].block(style)

    def heal(self) -> None:
        for link in self.links.values():
            link.heal()


# ================================================================ processes


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


_SRC_ROOT: Final = str(pathlib.Path(__file__).resolve().parents[2])


def _open_log(path: pathlib.Path, header: str) -> Any:
    out = open(path, "ab")  # noqa: SIM115 - the caller closes it
    out.write(header.encode())
    out.flush()
    return out


class NodeProcess:
    """One node's OS process: start, SIGKILL, SIGSTOP/SIGCONT."""

    def __init__(self, spec: NodeSpec, root: pathlib.Path) -> None:
        self.spec = spec
        self.id = spec.node_id
        self.address = spec.listen
        self.dir = root / f"n{spec.node_id}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "node.json"
        self.config_path.write_text(json.dumps(asdict(spec)))
        self.log_path = self.dir / "node.log"
        self.proc: trio.Process | None = None
        self.paused = False
        self.starts = 0

    @property
    def alive(self) -> bool:
        return self.proc is not None

    async def start(self) -> None:
        assert self.proc is None
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_SRC_ROOT, env.get("PYTHONPATH")]))
        with _open_log(self.log_path, f"--- start {self.starts} ---\n") as out:
            self.proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "trioraft.testing.chaos", "_node", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.starts += 1
        self.paused = False

    def pause(self) -> None:
        if self.proc is not None and not self.paused:
            self.proc.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.proc is not None and self.paused:
            self.proc.send_signal(signal.SIGCONT)
            self.paused = False

    async def kill(self) -> None:
        """SIGCONT (a stopped process must be able to die) then SIGKILL, and reap it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
                    proc.kill()
            await proc.wait()
        self.paused = False

    def exited_on_its_own(self) -> int | None:
        """The exit code if the process died without us killing it."""
        if self.proc is not None and self.proc.poll() is not None:
            return self.proc.returncode
        return None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])


# ================================================================= clients


class ClientError(Exception):
    """An admin call failed (the nemesis ignores most of these)."""


class Router:
    """One client connection per node (to its real port) and a guess at the leader."""

    def __init__(self, nursery: trio.Nursery, addresses: Mapping[int, str], seed: int) -> None:
        self._nursery = nursery
        self.addresses = dict(addresses)
        self.leader: int | None = None
        self._conns: dict[int, Connection] = {}
        self._locks = {n: trio.Lock() for n in addresses}
        self._rng = random.Random(seed)
        self.candidates: list[int] = sorted(addresses)

    async def connection(self, n: int) -> Connection:
        c = self._conns.get(n)
        if c is not None and not c.closed:
            return c
        async with self._locks[n]:
            c = self._conns.get(n)
            if c is not None and not c.closed:
                return c
            conn: Connection = await self._nursery.start(self._hold, n)
            return conn

    async def _hold(self, n: int, task_status: trio.TaskStatus[Connection]) -> None:
        started = False
        try:
            async with open_client_connection(
                self.addresses[n],
                cluster_id=CLUSTER_ID,
                client_id=CLIENT_ID,
                token=TOKEN,
                connect_timeout=1.0,
                send_timeout=2.0,
            ) as conn:
                self._conns[n] = conn
                task_status.started(conn)
                started = True
                while not conn.closed:  # noqa: ASYNC110 - a Connection has no closed event
                    await trio.sleep(0.2)
        except ClientConnectionError:
            if not started:
                raise

    def drop(self, n: int) -> None:
        self._conns.pop(n, None)

    async def call_node(self, n: int, req: ClientRequest, within: float) -> ClientResponse | None:
        """One request to one node; None if it could not be reached in time."""
        with trio.move_on_after(within):
            try:
                conn = await self.connection(n)
                return await conn.call(req)
            except ClientConnectionError:
                return None
        return None

    async def execute(self, req: ClientRequest, within: float) -> tuple[str, object]:
        """Run ``req`` on the leader: ``("ok", result)``, ``("fail", code)`` or ``("info", why)``.

        Errors that prove nothing was applied are retried until the deadline;
        once a send may have reached a leader and the answer is lost, the
        outcome is unknown.
        """
        sent = False
        code = "timeout"
        with trio.move_on_after(within):
            while True:
                n = self.leader if self.leader is not None else self._rng.choice(self.candidates)
                try:
                    conn = await self.connection(n)
                except ClientConnectionError:
                    code = "connect"
                    self.leader = None
                    await trio.sleep(0.05)
                    continue
                sent = True
                try:
                    resp = await conn.call(req)
                except ConnectionClosedError:
                    self.leader = None
                    return "info", "connection lost"
                if resp.ok:
                    self.leader = n
                    return "ok", resp.result
                code = resp.error_code
                if code == "not_leader":
                    sent = False
                    self.leader = resp.leader_id if resp.leader_id != n else None
                    if self.leader is None:
                        await trio.sleep(0.05)
                    continue
                if code in ("overloaded", "rejected", "read_failed", "not_caught_up"):
                    sent = False  # refused before it was accepted: safe to retry
                    await trio.sleep(0.05)
                    continue
                if code == "bad_request":
                    return "fail", f"{code}: {resp.error_message}"
                return "info", code  # dropped, timeout, closed, error: it may still apply
        self.leader = None  # a paused or partitioned leader: look again
        return ("info", "timeout") if sent else ("fail", code)


# ================================================================== the run


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
    #: Step budget per key for the checker.
    budget: int = 5_000_000


@dataclass
class ChaosReport:
    seed: int
    duration: float
    ops: Counter[str] = field(default_factory=Counter)
    faults: list[str] = field(default_factory=list)
    linearizable: Result | None = None
    final: Result | None = None
    final_values: dict[str, object] = field(default_factory=dict)
    digests: dict[int, object] = field(default_factory=dict)
    digests_equal: bool = False
    problems: list[str] = field(default_factory=list)
    logs: dict[int, str] = field(default_factory=dict)
    elapsed: float = 0.0
    root: str = ""

    @property
    def ok(self) -> bool:
        return (
            not self.problems
            and self.linearizable is not None
            and self.linearizable.ok is True
            and self.final is not None
            and self.final.ok is True
            and self.digests_equal
        )

    def summary(self, *, logs: bool = False) -> str:
        lines = [f"chaos seed {self.seed}, {self.duration:g}s of faults, {self.elapsed:.1f}s total"]
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.ops.items()))
        lines.append(f"  ops: {ops}")
        kinds = Counter(f.split(" ", 1)[0] for f in self.faults if f != "heal all")
        lines.append(
            f"  faults ({kinds.total()}): "
            + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        )
        for name, res in (("history", self.linearizable), ("with final reads", self.final)):
            lines.append(f"  {name}: " + (res.explain() if res is not None else "not checked"))
        digests = {
            n: d["sha256"][:12] if isinstance(d, dict) else d for n, d in self.digests.items()
        }
        index = sorted({str(d.get("index")) for d in self.digests.values() if isinstance(d, dict)})
        lines.append(
            f"  digests {'equal' if self.digests_equal else 'DIFFER'} at index {', '.join(index)}: "
            f"{digests}"
        )
        lines.extend(f"  problem: {p}" for p in self.problems)
        lines.append(f"  result: {'PASS' if self.ok else 'FAIL'} (run directory {self.root})")
        if logs or not self.ok:
            for n, tail in sorted(self.logs.items()):
                lines.append(f"  --- node {n} log tail ---")
                lines.extend("    " + t for t in tail.splitlines())
        return "\n".join(lines)


class ChaosRun:
    def __init__(self, options: ChaosOptions, root: pathlib.Path, seed: int) -> None:
        self.o = options
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

    # ---------------------------------------------------------- setup

    async def setup(self, nursery: trio.Nursery) -> Router:
        ids = list(range(1, self.o.nodes + 1))
        ports = dict(zip(ids, free_ports(len(ids)), strict=True))
        await self.net.start(nursery, ports)
        bootstrap = ids[: self.o.voters]
        for n in ids:
            spec = NodeSpec(
                node_id=n,
                listen=f"{HOST}:{ports[n]}",
                data_dir=str(self.root / f"n{n}"),
                routes={m: self.net.route(n, m) for m in ids if m != n},
                bootstrap=bootstrap,
                join=n not in bootstrap,
                bug=self.o.bug,
            )
            self.procs[n] = NodeProcess(spec, self.root)
        for p in self.procs.values():
            await p.start()
        router = Router(nursery, {n: p.address for n, p in self.procs.items()}, self.seed + 2)
        with trio.fail_after(60):
            leader = await self.wait_leader(router)
            for n in ids:
                if n not in bootstrap:
                    await self.admin(
                        router, leader, "add_learner", {"id": n, "addr": self.procs[n].address}
                    )
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

    # ---------------------------------------------------------- clients

    async def client(self, router: Router, w: int) -> None:
        rng = random.Random(self.seed * 1000 + w)
        last: dict[str, object] = {}
        proc = f"c{w}"
        h = self.history
        while not self.stop_clients:
            key = rng.choice(self.keys)
            r = rng.random()
            if r < 0.4:
                # Half the reads use the leader lease (pitfall 12: a paused or
                # deposed leader must not answer from a stale lease).
                consistency = "lease" if rng.random() < 0.5 else "linearizable"
                handle = h.invoke(proc, key, "read")
                outcome, res = await router.execute(
                    ClientRequest(0, "read", {"op": "get", "key": key}, consistency=consistency),
                    self.o.op_timeout,
                )
                if outcome == "ok":
                    h.ok(handle, res)
                    last[key] = res
                elif outcome == "fail":
                    h.fail(handle)
                else:
                    h.timeout(handle)
                self.report.ops[f"read {outcome}"] += 1
            else:
                self.values += 1
                value = f"w{w}.{self.values}".encode()
                if r < 0.7:
                    kind, cmd = "write", encode_command("put", key, value=value)
                    handle = h.invoke(proc, key, "write", value)
                else:
                    kind = "cas"
                    expected = last.get(key)
                    cmd = encode_command("cas", key, expected=expected, value=value)
                    handle = h.invoke(proc, key, "cas", value, expected=expected)
                outcome, res = await router.execute(
                    ClientRequest(0, "propose", cmd), self.o.op_timeout
                )
                if outcome == "ok":
                    if kind == "cas":
                        assert isinstance(res, dict)
                        swapped = res.get("ok") is True
                        h.ok(handle, swapped)
                        last[key] = value if swapped else res.get("value")
                    else:
                        h.ok(handle)
                        last[key] = value
                elif outcome == "fail":
                    h.fail(handle)
                else:
                    h.timeout(handle)
                    last.pop(key, None)
                self.report.ops[f"{kind} {outcome}"] += 1
            await trio.sleep(rng.uniform(0, self.o.think))

    # ---------------------------------------------------------- nemesis

    async def nemesis(self, router: Router, until: float) -> None:
        rng = self.rng
        ids = sorted(self.procs)
        faults = [
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
        ]
        while trio.current_time() < until:
            await trio.sleep(rng.uniform(1.0, 3.0))
            if trio.current_time() >= until:
                break
            choice = rng.choice(faults)
            hold = rng.uniform(2.0, 6.0)
            try:
                await self.inject(router, choice, ids, hold)
            except ClientError as exc:
                self.fault(f"{choice} (failed: {exc})")
            await self.heal(router, quiet=True)

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
            await self.admin(router, leader, "transfer", {"target": target}, within=5.0)
        elif choice == "membership":
            await self.change_membership(router, ids)

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
                router, leader, "add_learner", {"id": n, "addr": self.procs[n].address}
            )
        elif learners and (len(voters) <= MIN_VOTERS or rng.random() < 0.5):
            n = rng.choice(sorted(learners))
            self.fault(f"membership promote {n}")
            await self.admin(router, leader, "promote", {"id": n})
        elif len(voters) > MIN_VOTERS:
            n = rng.choice(sorted(voters))
            self.fault(f"membership demote {n}{' (the leader)' if n == leader else ''}")
            await self.admin(router, leader, "remove", {"id": n})
            if n == leader:
                leader = await self.wait_leader(router)
            await self.admin(
                router, leader, "add_learner", {"id": n, "addr": self.procs[n].address}
            )

    async def heal(self, router: Router, *, quiet: bool = False) -> None:
        self.net.heal()
        for n, p in self.procs.items():
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
                        {"id": outside[0], "addr": self.procs[outside[0]].address},
                    )
            # The final reads: the value every key must hold.
            for key in self.keys:
                while True:
                    handle = self.history.invoke("final", key, "read")
                    outcome, res = await router.execute(
                        ClientRequest(0, "read", {"op": "get", "key": key}), 5.0
                    )
                    if outcome == "ok":
                        self.history.ok(handle, res)
                        self.report.final_values[key] = res
                        break
                    self.history.fail(handle)
            # Replicas converge: all applied the same index, same digest.
            while True:
                digests: dict[int, object] = {}
                for n in ids:
                    resp = await router.call_node(
                        n, ClientRequest(0, "read", {"op": "digest"}, consistency="local"), 2.0
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
                        load.start_soon(run.client, router, w)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["_node"]:
        node_main(args[1])
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m trioraft.testing.chaos", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of faults and load")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--keys", type=int, default=None, help="default: 30, more for long runs")
    parser.add_argument("--no-nemesis", action="store_true")
    parser.add_argument("--bug", default="", choices=["", "stale-reads"])
    parser.add_argument("--dir", default=None, help="run directory (default: a new temp dir)")
    ns = parser.parse_args(args)
    keys = ns.keys if ns.keys is not None else max(30, int(ns.duration / 2))
    options = ChaosOptions(
        duration=ns.duration,
        seed=ns.seed,
        workers=ns.workers,
        keys=keys,
        nemesis=not ns.no_nemesis,
        bug=ns.bug,
        root=ns.dir,
    )
    report = trio.run(run_chaos, options)
    print(report.summary(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
