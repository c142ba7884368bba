"""End to end: real processes started by the ``docstore`` command, real sockets, kill -9.

Short by default; ``TRIORAFT_SLOW=1`` writes more and waits longer.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from typing import Any

import cbor2
import pytest
import trio

import docstore
from docstore.clusterfile import write_cluster_file
from tests.conftest import SLOW

WRITES = 200 if SLOW else 20
TIMING = [
    "--election-timeout-min",
    "0.3",
    "--election-timeout-max",
    "0.6",
    "--heartbeat-interval",
    "0.05",
]


def free_base_port(n: int = 3, *, also_at: int | None = None) -> int:
    """A base port with ``n`` free ports from there (and ``n`` more at ``+also_at``)."""
    for _ in range(100):
        base = random.randrange(20000, 60000)
        starts = [base] if also_at is None else [base, base + also_at]
        socks: list[socket.socket] = []
        try:
            for p in [start + i for start in starts for i in range(n)]:
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free ports")


def cluster_dir(path: pathlib.Path, **settings: Any) -> pathlib.Path:
    """A new directory holding a cluster.toml of ``settings`` and three nodes on free ports."""
    path.mkdir()
    base = free_base_port()
    nodes = {str(i): f"127.0.0.1:{base + i - 1}" for i in (1, 2, 3)}
    write_cluster_file(str(path), {"cluster_id": "docstore", **settings, "nodes": nodes})
    return path


def docstore_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "docstore", *args]


class ClusterProcess:
    """``docstore cluster`` running in a child process, plus nodes restarted by hand."""

    def __init__(self, directory: pathlib.Path, base_port: int | None) -> None:
        self.dir = directory
        self.out = open(directory.parent / f"{directory.name}.out", "wb")  # noqa: SIM115
        ports = [] if base_port is None else ["--base-port", str(base_port)]
        self.proc = subprocess.Popen(
            docstore_cmd("cluster", "--dir", str(directory), *ports, *TIMING),
            stdout=self.out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.extra: list[subprocess.Popen[bytes]] = []
        self.killed: list[int] = []

    def wait_ready(self, limit: float = 30) -> None:
        deadline = time.monotonic() + limit
        path = self.dir.parent / f"{self.dir.name}.out"
        while time.monotonic() < deadline:
            text = path.read_text(errors="replace")
            if "Ctrl-C stops every node" in text:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"docstore cluster exited: {text}")
            time.sleep(0.05)
        raise AssertionError("docstore cluster did not become ready")

    @property
    def info(self) -> dict[str, Any]:
        with open(self.dir / "cluster.toml", "rb") as f:
            return tomllib.load(f)

    @property
    def addresses(self) -> list[str]:
        return [a for _, a in sorted(self.info["nodes"].items())]

    @property
    def token(self) -> str:
        return str(self.info["token"])

    def pid(self, n: int) -> int:
        return int((self.dir / f"node{n}.pid").read_text())

    def sigkill(self, n: int) -> None:
        pid = self.pid(n)
        os.kill(pid, signal.SIGKILL)
        self.killed.append(pid)

    def restart(self, n: int) -> None:
        log = open(self.dir / f"node{n}.restarted.log", "wb")  # noqa: SIM115
        self.extra.append(
            subprocess.Popen(
                docstore_cmd(
                    "serve", "--config", str(self.dir / "cluster.toml"), "--id", str(n), *TIMING
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        )
        log.close()

    def stop(self) -> None:
        procs = [self.proc, *self.extra]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        # Whatever the supervisor could not stop (it was killed, or the test failed early).
        for f in self.dir.glob("node*.pid"):
            with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
                os.kill(int(f.read_text()), signal.SIGKILL)
        self.out.close()


@pytest.fixture
def start_cluster(tmp_path: pathlib.Path) -> Iterator[Any]:
    started: list[ClusterProcess] = []

    def start(name: str = "cluster", fresh: bool = True) -> ClusterProcess:
        c = ClusterProcess(tmp_path / name, free_base_port() if fresh else None)
        started.append(c)
        c.wait_ready()
        return c

    try:
        yield start
    finally:
        for c in started:
            c.stop()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(docstore_cmd(*args), capture_output=True, text=True, timeout=60)


async def wait_digests_equal(db: docstore.RemoteDatabase, nodes: int = 3) -> str:
    while True:
        digests = await db.node_digests()
        if len(digests) == nodes and len({d["applied_index"] for d in digests.values()}) == 1:
            values = {d["digest"] for d in digests.values()}
            assert len(values) == 1, digests
            return str(values.pop())
        await trio.sleep(0.1)


async def leader_of(db: docstore.RemoteDatabase) -> int:
    m = await db.members()
    return int(m["leader_id"])


async def test_kill_leader_writes_continue_and_it_catches_up(start_cluster: Any) -> None:
    c: ClusterProcess = start_cluster()
    with trio.fail_after(90 if SLOW else 45):
        async with docstore.connect(c.addresses, token=c.token, call_timeout=20) as db:
            docs = db.collection("docs")
            for i in range(WRITES):
                await docs.put(f"k{i}", {"i": i})
            leader = await leader_of(db)
            c.sigkill(leader)
            # Writes go on through the election (the client retries and follows).
            for i in range(WRITES, 2 * WRITES):
                await docs.put(f"k{i}", {"i": i})
            assert await leader_of(db) != leader
            assert await docs.count() == 2 * WRITES
            c.restart(leader)
            await wait_digests_equal(db)
            status = await db.status()
            assert {s["role"] for s in status} == {"leader", "follower"}


def split_ws_frame(buf: bytes) -> tuple[int, bytes, int] | None:
    """The first unmasked WebSocket frame in ``buf``: (opcode, payload, its length in buf)."""
    if len(buf) < 2:
        return None
    n, at = buf[1] & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, at = int.from_bytes(buf[2:4]), 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, at = int.from_bytes(buf[2:10]), 10
    if len(buf) < at + n:
        return None
    return buf[0] & 0x0F, buf[at : at + n], at + n


class LossyProxy:
    """TCP proxy that, once armed, drops the server's next data frame and cuts the connection.

    The request went through whole (the server received it); exactly its
    reply is lost.  Control frames pass.  Later connections pass untouched.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.armed = False
        self.dropped: list[bytes] = []  # payloads of the frames dropped
        self.connections = 0
        self.port = 0

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        host, _, port = self.upstream.rpartition(":")
        async with client, await trio.open_tcp_stream(host, int(port)) as server:

            async def requests() -> None:
                while data := await client.receive_some(65536):
                    await server.send_all(data)

            async def replies(cut: trio.CancelScope) -> None:
                buf = b""
                while data := await server.receive_some(65536):
                    if not self.armed:
                        await client.send_all(data)
                        continue
                    buf += data
                    while (frame := split_ws_frame(buf)) is not None:
                        opcode, payload, size = frame
                        if opcode == 0x2:  # binary: a data frame, the reply
                            self.armed = False
                            self.dropped.append(payload)
                            cut.cancel()  # the connection ends without the reply
                            return
                        await client.send_all(buf[:size])
                        buf = buf[size:]

            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(requests)
                    nursery.start_soon(replies, nursery.cancel_scope)


