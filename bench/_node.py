"""One trioraft node for bench/cluster_bench.py (run by it; not meant to be run by hand).

Usage: ``python bench/_node.py --id N --listen HOST:PORT --peer ID=HOST:PORT ... --data DIR``

It serves the generic client service (``propose`` / ``read`` / ``status``,
``Node.call``) plus two kinds only the benchmark uses:

* ``bench``: run a workload *inside* this process (the "embedded" numbers):
  payload ``{"op": "put" | "linearizable" | "lease" | "local", "clients": C,
  "seconds": S, "size": B}``; answers ``{"count", "elapsed", "lat_ms"}`` with
  the sorted per-operation latencies (milliseconds, rounded to microseconds);
* ``profile``: ``{"action": "start"}`` turns cProfile on in this process,
  ``{"action": "stop", "path": P}`` turns it off and dumps the stats to P.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import sys
import time
from typing import Any

import trio
import trio.lowlevel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import contextlib

from bench.cluster.common import embedded_answer
from trioraft.kv import KVStateMachine, encode_command
from trioraft.runtime import (
    ClientService,
    Node,
    NodeConfig,
    NotLeaderError,
    Session,
    generic_service,
    serve_node,
    tune_gc,
)
from trioraft.transport.messages import ClientRequest

_profiler: cProfile.Profile | None = None


async def run_workload(node: Node, spec: dict[str, Any]) -> dict[str, Any]:
    """C concurrent tasks doing one operation each in a loop for S seconds."""
    op = spec["op"]
    clients = int(spec["clients"])
    seconds = float(spec["seconds"])
    value = b"x" * int(spec.get("size", 100))
    lat: list[float] = []
    errors = [0]
    deadline = trio.current_time() + seconds
    start = time.perf_counter()

    async def worker(w: int) -> None:
        i = 0
        while trio.current_time() < deadline:
            t = time.perf_counter()
            try:
                if op == "put":
                    await node.propose(
                        encode_command("put", f"k{(w + i * clients) % 1000}", value=value)
                    )
                else:
                    await node.read({"op": "get", "key": f"k{i % 1000}"}, consistency=op)
            except NotLeaderError:
                errors[0] += 1
                return
            except Exception:
                errors[0] += 1
                continue
            lat.append(time.perf_counter() - t)
            i += 1
            # A "local" read never yields; without this the loop would starve
            # the node's own heartbeats (and lose the leadership).
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for w in range(clients):
            nursery.start_soon(worker, w)
    return embedded_answer(lat, time.perf_counter() - start, errors[0])


def profile_control(spec: dict[str, Any]) -> str:
    global _profiler
    if spec.get("action") == "pid":
        return str(os.getpid())
    if spec.get("action") == "start":
        _profiler = cProfile.Profile()
        _profiler.enable()
        return "started"
    if _profiler is None:
        return "not running"
    _profiler.disable()
    _profiler.dump_stats(spec["path"])
    _profiler = None
    return "dumped"


def bench_service(node: Node) -> ClientService:
    """The node's generic client service plus the bench's ``bench`` and ``profile`` kinds."""

    async def bench(session: Session, req: ClientRequest) -> object:
        assert isinstance(req.payload, dict)
        return await run_workload(session.node, req.payload)

    async def profile(session: Session, req: ClientRequest) -> object:
        assert isinstance(req.payload, dict)
        return profile_control(req.payload)

    service = generic_service(node)
    service.on_call("bench", bench)
    service.on_call("profile", profile)
    return service


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--peer", action="append", default=[])
    p.add_argument("--data", required=True)
    p.add_argument("--secret", default="bench-secret")
    p.add_argument("--token", default="bench-token")
    a = p.parse_args()
    peers = {int(k): v for k, v in (s.split("=", 1) for s in a.peer)}
    config = NodeConfig(
        node_id=a.id,
        data_dir=os.path.join(a.data, "raft"),
        listen=a.listen,
        peers=peers,
        cluster_id="bench",
        cluster_secret=a.secret.encode(),
        client_tokens={"bench": a.token.encode()},
        election_timeout_min=1.0,
        election_timeout_max=2.0,
        snapshot_entries=200_000,
    )
    sm = KVStateMachine(os.path.join(a.data, "kv"))
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: serve_node(
                config, sm, client_service=bench_service, task_status=task_status
            )
        )
        print("ready", flush=True)


if __name__ == "__main__":
    tune_gc()  # as ``docstore serve`` does: the two clusters' nodes run alike
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main)
