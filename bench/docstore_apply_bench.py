"""CPU per docstore write and per linearizable get, one process, no network.

Run: ``python bench/docstore_apply_bench.py [--n 20000] [--batch 64] [--lanes 64]
[--runs 3] [--only apply,server,client,query] [--profile apply]``

Each part times the code a cluster runs per request, in the order it runs,
with the network and Raft left out:

* ``apply``: :meth:`DocstoreStateMachine.apply` of N ``put`` entries (100-byte
  documents under 1,000 keys, one session per lane, sequences increasing per
  lane, as ``docstore.connect`` sends them) in chunks of ``--batch`` entries,
  as a follower applies them after an AppendEntries; the apply log is
  written to a temporary directory (flushed once per chunk, not fsynced:
  the fsync is the Raft log's and the disk's cost, not CPU).
* ``server``: the leader's per-request work before the proposal: the client
  frame of ``--batch`` requests decoded, then :class:`DocstoreService`'s
  authorisation, session name and command check for each.
* ``client``: ``docstore.connect``'s per-put work before the wire: the command
  built and checked, encoded once, its request framed (a frame of
  ``--batch`` requests, as the connection's sender sends them).
* ``call``: ``coll.put`` through ``docstore.connect``'s executor (lanes,
  sessions, retry loop and timeout) from ``--lanes`` tasks, to a connection
  that answers at once: the client's per-call work but the codec and socket.
* ``query``: a ``get`` on the leader: the server's query check and
  :meth:`DocstoreStateMachine.query` (the Raft round of a linearizable read
  is the KV path's too and is not measured here).

``--cpu WRITERS`` measures instead, end to end, the CPU milliseconds per
write of each process (leader, followers, the client) of a 3-node docstore
cluster under WRITERS writers through ``docstore.connect``, then of the
trioraft KV path, with bench/cluster's processes and loads.  With
``--cpu-op linearizable`` (or ``lease``, ``local``) the WRITERS are readers
and the figures are per get.

Prints entries (or requests) per second of CPU time and CPU microseconds
per entry (``time.process_time``: a shared machine's other processes inflate
it less than wall time), the median of ``--runs`` runs; compare runs made
back to back.  ``--profile PART`` prints a cProfile of one more run of PART.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from docstore import commands as C
from docstore.client import RemoteDatabase, RemoteExecutor, _Link
from docstore.engine.validate import must_measure, validate_query
from docstore.engine.values import check_key
from docstore.server import DocstoreService, ServerConfig
from docstore.state_machine import OPEN_SESSION, DocstoreStateMachine
from trioraft.core.types import Entry
from trioraft.transport.codec import decode_frame, encode_frame, encode_value
from trioraft.transport.messages import ClientRequest, ClientResponse

DOC = {"v": "x" * 96}
KEYS = 1000
SESSION = "docstore/0123456789abcdef"
T0 = 1_700_000_000_000


def _entries(n: int, lanes: int) -> list[Entry]:
    """Session openings for every lane, then ``n`` puts round-robin over the lanes."""
    out: list[Entry] = []
    index = 1
    open_data = encode_value(OPEN_SESSION)
    for lane in range(1, lanes + 1):
        out.append(Entry(index, 1, data=open_data, client_id=f"{SESSION}.{lane}", timestamp_ms=T0))
        index += 1
    seqs = [0] * (lanes + 1)
    for i in range(n):
        lane = i % lanes + 1
        seqs[lane] += 1
        data = encode_value(C.put("bench", f"k{i % KEYS:04}", DOC), "command")
        out.append(
            Entry(
                index,
                1,
                data=data,
                client_id=f"{SESSION}.{lane}",
                sequence=seqs[lane],
                timestamp_ms=T0 + i,
            )
        )
        index += 1
    return out


def bench_apply(n: int, batch: int, lanes: int) -> Callable[[], float]:
    entries = _entries(n, lanes)
    head, body = entries[:lanes], entries[lanes:]
    chunks = [body[i : i + batch] for i in range(0, len(body), batch)]

    def run() -> float:
        tmp = tempfile.mkdtemp(prefix="ds-apply-")
        try:

            async def main() -> float:
                sm = DocstoreStateMachine(tmp, sync=False)
                await sm.start()
                await sm.apply(head)
                await sm.flush()
                t = time.process_time()
                for chunk in chunks:
                    results = await sm.apply(chunk)
                    assert results[-1]["ok"] is True, results[-1]  # type: ignore[index]
                elapsed = time.process_time() - t
                await sm.close()
                return elapsed

            return trio.run(main)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    return run


class _Conn:
    client_id = "docstore"


class _State:
    role = "write"


class _Session:
    """What DocstoreService's command path reads of a connection's session."""

    conn = _Conn()
    client_id = "docstore"
    state = _State()


def _frames(n: int, batch: int, request: Callable[[int], ClientRequest]) -> list[bytes]:
    """Requests ``request(0)`` to ``request(n - 1)``, encoded ``batch`` to a client frame."""
    return [
        encode_frame(
            [request(i) for i in range(start, min(n, start + batch))], cluster_id="docstore"
        )
        for start in range(0, n, batch)
    ]


def bench_server(n: int, batch: int, lanes: int) -> Callable[[], float]:
    tmp = tempfile.mkdtemp(prefix="ds-server-")
    sm = DocstoreStateMachine(tmp, sync=False)
    service = DocstoreService(sm, ServerConfig())

    def put(i: int) -> ClientRequest:
        return ClientRequest(
            request_id=i + 1,
            kind="command",
            payload=encode_value(C.put("bench", f"k{i % KEYS:04}", DOC), "command"),
            client_id=f"0123456789abcdef.{i % lanes + 1}",
            sequence=i // lanes + 1,
        )

    frames = _frames(n, batch, put)
    session: Any = _Session()

    def run() -> float:
        t = time.process_time()
        for frame in frames:
            for req in decode_frame(frame, cluster_id="docstore"):
                assert isinstance(req, ClientRequest)
                service._authorize(session, req)
                data = service._check_command(session, req)
                cid = service._session(session.client_id, req)
                assert data and cid
        return time.process_time() - t

    shutil.rmtree(tmp, ignore_errors=True)
    return run


def bench_client(n: int, batch: int, lanes: int) -> Callable[[], float]:
    def run() -> float:
        t = time.process_time()
        reqs = []
        for i in range(n):
            key = f"k{i % KEYS:04}"
            cmd = C.put("bench", key, DOC)
            C.validate_command(cmd, sizes=False)  # Database._execute
            data = encode_value(cmd, "command")  # RemoteExecutor.execute
            if must_measure(len(data)):
                C.validate_command(cmd)
            reqs.append(
                ClientRequest(
                    i + 1, "command", data, f"0123456789abcdef.{i % lanes + 1}", i // lanes + 1
                )
            )
            if len(reqs) == batch:
                encode_frame(reqs, cluster_id="docstore")
                reqs = []
        return time.process_time() - t

    return run


class _FakeConn:
    """A connection that answers every call at once (what the client does per call,
    without the socket): a put's result, or a get's document."""

    closed = False
    remote = "fake"

    def __init__(self) -> None:
        self.rev = 0

    async def call(self, req: ClientRequest, *, deadline: float = math.inf) -> ClientResponse:
        self.rev += 1
        if req.kind == "query":
            return ClientResponse(req.request_id, True, {"ok": True, "value": dict(DOC)})
        return ClientResponse(req.request_id, True, {"ok": True, "rev": self.rev, "key": "k"})


def bench_client_call(n: int, batch: int, lanes: int) -> Callable[[], float]:
    """``coll.put`` through ``docstore.connect``'s executor to a connection that
    answers at once, ``lanes`` tasks at a time (the bench's writers)."""

    def run() -> float:
        async def main() -> float:
            ex = RemoteExecutor(["fake"], token="t")
            ex._link = _Link(_FakeConn(), trio.Event())  # type: ignore[arg-type]
            db = RemoteDatabase(ex)
            coll = db.collection("bench")
            per = n // lanes

            async def writer(w: int) -> None:
                for i in range(per):
                    await coll.put(f"k{(w * per + i) % KEYS:04}", DOC)

            t = time.process_time()
            async with trio.open_nursery() as nursery:
                for w in range(lanes):
                    nursery.start_soon(writer, w)
            return (time.process_time() - t) * n / (per * lanes)

        return trio.run(main)

    return run


def bench_query(n: int, batch: int, lanes: int) -> Callable[[], float]:
    tmp = tempfile.mkdtemp(prefix="ds-query-")

    async def setup() -> DocstoreStateMachine:
        sm = DocstoreStateMachine(tmp, sync=False)
        await sm.start()
        await sm.apply(_entries(KEYS, lanes))
        return sm

    sm = trio.run(setup)
    service = DocstoreService(sm, ServerConfig())

    def get(i: int) -> ClientRequest:
        query = {"op": "get", "coll": "bench", "key": check_key(f"k{i % KEYS:04}")}
        return ClientRequest(request_id=i + 1, kind="query", payload=query)

    frames = _frames(n, batch, get)
    session: Any = _Session()

    def run() -> float:
        async def main() -> float:
            t = time.process_time()
            for frame in frames:
                for req in decode_frame(frame, cluster_id="docstore"):
                    assert isinstance(req, ClientRequest)
                    service._authorize(session, req)
                    # DocstoreService._query without the Raft round of node.read
                    validate_query(req.payload, sm.limits)
                    out = await sm.query(req.payload)
                    assert out["ok"] is True  # type: ignore[index]
            return time.process_time() - t

        return trio.run(main)

    shutil.rmtree(tmp, ignore_errors=True)
    return run


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_write(
    seconds: float, clients: int, runs: int, op: str = "put", connections: int = 2
) -> None:
    """CPU ms per operation of each process: a 3-node docstore cluster under ``clients``
    writers (``op`` "put") or readers (a consistency) through ``docstore.connect``,
    then the trioraft KV path (bench/cluster)."""
    from bench.cluster import docstore as ds
    from bench.cluster import kv

    root = tempfile.mkdtemp(prefix="ds-cpu-")
    rows: dict[str, list[dict[str, float]]] = {"docstore": [], "KV": []}
    try:
        for name in ("docstore", "KV"):
            cluster: Any = (ds.DocstoreCluster if name == "docstore" else kv.TrioraftCluster)(root)
            cluster.start()
            try:
                if name == "docstore":
                    leader = cluster.leader_pid()
                    pids = {n: p.pid for n, p in cluster.procs.items()}
                    target: Any = list(cluster.addresses.values())
                    load_fn: Any = ds.docstore_load
                    # No warm-up inside the load; the client's connections to the leader.
                    extra: tuple[Any, ...] = (0.0, None, connections)
                else:
                    pids = {i + 1: p.pid for i, p in enumerate(cluster.procs)}
                    leader_n = {a: n for n, a in cluster.addresses.items()}[cluster.leader]
                    leader = pids[leader_n]
                    target, load_fn, extra = cluster.leader, kv.remote_load, (4,)  # connections

                def load(s: float, fn: Any = load_fn, to: Any = target, x: Any = extra) -> int:
                    lat, _, _ = trio.run(fn, to, op, clients, s, 0, *x)
                    return len(lat)

                load(1.0)  # warm-up: connections, sessions
                for _ in range(runs):
                    before = {n: _cpu_seconds(pid) for n, pid in pids.items()}
                    own = time.process_time()
                    ops = load(seconds)
                    own = time.process_time() - own
                    after = {n: _cpu_seconds(pid) for n, pid in pids.items()}
                    per = {n: (after[n] - before[n]) * 1000 / ops for n in pids}
                    lead = next(n for n, pid in pids.items() if pid == leader)
                    follow = [v for n, v in per.items() if n != lead]
                    rows[name].append(
                        {
                            "ops/s": ops / seconds,
                            "leader": per[lead],
                            "follower": sum(follow) / len(follow),
                            "client": own * 1000 / ops,
                            "total": sum(per.values()) + own * 1000 / ops,
                        }
                    )
            finally:
                cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    what = "write" if op == "put" else f"{op} get"
    print(f"CPU ms per {what}, {clients} clients, {seconds:g} s, median of {runs}:")
    print("              ops/s   leader  follower  client   total")
    for name, rs in rows.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        print(
            f"{name:9} {med['ops/s']:9,.0f} {med['leader']:8.3f} {med['follower']:9.3f}"
            f" {med['client']:7.3f} {med['total']:7.3f}"
        )


PARTS: dict[str, Callable[[int, int, int], Callable[[], float]]] = {
    "apply": bench_apply,
    "server": bench_server,
    "client": bench_client,
    "call": bench_client_call,
    "query": bench_query,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=20000, help="entries (requests) per run")
    p.add_argument("--batch", type=int, default=64, help="entries per apply / requests per frame")
    p.add_argument("--lanes", type=int, default=64, help="client sessions (write lanes)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--only", default=",".join(PARTS), help="parts, comma-separated")
    p.add_argument("--profile", default="", help="print a cProfile of one more run of PART")
    p.add_argument(
        "--cpu",
        type=int,
        default=0,
        metavar="WRITERS",
        help="instead: CPU ms per write of each process of a docstore and a KV cluster",
    )
    p.add_argument(
        "--cpu-op",
        default="put",
        choices=("put", "linearizable", "lease", "local"),
        help="what the --cpu clients do: put, or get with this consistency",
    )
    p.add_argument("--seconds", type=float, default=3.0, help="per --cpu measurement")
    p.add_argument(
        "--docstore-connections",
        type=int,
        default=2,
        help="--cpu: docstore.connect's connections to the leader",
    )
    args = p.parse_args()
    if args.cpu:
        cpu_per_write(args.seconds, args.cpu, args.runs, args.cpu_op, args.docstore_connections)
        return
    for name in args.only.split(","):
        run = PARTS[name](args.n, args.batch, args.lanes)
        run()  # warm-up
        times = [run() for _ in range(args.runs)]
        med = statistics.median(times)
        spread = ", ".join(f"{args.n / t:,.0f}" for t in times)
        print(
            f"{name:7} {args.n / med:10,.0f} /s  {med / args.n * 1e6:7.2f} us each"
            f"  (runs: {spread} /s)"
        )
        if args.profile == name:
            prof = cProfile.Profile()
            prof.enable()
            run()
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
