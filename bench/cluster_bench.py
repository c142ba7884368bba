"""The docstore cluster, the trioraft KV path, PySyncObj and etcd, side by side on this machine.

Run: ``python bench/cluster_bench.py [--quick] [--repeat 3] [--seconds 3]
[--clients 1,64,256] [--systems docstore,trioraft,pysyncobj,etcd] [--profile PATH]
[--plot docs/benchmarks.png] [--json results.json]``

Every system runs 3 members on 127.0.0.1, each its own OS process, with its
data on the same disk.  The workload is 100-byte values put under 1,000
keys by C concurrent virtual clients, each keeping one request in flight;
a measurement lasts ``--seconds`` after a short warm-up (or stops at
``--requests`` operations).  Latency is taken per operation, from just
before the request is issued to just after its answer, by the load
generator; p50 / p99 / p99.9 come from all operations of the window.

* docstore (the product, printed first): three ``docstore serve``
  processes driven through ``docstore.connect`` (one client object shared by
  the C virtual clients, as an application would): ``put`` of 100-byte
  documents under 1,000 keys, and ``get`` with linearizable, lease and
  local consistency.  Every commit is fsynced on a majority before the
  answer, and every put is exactly-once (a session per write lane).
* trioraft ``remote`` (the library's KV path): this process drives the leader through
  ``trioraft.client`` connections (C clients spread over ``--connections``
  WebSockets, many requests in flight on each); ``embedded``: the leader's
  process runs the same loop over ``Node.propose`` / ``Node.read``
  (bench/_node.py).  Every commit is fsynced (group commit).
* PySyncObj: the load runs in the leader's process (it has no client
  protocol) through its async callback API; its journal is *not* synced
  per commit, which favours it.
* etcd (only when an ``etcd`` binary is on the PATH): puts go to the
  leader's v3 JSON gateway (``POST /v3/kv/put``) over keep-alive HTTP/1.1
  connections, one per virtual client (HTTP/1.1 has one request in flight
  per connection).  etcd fsyncs its WAL per batch, like trioraft.

Each configuration runs ``--repeat`` times; tables show medians.  The
machine's cores are shared by the three members and the load generator.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from typing import Any

import trio

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import docstore  # noqa: E402
from trioraft.client import open_client_connection  # noqa: E402
from trioraft.client.connection import Connection  # noqa: E402
from trioraft.kv import encode_command  # noqa: E402
from trioraft.transport.messages import ClientRequest  # noqa: E402

CLUSTER_ID = "bench"
CLIENT_ID = "bench"
TOKEN = b"bench-token"
KEYS = 1000

# Targets from the issue (2 cores, 3 nodes, every commit fsynced).
TARGETS = {
    "single client writes/s": 1300.0,
    "256 clients writes/s": 15000.0,
    "256 clients p99 ms (at most)": 50.0,
    "embedded writes/s": 30000.0,
    "linearizable reads/s": 30000.0,
}


@dataclass
class Result:
    system: str
    mode: str  # remote / embedded
    op: str  # put / linearizable / lease / local
    clients: int
    count: int
    elapsed: float
    errors: int
    p50: float
    p99: float
    p999: float

    @property
    def rate(self) -> float:
        return self.count / self.elapsed if self.elapsed > 0 else 0.0


def pct(lat_ms: list[float], q: float) -> float:
    if not lat_ms:
        return float("nan")
    return lat_ms[min(len(lat_ms) - 1, int(q * len(lat_ms)))]


def make_result(
    system: str, mode: str, op: str, clients: int, lat_ms: list[float], elapsed: float, errors: int
) -> Result:
    lat_ms = sorted(lat_ms)
    return Result(
        system,
        mode,
        op,
        clients,
        len(lat_ms),
        elapsed,
        errors,
        pct(lat_ms, 0.5),
        pct(lat_ms, 0.99),
        pct(lat_ms, 0.999),
    )


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def stop_processes(procs: list[subprocess.Popen[Any]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# ------------------------------------------------------------------ trioraft


class TrioraftCluster:
    def __init__(self, root: str) -> None:
        self.root = os.path.join(root, "trioraft")
        ports = free_ports(3)
        self.addresses = {i + 1: f"127.0.0.1:{ports[i]}" for i in range(3)}
        self.procs: list[subprocess.Popen[Any]] = []
        self.leader: str | None = None

    def start(self) -> None:
        env = dict(os.environ)
        for n, addr in self.addresses.items():
            data = os.path.join(self.root, f"n{n}")
            os.makedirs(data, exist_ok=True)
            cmd = [sys.executable, os.path.join(HERE, "_node.py"), "--id", str(n)]
            cmd += ["--listen", addr, "--data", data, "--token", TOKEN.decode()]
            for m, a in self.addresses.items():
                if m != n:
                    cmd += ["--peer", f"{m}={a}"]
            log = open(os.path.join(self.root, f"n{n}.log"), "wb")  # noqa: SIM115
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
        self.leader = trio.run(self._find_leader)

    async def _find_leader(self) -> str:
        with trio.fail_after(60):
            while True:
                for addr in self.addresses.values():
                    with contextlib.suppress(Exception):
                        async with connect(addr) as conn:
                            resp = await conn.call(ClientRequest(0, "status"))
                            st: Any = resp.result
                            if resp.ok and st["role"] == "leader":
                                # Commit an entry of this term before measuring.
                                r = await conn.call(
                                    ClientRequest(
                                        0, "propose", encode_command("put", "warm", value=b"")
                                    )
                                )
                                if r.ok:
                                    return addr
                for p in self.procs:
                    if p.poll() is not None:
                        raise RuntimeError(
                            f"a trioraft node exited ({p.returncode}); see {self.root}"
                        )
                await trio.sleep(0.2)

    def stop(self) -> None:
        stop_processes(self.procs)
        self.procs = []


def connect(addr: str) -> Any:
    return open_client_connection(
        addr, cluster_id=CLUSTER_ID, client_id=CLIENT_ID, token=TOKEN, queue_size=4096
    )


async def remote_load(
    addr: str, op: str, clients: int, seconds: float, max_requests: int, connections: int
) -> tuple[list[float], float, int]:
    """C virtual clients, each one request in flight, over a few shared connections."""
    value = b"x" * 100
    commands = [encode_command("put", f"k{j}", value=value) for j in range(KEYS)]
    queries = [{"op": "get", "key": f"k{j}"} for j in range(KEYS)]
    lat: list[float] = []
    errors = [0]
    issued = [0]
    async with AsyncExitStack() as stack:
        conns: list[Connection] = [
            await stack.enter_async_context(connect(addr))
            for _ in range(max(1, min(clients, connections)))
        ]
        start = time.perf_counter()
        deadline = start + seconds

        async def worker(w: int) -> None:
            conn = conns[w % len(conns)]
            i = w
            while time.perf_counter() < deadline and not (
                max_requests and issued[0] >= max_requests
            ):
                issued[0] += 1
                j = i % KEYS
                if op == "put":
                    req = ClientRequest(0, "propose", commands[j])
                else:
                    req = ClientRequest(0, "read", queries[j], consistency=op)
                t = time.perf_counter()
                resp = await conn.call(req)
                done = time.perf_counter()
                if resp.ok:
                    lat.append((done - t) * 1000)
                else:
                    errors[0] += 1
                i += clients

        async with trio.open_nursery() as nursery:
            for w in range(clients):
                nursery.start_soon(worker, w)
        elapsed = time.perf_counter() - start
    return lat, elapsed, errors[0]


async def control(addr: str, kind: str, payload: object) -> Any:
    async with connect(addr) as conn:
        resp = await conn.call(ClientRequest(0, kind, payload))
        if not resp.ok:
            raise RuntimeError(f"{kind}: {resp.error_code} {resp.error_message}")
        return resp.result


def trioraft_measure(
    cluster: TrioraftCluster, mode: str, op: str, clients: int, args: argparse.Namespace
) -> Result:
    """One measurement; if the leadership moved meanwhile, find the leader and measure again."""
    for _attempt in range(3):
        addr = cluster.leader
        assert addr is not None
        try:
            result = _trioraft_measure_once(addr, mode, op, clients, args)
        except RuntimeError as exc:
            result = None
            print(f"  (trioraft {mode} {op} c={clients}: {exc})", flush=True)
        if result is not None and not result.errors:
            return result
        cluster.leader = trio.run(cluster._find_leader)
        if result is not None and cluster.leader == addr:
            return result  # errors, but the leader did not change: report them
        print(f"  (leadership moved to {cluster.leader}: measuring again)", flush=True)
    raise RuntimeError("the trioraft leadership kept moving during the measurements")


def _trioraft_measure_once(
    addr: str, mode: str, op: str, clients: int, args: argparse.Namespace
) -> Result:
    if mode == "remote":
        trio.run(remote_load, addr, op, clients, args.warmup, args.requests, args.connections)
        lat, elapsed, errors = trio.run(
            remote_load, addr, op, clients, args.seconds, args.requests, args.connections
        )
    else:
        spec = {"op": op, "clients": clients, "seconds": args.warmup, "size": 100}
        trio.run(control, addr, "bench", spec)
        spec["seconds"] = args.seconds
        if args.requests:
            # The embedded loop is time-bound; keep it short when a count is asked for.
            spec["seconds"] = min(args.seconds, 0.5)
        out = trio.run(control, addr, "bench", spec)
        lat, elapsed, errors = out["lat_ms"], out["elapsed"], out["errors"]
    return make_result("trioraft", mode, op, clients, lat, elapsed, errors)


# ------------------------------------------------------------------ docstore

DOCSTORE_TOKEN = "bench-docstore-token"
#: A 100-byte document (its CBOR encoding, field name included).
DOC = {"v": "x" * 96}


class DocstoreCluster:
    """Three ``docstore serve`` processes (python -m docstore serve)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.join(root, "docstore")
        ports = free_ports(3)
        self.addresses = {i + 1: f"127.0.0.1:{ports[i]}" for i in range(3)}
        self.procs: dict[int, subprocess.Popen[Any]] = {}
        #: What the last measurement noted (the leader's batching).
        self.notes: list[str] = []

    def start(self) -> None:
        for n, addr in self.addresses.items():
            data = os.path.join(self.root, f"n{n}")
            os.makedirs(data, exist_ok=True)
            cmd = [sys.executable, "-m", "docstore", "serve", "--id", str(n), "--listen", addr]
            cmd += ["--data", data, "--secret", "bench-docstore-secret"]
            cmd += ["--token", DOCSTORE_TOKEN, "--snapshot-entries", "200000"]
            for m, a in self.addresses.items():
                if m != n:
                    cmd += ["--peer", f"{m}={a}"]
            log = open(os.path.join(self.root, f"n{n}.log"), "wb")  # noqa: SIM115
            self.procs[n] = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=os.path.dirname(HERE)
            )
        trio.run(self._warm)

    async def _warm(self) -> None:
        with trio.fail_after(60):
            while True:
                for n, p in self.procs.items():
                    if p.poll() is not None:
                        raise RuntimeError(f"docstore node {n} exited; see {self.root}")
                with contextlib.suppress(Exception):
                    async with docstore.connect(
                        list(self.addresses.values()), token=DOCSTORE_TOKEN, call_timeout=5
                    ) as db:
                        coll = db.collection("bench")
                        await coll.put("warm", DOC)
                        keys = [f"k{j}" for j in range(KEYS)]
                        async with trio.open_nursery() as nursery:  # something to read
                            for w in range(16):
                                nursery.start_soon(_fill, coll, keys[w::16])
                        return
                await trio.sleep(0.2)

    def leader_pid(self) -> int:
        async def find() -> int:
            async with docstore.connect(list(self.addresses.values()), token=DOCSTORE_TOKEN) as db:
                members = await db.members()
            return self.procs[int(members["leader_id"])].pid

        return trio.run(find)

    def measure(self, op: str, clients: int, args: argparse.Namespace) -> Result:
        addrs = list(self.addresses.values())
        self.notes = []
        lat, elapsed, errors = trio.run(
            docstore_load, addrs, op, clients, args.seconds, args.requests, args.warmup, self.notes
        )
        return make_result("docstore", "remote", op, clients, lat, elapsed, errors)

    def stop(self) -> None:
        stop_processes(list(self.procs.values()))
        self.procs = {}