async def test_write_whose_reply_is_lost_applies_once(start_cluster: Any) -> None:
    c: ClusterProcess = start_cluster()
    with trio.fail_after(30):
        async with docstore.connect(c.addresses, token=c.token, call_timeout=10) as db:
            await db.collection("x").put("warmup", {})
            leader = await leader_of(db)
        proxy = LossyProxy(c.info["nodes"][str(leader)])
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.serve)
            proxy_addr = f"127.0.0.1:{proxy.port}"
            async with docstore.connect([proxy_addr], token=c.token, call_timeout=10) as db:
                counter = db.collection("counter")
                await counter.put("n", {"v": 0})
                assert proxy.connections == 1
                proxy.armed = True
                # The leader applies the increment; its reply is dropped and the
                # connection cut, so the client retries the same request on a
                # new connection and must get the first application's answer.
                rev = await counter.patch("n", {"$inc": {"v": 1}})
                assert len(proxy.dropped) == 1 and proxy.connections == 2
                lost = cbor2.loads(proxy.dropped[0])["m"]
                assert [m[0] for m in lost] == [33]  # one ClientResponse
                doc = await counter.get("n")
                assert doc is not None and doc["v"] == 1 and doc["_rev"] == rev
            nursery.cancel_scope.cancel()


async def test_restore_backup_into_fresh_cluster(
    start_cluster: Any, tmp_path: pathlib.Path
) -> None:
    c: ClusterProcess = start_cluster("a")
    with trio.fail_after(60):
        async with docstore.connect(c.addresses, token=c.token, call_timeout=10) as db:
            await db.collection("users").create_index("age")
            for i in range(WRITES):
                await db.collection("users").put(f"u{i}", {"age": i})
            await db.collection("users").delete("u0")
            digest_a = await db.digest()
            replica_a = await wait_digests_equal(db)
        backup = tmp_path / "backup.snap"
        r = run_cli("backup", str(backup), "--dir", str(c.dir))
        assert r.returncode == 0, r.stderr
        fresh = tmp_path / "b"
        r = run_cli(
            "restore", str(backup), "--dir", str(fresh), "--base-port", str(free_base_port())
        )
        assert r.returncode == 0, r.stderr
        b2 = start_cluster("b", fresh=False)  # ports and token from restore's cluster.toml
        async with docstore.connect(b2.addresses, token=b2.token, call_timeout=10) as db:
            assert await db.digest() == digest_a
            assert await wait_digests_equal(db) == replica_a
            assert await db.collection("users").count() == WRITES - 1


def test_cli_errors_are_one_line(tmp_path: pathlib.Path) -> None:
    r = run_cli("status", "--cluster", "127.0.0.1:9", "--token", "t", "--timeout", "1")
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and "unreachable" in r.stderr
    r = run_cli("put", "c", "k", "{bad", "--cluster", "127.0.0.1:9", "--token", "t")
    assert r.returncode == 2 and "not valid JSON" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("get", "c", "k", "--dir", str(tmp_path))
    assert r.returncode == 2 and "no cluster given" in r.stderr
