"""The trioraft KV path: three bench/_node.py processes, driven remotely or in the leader."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from typing import Any

import trio

from bench.cluster.common import (
    BENCH,
    CLIENT_ID,
    CLUSTER_ID,
    KEYS,
    TOKEN,
    Result,
    closed_loop,
    free_ports,
    make_result,
    stop_processes,
)
from bench.cluster.spy import summarize_spy
from trioraft.client import open_client_connection
from trioraft.client.connection import Connection
from trioraft.kv import encode_command
from trioraft.transport.messages import ClientRequest


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
            cmd = [sys.executable, os.path.join(BENCH, "_node.py"), "--id", str(n)]
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
    async with AsyncExitStack() as stack:
        conns: list[Connection] = [
            await stack.enter_async_context(connect(addr))
            for _ in range(max(1, min(clients, connections)))
        ]

        async def call(w: int, i: int) -> bool:
            j = i % KEYS
            if op == "put":
                req = ClientRequest(0, "propose", commands[j])
            else:
                req = ClientRequest(0, "read", queries[j], consistency=op)
            resp = await conns[w % len(conns)].call(req)
            return resp.ok

        return await closed_loop(clients, seconds, max_requests, call)


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