async def docstore_load(
    addresses: list[str],
    op: str,
    clients: int,
    seconds: float,
    max_requests: int,
    warmup: float = 0.0,
    notes: list[str] | None = None,
) -> tuple[list[float], float, int]:
    """C virtual clients sharing one ``docstore.connect``, each one call in flight.

    ``notes`` gets, for puts, the leader's entries per fsync and requests per
    client frame during the measurement (from its ``status`` counters).

    The warm-up runs on the same client, so the measurement starts with its
    connection open and its write lanes' sessions registered (as in a
    long-running application), not with one session opening per writer.
    """
    keys = [f"k{j}" for j in range(KEYS)]
    async with docstore.connect(addresses, token=DOCSTORE_TOKEN) as db:
        coll = db.collection("bench")
        if warmup > 0:
            await _docstore_phase(coll, keys, op, clients, warmup, 0)
        leader = (await db.members())["addresses"]
        before = await _leader_counters(db, leader)
        out = await _docstore_phase(coll, keys, op, clients, seconds, max_requests)
        after = await _leader_counters(db, leader)
    if before and after and op == "put" and notes is not None:
        d = {k: after[k] - before[k] for k in before}
        notes.append(
            f"{d['persist_entries'] / max(1, d['persist_batches']):.1f} entries per fsync,"
            f" {len(out[0]) / max(1, d['client_frames_in']):.1f} requests per client frame"
            " (leader)"
        )
    return out


