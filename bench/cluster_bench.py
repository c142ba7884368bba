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

One module per system in bench/cluster/ (docstore.py, kv.py for the
trioraft KV path, pysyncobj.py, etcd.py), the report in report.py, what
they share in common.py, profiles in spy.py; this file runs them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.cluster.common import Result, loadavg, machine, running
from bench.cluster.docstore import DocstoreCluster, profile_docstore
from bench.cluster.etcd import EtcdCluster
from bench.cluster.kv import TrioraftCluster, profile_leader, trioraft_measure
from bench.cluster.pysyncobj import PySyncObjCluster
from bench.cluster.report import fmt_ms, median_result, plot, report


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
    p.add_argument(
        "--docstore-connections",
        type=int,
        default=2,
        help="docstore.connect's connections to the leader (queries spread over them)",
    )
    p.add_argument("--quick", action="store_true", help="one short run of each (under a minute)")
    p.add_argument("--no-embedded", action="store_true")
    p.add_argument("--no-reads", action="store_true")
    p.add_argument(
        "--profile",
        metavar="PATH",
        help="profile the docstore leader and client (and the trioraft leader) under load;"
        " py-spy when installed, else cProfile where it can",
    )
    p.add_argument(
        "--profile-op",
        default="put",
        choices=("put", "linearizable", "lease", "local"),
        help="what the docstore profile's load does: put, or get with this consistency",
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
                                for note in dcluster.notes:
                                    print(f"    {note}", flush=True)
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
