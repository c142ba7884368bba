"""The docstore cluster: three ``docstore serve`` processes driven through ``docstore.connect``."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from typing import Any

import trio

import docstore
from bench.cluster.common import (
    BENCH,
    KEYS,
    Result,
    closed_loop,
    free_ports,
    make_result,
    stop_processes,
)
from bench.cluster.spy import spy_result, start_spy

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
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=os.path.dirname(BENCH)
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
            docstore_load,
            addrs,
            op,
            clients,
            args.seconds,
            args.requests,
            args.warmup,
            self.notes,
            args.docstore_connections,
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
    connections: int = 2,
) -> tuple[list[float], float, int]:
    """C virtual clients sharing one ``docstore.connect``, each one call in flight.

    ``connections``: the client's connections to the leader (queries are
    spread over them; ``docstore.connect``'s default is 2).

    ``notes`` gets, during the measurement, the leader's requests per client
    frame and, for puts, its entries per fsync, for gets its frames to peers
    per 100 gets (from its ``status`` counters).

    The warm-up runs on the same client, so the measurement starts with its
    connection open and its write lanes' sessions registered (as in a
    long-running application), not with one session opening per writer.
    """
    keys = [f"k{j}" for j in range(KEYS)]
    async with docstore.connect(addresses, token=DOCSTORE_TOKEN, connections=connections) as db:
        coll = db.collection("bench")
        if warmup > 0:
            await _docstore_phase(coll, keys, op, clients, warmup, 0)
        leader = (await db.members())["addresses"]
        before = await _leader_counters(db, leader)
        out = await _docstore_phase(coll, keys, op, clients, seconds, max_requests)
        after = await _leader_counters(db, leader)
    if before and after and notes is not None:
        d = {k: after[k] - before[k] for k in before}
        ops = len(out[0])
        per_frame = f"{ops / max(1, d['client_frames_in']):.1f} requests per client frame"
        if op == "put":
            fsync = f"{d['persist_entries'] / max(1, d['persist_batches']):.1f} entries per fsync"
            notes.append(f"{fsync}, {per_frame} (leader)")
        else:  # a read round is a frame to each follower
            peers = f"{100 * d['peer_frames_out'] / max(1, ops):.1f} peer frames per 100 gets"
            notes.append(f"{per_frame}, {peers} (leader)")
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
    async def call(w: int, i: int) -> bool:
        key = keys[i % KEYS]
        try:
            if op == "put":
                await coll.put(key, DOC)
            else:
                await coll.get(key, consistency=op)
        except Exception:
            return False
        return True

    return await closed_loop(clients, seconds, max_requests, call)


async def _fill(coll: Any, keys: list[str]) -> None:
    for k in keys:
        await coll.put(k, DOC)


def profile_docstore(cluster: DocstoreCluster, args: argparse.Namespace) -> str:
    """Profile the docstore leader and this (client) process under a load of
    ``args.profile_op``: puts, or gets of one consistency (``--read-clients`` readers).

    py-spy on both when installed (all threads, wall clock: waiting shows);
    without it only the client, with cProfile.
    """
    op = args.profile_op
    if op == "put":
        clients = 64 if 64 in args.client_counts else max(args.client_counts)
        who = f"{clients} writers"
    else:
        clients = args.read_clients
        who = f"{clients} {op} readers"
    base = os.path.abspath(args.profile)
    seconds = max(2.0, args.seconds)
    addrs = list(cluster.addresses.values())
    head = f"-- docstore profile, {who} through docstore.connect, {seconds:g} s --"
    leader_path, client_path = base + ".docstore-leader", base + ".docstore-client"
    leader = start_spy(cluster.leader_pid(), seconds, leader_path)
    if leader is None:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        trio.run(
            docstore_load, addrs, op, clients, seconds, 0, 0.5, None, args.docstore_connections
        )
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
    client = start_spy(os.getpid(), seconds, client_path)
    assert client is not None
    time.sleep(0.5)
    trio.run(
        docstore_load, addrs, op, clients, seconds + 1, 0, 0.5, None, args.docstore_connections
    )
    return "\n".join(
        [
            head + " (py-spy samples, all threads)",
            "leader (docstore serve):",
            spy_result(leader, leader_path),
            "client (this process, docstore.connect):",
            spy_result(client, client_path),
        ]
    )