async def _leader_counters(db: Any, addresses: dict[str, str]) -> dict[str, int] | None:
    """The leader's ``counters`` from its ``status`` (None if it cannot be asked)."""
    try:
        members = await db.members()
        address = addresses[str(members["leader_id"])]
        st = await db.client.request_node(address, "status")
        return dict(st["counters"])
    except Exception:
        return None


async def _docstore_phase(
    coll: Any, keys: list[str], op: str, clients: int, seconds: float, max_requests: int
) -> tuple[list[float], float, int]:
    lat: list[float] = []
    errors = [0]
    issued = [0]
    start = time.perf_counter()
    deadline = start + seconds

    async def worker(w: int) -> None:
        i = w
        while time.perf_counter() < deadline and not (max_requests and issued[0] >= max_requests):
            issued[0] += 1
            key = keys[i % KEYS]
            t = time.perf_counter()
            try:
                if op == "put":
                    await coll.put(key, DOC)
                else:
                    await coll.get(key, consistency=op)
            except Exception:
                errors[0] += 1
            else:
                lat.append((time.perf_counter() - t) * 1000)
            i += clients

    async with trio.open_nursery() as nursery:
        for w in range(clients):
            nursery.start_soon(worker, w)
    return lat, time.perf_counter() - start, errors[0]


async def _fill(coll: Any, keys: list[str]) -> None:
    for k in keys:
        await coll.put(k, DOC)


# ----------------------------------------------------------------- PySyncObj


class PySyncObjCluster:
    def __init__(self, root: str) -> None:
        self.root = os.path.join(root, "pysyncobj")
        ports = free_ports(3)
        self.addresses = [f"127.0.0.1:{p}" for p in ports]
        self.procs: list[subprocess.Popen[str]] = []
        self.leader: subprocess.Popen[str] | None = None

    def start(self) -> None:
        for i, addr in enumerate(self.addresses):
            data = os.path.join(self.root, f"n{i + 1}")
            os.makedirs(data, exist_ok=True)
            partners = [a for a in self.addresses if a != addr]
            cmd = [sys.executable, os.path.join(HERE, "_pysyncobj_node.py"), addr, *partners]
            cmd += ["--data", data]
            err = open(os.path.join(self.root, f"n{i + 1}.log"), "wb")  # noqa: SIM115
            p = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
            )
            self.procs.append(p)
        for p in self.procs:
            self._read(p)  # "started"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for p in self.procs:
                st = self.ask(p, {"cmd": "status"})
                if st["leader"] and st["ready"]:
                    self.leader = p
                    return
            time.sleep(0.2)
        raise RuntimeError("PySyncObj elected no leader in 60 s")

    def _read(self, p: subprocess.Popen[str]) -> Any:
        assert p.stdout is not None
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"a PySyncObj node exited; see {self.root}")
        return json.loads(line)

    def ask(self, p: subprocess.Popen[str], req: dict[str, Any]) -> Any:
        assert p.stdin is not None
        p.stdin.write(json.dumps(req) + "\n")
        p.stdin.flush()
        return self._read(p)

    def measure(self, clients: int, args: argparse.Namespace) -> Result:
        assert self.leader is not None
        req = {"cmd": "run", "clients": clients, "size": 100, "requests": args.requests}
        self.ask(self.leader, {**req, "seconds": args.warmup})
        out = self.ask(self.leader, {**req, "seconds": args.seconds})
        return make_result(
            "pysyncobj", "embedded", "put", clients, out["lat_ms"], out["elapsed"], out["errors"]
        )

    def stop(self) -> None:
        for p in self.procs:
            if p.stdin is not None:
                with contextlib.suppress(OSError):
                    p.stdin.close()
        stop_processes(self.procs)  # type: ignore[arg-type]
        self.procs = []


# ---------------------------------------------------------------------- etcd


class EtcdCluster:
    def __init__(self, root: str, binary: str) -> None:
        self.root = os.path.join(root, "etcd")
        self.binary = binary
        ports = free_ports(6)
        self.client_ports = ports[:3]
        self.peer_ports = ports[3:]
        self.procs: list[subprocess.Popen[Any]] = []
        self.leader_port: int | None = None

    def start(self) -> None:
        initial = ",".join(f"m{i + 1}=http://127.0.0.1:{p}" for i, p in enumerate(self.peer_ports))
        for i in range(3):
            data = os.path.join(self.root, f"m{i + 1}")
            os.makedirs(data, exist_ok=True)
            cp, pp = self.client_ports[i], self.peer_ports[i]
            cmd = [
                self.binary,
                f"--name=m{i + 1}",
                f"--data-dir={data}",
                f"--listen-client-urls=http://127.0.0.1:{cp}",
                f"--advertise-client-urls=http://127.0.0.1:{cp}",
                f"--listen-peer-urls=http://127.0.0.1:{pp}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{pp}",
                f"--initial-cluster={initial}",
                "--initial-cluster-state=new",
                "--initial-cluster-token=bench",
                "--log-level=error",
                "--logger=zap",
            ]
            log = open(os.path.join(self.root, f"m{i + 1}.log"), "wb")  # noqa: SIM115
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        self.leader_port = trio.run(self._find_leader)

    async def _find_leader(self) -> int:
        with trio.fail_after(60):
            while True:
                for port in self.client_ports:
                    with contextlib.suppress(Exception):
                        async with HttpConnection("127.0.0.1", port) as http:
                            st = await http.post_json("/v3/maintenance/status", {})
                            if st.get("leader") and st["leader"] == st["header"]["member_id"]:
                                await http.post_json("/v3/kv/put", _etcd_put("warm"))
                                return port
                for p in self.procs:
                    if p.poll() is not None:
                        raise RuntimeError(f"an etcd member exited; see {self.root}")
                await trio.sleep(0.2)

    def measure(self, clients: int, args: argparse.Namespace) -> Result:
        assert self.leader_port is not None
        trio.run(etcd_load, self.leader_port, clients, args.warmup, args.requests)
        lat, elapsed, errors = trio.run(
            etcd_load, self.leader_port, clients, args.seconds, args.requests
        )
        return make_result("etcd", "remote", "put", clients, lat, elapsed, errors)

    def stop(self) -> None:
        stop_processes(self.procs)
        self.procs = []


def _etcd_put(key: str, value: bytes = b"") -> dict[str, str]:
    return {
        "key": base64.b64encode(key.encode()).decode(),
        "value": base64.b64encode(value).decode(),
    }


class HttpConnection:
    """A minimal keep-alive HTTP/1.1 client (POST JSON, one request at a time)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.stream: trio.SocketStream | None = None
        self.buf = bytearray()

    async def __aenter__(self) -> HttpConnection:
        self.stream = await trio.open_tcp_stream(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.stream is not None:
            await self.stream.aclose()

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        assert self.stream is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        await self.stream.send_all(head + body)
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            await self._fill()
        header = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[: end + 4]
        status = int(header[0].split()[1])
        fields = {}
        for line in header[1:]:
            k, _, v = line.partition(":")
            fields[k.strip().lower()] = v.strip()
        if "content-length" in fields:
            n = int(fields["content-length"])
            while len(self.buf) < n:
                await self._fill()
            data = bytes(self.buf[:n])
            del self.buf[:n]
            return status, data
        if fields.get("transfer-encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                while (eol := self.buf.find(b"\r\n")) < 0:
                    await self._fill()
                size = int(bytes(self.buf[:eol]).split(b";")[0], 16)
                del self.buf[: eol + 2]
                while len(self.buf) < size + 2:
                    await self._fill()
                out += self.buf[:size]
                del self.buf[: size + 2]
                if size == 0:
                    return status, bytes(out)
        raise RuntimeError("response without a length")

    async def _fill(self) -> None:
        assert self.stream is not None
        data = await self.stream.receive_some(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buf += data

    async def post_json(self, path: str, obj: object) -> Any:
        status, data = await self.post(path, json.dumps(obj).encode())
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {data[:200]!r}")
        return json.loads(data)


async def etcd_load(
    port: int, clients: int, seconds: float, max_requests: int
) -> tuple[list[float], float, int]:
    value = b"x" * 100
    bodies = [json.dumps(_etcd_put(f"k{j}", value)).encode() for j in range(KEYS)]
    lat: list[float] = []
    errors = [0]
    issued = [0]
    async with AsyncExitStack() as stack:
        conns = [
            await stack.enter_async_context(HttpConnection("127.0.0.1", port))
            for _ in range(clients)
        ]
        start = time.perf_counter()
        deadline = start + seconds

        async def worker(w: int) -> None:
            http = conns[w]
            i = w
            while time.perf_counter() < deadline and not (
                max_requests and issued[0] >= max_requests
            ):
                issued[0] += 1
                t = time.perf_counter()
                status, _ = await http.post("/v3/kv/put", bodies[i % KEYS])
                done = time.perf_counter()
                if status == 200:
                    lat.append((done - t) * 1000)
                else:
                    errors[0] += 1
                i += clients

        async with trio.open_nursery() as nursery:
            for w in range(clients):
                nursery.start_soon(worker, w)
        elapsed = time.perf_counter() - start
    return lat, elapsed, errors[0]


# -------------------------------------------------------------------- report


def median_result(results: list[Result]) -> Result:
    """The median of each column over the repeats of one configuration."""
    first = results[0]
    med = statistics.median
    rate = med(r.rate for r in results)
    return Result(
        first.system,
        first.mode,
        first.op,
        first.clients,
        count=round(rate * 1000),
        elapsed=1000.0,
        errors=sum(r.errors for r in results),
        p50=med(r.p50 for r in results),
        p99=med(r.p99 for r in results),
        p999=med(r.p999 for r in results),
    )


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                str(c).rjust(w) if i else str(c).ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    sep = (
        "|"
        + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths))
        + "|"
    )
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def fmt_ms(x: float) -> str:
    return "-" if x != x else f"{x:.2f}"


def report(medians: dict[tuple[str, str, str, int], Result], args: argparse.Namespace) -> str:
    out: list[str] = []
    order = {"docstore": 0, "trioraft": 1, "etcd": 2, "pysyncobj": 3}
    ops = {"put": 0, "linearizable": 1, "lease": 2, "local": 3}
    ranked = sorted(
        medians.values(),
        key=lambda r: (order.get(r.system, 9), r.mode, ops.get(r.op, 9), r.clients),
    )
    writes = [r for r in ranked if r.op == "put"]
    rows = [
        [
            r.system,
            r.mode,
            str(r.clients),
            fmt_rate(r.rate),
            fmt_ms(r.p50),
            fmt_ms(r.p99),
            fmt_ms(r.p999),
            str(r.errors),
        ]
        for r in writes
    ]
    out.append(f"### Writes (100-byte values, medians of {args.repeat} runs)\n")
    out.append(
        table(
            rows,
            ["system", "mode", "clients", "writes/s", "p50 ms", "p99 ms", "p99.9 ms", "errors"],
        )
    )
    reads = [r for r in ranked if r.op != "put"]
    if reads:
        rows = [
            [
                r.system,
                r.mode,
                r.op,
                str(r.clients),
                fmt_rate(r.rate),
                fmt_ms(r.p50),
                fmt_ms(r.p99),
                fmt_ms(r.p999),
            ]
            for r in reads
        ]
        out.append(f"\n### Reads (medians of {args.repeat} runs)\n")
        out.append(
            table(
                rows,
                [
                    "system",
                    "mode",
                    "consistency",
                    "clients",
                    "reads/s",
                    "p50 ms",
                    "p99 ms",
                    "p99.9 ms",
                ],
            )
        )
    # The product first: docstore against etcd, PySyncObj and the KV path.
    rows = []
    for c in args.client_counts:
        d = medians.get(("docstore", "remote", "put", c))
        cells = [str(c)]
        for theirs in (("etcd", "remote"), ("pysyncobj", "embedded"), ("trioraft", "remote")):
            b = medians.get((*theirs, "put", c))
            cells.append(f"{d.rate / b.rate:.2f}" if d and b and b.rate else "-")
        e = medians.get(("etcd", "remote", "put", c))
        cells.append(f"{e.p99 / d.p99:.2f}" if d and e and d.p99 else "-")
        rows.append(cells)
    if any(k[0] == "docstore" for k in medians):
        out.append("\n### docstore ratios (docstore / other: writes/s; p99: etcd's / docstore's)\n")
        out.append(
            table(
                rows,
                [
                    "clients",
                    "docstore/etcd",
                    "docstore/pysyncobj",
                    "docstore/KV",
                    "p99 etcd/docstore",
                ],
            )
        )

    # Ratios: above 1 means trioraft does more writes per second.
    rows = []
    for c in args.client_counts:
        cells = [str(c)]
        for mine, theirs in (
            (("trioraft", "remote"), ("etcd", "remote")),
            (("trioraft", "embedded"), ("etcd", "remote")),
            (("trioraft", "remote"), ("pysyncobj", "embedded")),
            (("trioraft", "embedded"), ("pysyncobj", "embedded")),
        ):
            a = medians.get((*mine, "put", c))
            b = medians.get((*theirs, "put", c))
            cells.append(f"{a.rate / b.rate:.2f}" if a and b and b.rate else "-")
            if mine[1] == "remote" and theirs[0] == "etcd":
                cells.append(f"{b.p99 / a.p99:.2f}" if a and b and a.p99 else "-")
        rows.append(cells)
    out.append("\n### Ratios (trioraft / other: writes/s; p99 column: other's p99 / trioraft's)\n")
    out.append(
        table(
            rows,
            [
                "clients",
                "remote/etcd",
                "p99 etcd/remote",
                "embedded/etcd",
                "remote/pysyncobj",
                "embedded/pysyncobj",
            ],
        )
    )

    # Targets.
    def get(mode: str, op: str, c: int) -> Result | None:
        return medians.get(("trioraft", mode, op, c))

    checks: list[tuple[str, float | None, float, bool]] = []

    def ds(op: str, c: int) -> Result | None:
        return medians.get(("docstore", "remote", op, c))

    d_one, d_top = ds("put", 1), ds("put", 256)
    d_lin = ds("linearizable", args.read_clients)
    checks.append(
        ("docstore: single writer writes/s", d_one.rate if d_one else None, 1300.0, False)
    )
    checks.append(("docstore: 256 writers writes/s", d_top.rate if d_top else None, 15000.0, False))
    checks.append(
        ("docstore: 256 writers p99 ms (at most)", d_top.p99 if d_top else None, 50.0, True)
    )
    checks.append(
        (
            f"docstore: linearizable gets, {args.read_clients} readers, /s",
            d_lin.rate if d_lin else None,
            30000.0,
            False,
        )
    )
    for c in args.client_counts:
        d, e = ds("put", c), medians.get(("etcd", "remote", "put", c))
        if d and e:
            checks.append(
                (f"docstore: ahead of etcd at {c} writers (writes/s)", d.rate, e.rate, False)
            )
    for c in (64, 256):
        d, k = ds("put", c), get("remote", "put", c)
        if d and k:
            # within 1.3x of the KV path: docstore's rate at least KV / 1.3
            checks.append(
                (f"docstore: within 1.3x of KV at {c} writers", d.rate, k.rate / 1.3, False)
            )
    one = get("remote", "put", 1)
    top = get("remote", "put", 256)
    emb = max(
        (r.rate for r in writes if r.system == "trioraft" and r.mode == "embedded"), default=None
    )
    lin = max(
        (r.rate for r in reads if r.system == "trioraft" and r.op == "linearizable"), default=None
    )
    checks.append(("KV: single client writes/s", one.rate if one else None, 1300.0, False))
    checks.append(("KV: 256 clients writes/s", top.rate if top else None, 15000.0, False))
    checks.append(("KV: 256 clients p99 ms (at most)", top.p99 if top else None, 50.0, True))
    checks.append(("KV: embedded writes/s (best)", emb, 30000.0, False))
    checks.append(("KV: linearizable reads/s (best)", lin, 30000.0, False))
    for c in args.client_counts:
        e, t = medians.get(("etcd", "remote", "put", c)), get("remote", "put", c)
        if e and t:
            checks.append((f"KV: ahead of etcd at {c} clients (writes/s)", t.rate, e.rate, False))
    rows = []
    for name, got, want, at_most in checks:
        if got is None:
            rows.append([name, "-", f"{want:,.1f}", "not measured"])
            continue
        ok = got <= want if at_most else got >= want
        gap = (
            ""
            if ok
            else f" ({got / want:.0%} of target)"
            if not at_most
            else f" ({got / want:.1f}x)"
        )
        rows.append([name, f"{got:,.1f}", f"{want:,.1f}", ("met" if ok else "MISSED") + gap])
    out.append("\n### Targets (KV: trioraft remote unless named)\n")
    out.append(table(rows, ["target", "measured", "target", "status"]))
    return "\n".join(out)


def plot(medians: dict[tuple[str, str, str, int], Result], path: str) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no plot"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[tuple[str, str], list[Result]] = {}
    for r in medians.values():
        if r.op == "put":
            series.setdefault((r.system, r.mode), []).append(r)
    rank = {"docstore": 0, "trioraft": 1, "etcd": 2, "pysyncobj": 3}
    for (system, mode), rs in sorted(series.items(), key=lambda kv: (rank.get(kv[0][0], 9), kv[0])):
        rs.sort(key=lambda r: r.clients)
        label = f"{system} {mode}"
        (line,) = ax.plot([r.rate for r in rs], [r.p99 for r in rs], "o-", label=f"{label} p99")
        ax.plot(
            [r.rate for r in rs],
            [r.p50 for r in rs],
            "x--",
            color=line.get_color(),
            label=f"{label} p50",
        )
        for r in rs:
            ax.annotate(
                str(r.clients),
                (r.rate, r.p99),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
    ax.set_xlabel("writes/s (100-byte values)")
    ax.set_ylabel("latency, ms (log)")
    ax.set_yscale("log")
    ax.set_title("3 nodes on one 2-core machine; labels: concurrent clients")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return f"plot written to {path}"


def _spy(pid: int, seconds: float, path: str) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy")
    if spy is None:
        return None
    cmd = [spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds)))]
    cmd += ["--rate", "250", "--threads", "--format", "raw", "--output", path, "--nonblocking"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _spy_result(proc: subprocess.Popen[bytes], path: str) -> str:
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0 and os.path.exists(path):
        return summarize_spy(path)
    return f"py-spy failed: {err.decode(errors='replace').strip()[-300:]}"


def profile_docstore(cluster: DocstoreCluster, args: argparse.Namespace) -> str:
    """Profile the docstore leader and this (client) process under a put load.

    py-spy on both when installed (all threads, wall clock: waiting shows);
    without it only the client, with cProfile.
    """
    clients = 64 if 64 in args.client_counts else max(args.client_counts)
    base = os.path.abspath(args.profile)
    seconds = max(2.0, args.seconds)
    addrs = list(cluster.addresses.values())
    head = f"-- docstore profile, {clients} writers through docstore.connect, {seconds:g} s --"
    leader_path, client_path = base + ".docstore-leader", base + ".docstore-client"
    leader = _spy(cluster.leader_pid(), seconds, leader_path)
    if leader is None:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        trio.run(docstore_load, addrs, "put", clients, seconds, 0, 0.5)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).strip_dirs().sort_stats("tottime").print_stats(25)
        text = buf.getvalue()
        return (
            head
            + "\nleader: py-spy is not installed (pip install py-spy): not profiled\n"
            + "client (cProfile, Trio thread):\n"
            + text[text.find("   ncalls") :]
        )
    client = _spy(os.getpid(), seconds, client_path)
    assert client is not None
    time.sleep(0.5)
    trio.run(docstore_load, addrs, "put", clients, seconds + 1, 0, 0.5)
    return "\n".join(
        [
            head + " (py-spy samples, all threads)",
            "leader (docstore serve):",
            _spy_result(leader, leader_path),
            "client (this process, docstore.connect):",
            _spy_result(client, client_path),
        ]
    )


def profile_leader(cluster: TrioraftCluster, args: argparse.Namespace) -> str:
    """Profile the leader under the top remote write load: py-spy if on the PATH, else cProfile."""
    assert cluster.leader is not None
    clients = max(args.client_counts)
    path = os.path.abspath(args.profile)
    head = f"-- leader profile, {clients} remote clients, {args.seconds:g} s --"
    spy = shutil.which("py-spy")
    if spy:
        pid = trio.run(control, cluster.leader, "profile", {"action": "pid"})
        cmd = [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(args.seconds))),
            "--rate",
            "250",
            "--threads",
            "--format",
            "raw",
            "--output",
            path,
            "--nonblocking",
        ]
        spy_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        trio.run(remote_load, cluster.leader, "put", clients, args.seconds + 1, 0, args.connections)
        _, err = spy_proc.communicate(timeout=60)
        if spy_proc.returncode == 0 and os.path.exists(path):
            return head + " (py-spy samples, all threads)\n" + summarize_spy(path)
        head += f" (py-spy failed: {err.decode(errors='replace').strip()[-200:]}; cProfile)"
    import io
    import pstats

    trio.run(control, cluster.leader, "profile", {"action": "start"})
    trio.run(remote_load, cluster.leader, "put", clients, args.seconds, 0, args.connections)
    trio.run(control, cluster.leader, "profile", {"action": "stop", "path": path})
    buf = [head + " (cProfile, Trio thread only)"]
    for key in ("tottime", "cumulative"):
        s = io.StringIO()
        pstats.Stats(path, stream=s).strip_dirs().sort_stats(key).print_stats(25)
        text = s.getvalue()
        buf.append(f"sorted by {key}:\n" + text[text.find("   ncalls") :])
    return "\n".join(buf)


def summarize_spy(path: str, top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, n_s = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(n_s)
            total += n
            frames = stack.split(";")
            threads[frames[0]] = threads.get(frames[0], 0) + n
            names = [_frame_name(fr) for fr in frames[1:]]
            if names:
                own[names[-1]] = own.get(names[-1], 0) + n
            for name in set(names):
                incl[name] = incl.get(name, 0) + n
    if not total:
        return "no samples"
    out = [
        f"{total} samples; by thread: "
        + ", ".join(
            f"{k} {v / total:.0%}" for k, v in sorted(threads.items(), key=lambda kv: -kv[1])[:4]
        )
    ]
    out.append("self time:")
    for name, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {n / total:6.1%}  {name}")
    out.append("inclusive (function and what it calls):")
    for name, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {n / total:6.1%}  {name}")
    return "\n".join(out)


def _frame_name(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    return f"{name} ({os.path.basename(file)})" if file else name


# ---------------------------------------------------------------------- main


@contextlib.contextmanager
def running(cluster: Any) -> Iterator[Any]:
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) // 1024} MiB RAM"
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {mem}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--systems", default="docstore,trioraft,pysyncobj,etcd")
    p.add_argument("--clients", default="1,64,256")
    p.add_argument("--read-clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--requests", type=int, default=0, help="stop a measurement after N ops")
    p.add_argument("--connections", type=int, default=4, help="trioraft client connections")
    p.add_argument("--quick", action="store_true", help="one short run of each (under a minute)")
    p.add_argument("--no-embedded", action="store_true")
    p.add_argument("--no-reads", action="store_true")
    p.add_argument(
        "--profile",
        metavar="PATH",
        help="profile the docstore leader and client (and the trioraft leader) under load;"
        " py-spy when installed, else cProfile where it can",
    )
    p.add_argument("--plot", metavar="PNG")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--dir", help="data directory (default: a temporary one, removed after)")
    args = p.parse_args()
    if args.quick:
        args.repeat, args.seconds, args.warmup = 1, min(args.seconds, 1.0), 0.2
    args.client_counts = [int(x) for x in args.clients.split(",")]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    root = args.dir or tempfile.mkdtemp(prefix="cluster-bench-")
    os.makedirs(root, exist_ok=True)
    print(f"machine: {machine()}")
    print(f"load average at start: {loadavg()}")
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}\n", flush=True)
    raw: dict[tuple[str, str, str, int], list[Result]] = {}

    def record(r: Result) -> None:
        raw.setdefault((r.system, r.mode, r.op, r.clients), []).append(r)
        print(
            f"  {r.system:9} {r.mode:8} {r.op:12} c={r.clients:<4} {r.rate:>9,.0f}/s  "
            f"p50 {fmt_ms(r.p50):>7}  p99 {fmt_ms(r.p99):>7}  p99.9 {fmt_ms(r.p999):>7} ms"
            + (f"  errors {r.errors}" if r.errors else ""),
            flush=True,
        )

    profile_text = ""
    try:
        for system in systems:
            t0 = time.monotonic()
            if system == "docstore":
                with running(DocstoreCluster(root)) as dcluster:
                    for _ in range(args.repeat):
                        for c in args.client_counts:
                            record(dcluster.measure("put", c, args))
                            for note in dcluster.notes:
                                print(f"    {note}", flush=True)
                        if not args.no_reads:
                            for op in ("linearizable", "lease", "local"):
                                record(dcluster.measure(op, args.read_clients, args))
                    if args.profile:
                        profile_text += profile_docstore(dcluster, args) + "\n\n"
            elif system == "trioraft":
                with running(TrioraftCluster(root)) as cluster:
                    for _ in range(args.repeat):
                        for c in args.client_counts:
                            record(trioraft_measure(cluster, "remote", "put", c, args))
                            if not args.no_embedded:
                                record(trioraft_measure(cluster, "embedded", "put", c, args))
                        if not args.no_reads:
                            for op in ("linearizable", "lease", "local"):
                                record(
                                    trioraft_measure(cluster, "remote", op, args.read_clients, args)
                                )
                                if not args.no_embedded:
                                    record(
                                        trioraft_measure(
                                            cluster, "embedded", op, args.read_clients, args
                                        )
                                    )
                    if args.profile:
                        profile_text += profile_leader(cluster, args)
            elif system == "pysyncobj":
                try:
                    import pysyncobj  # noqa: F401
                except ImportError:
                    print("pysyncobj: not installed (pip install -e '.[bench]'); skipped")
                    continue
                with running(PySyncObjCluster(root)) as cluster:
                    for _ in range(args.repeat):
                        for c in args.client_counts:
                            record(cluster.measure(c, args))
            elif system == "etcd":
                binary = shutil.which("etcd")
                if binary is None:
                    print("etcd: no etcd binary on the PATH (Debian: etcd-server); skipped")
                    continue
                version = subprocess.run([binary, "--version"], capture_output=True, text=True)
                print(f"etcd: {version.stdout.splitlines()[0] if version.stdout else binary}")
                with running(EtcdCluster(root, binary)) as cluster:
                    for _ in range(args.repeat):
                        for c in args.client_counts:
                            record(cluster.measure(c, args))
            else:
                raise SystemExit(f"unknown system {system!r}")
            print(
                f"{system}: {time.monotonic() - t0:.0f} s, load average {loadavg()}\n", flush=True
            )
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    medians = {k: median_result(v) for k, v in raw.items()}
    print(report(medians, args))
    print(f"\nload average at end: {loadavg()}")
    if args.plot:
        print(plot(medians, args.plot))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": machine(),
                    "argv": sys.argv,
                    "runs": [{**asdict(r), "rate": r.rate} for rs in raw.values() for r in rs],
                },
                f,
                indent=1,
            )
    if profile_text:
        print("\n" + profile_text)


if __name__ == "__main__":
    main()
