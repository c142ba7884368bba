"""One PySyncObj node for bench/cluster_bench.py (run by it; not meant to be run by hand).

Usage: ``python bench/_pysyncobj_node.py SELF_ADDR PARTNER_ADDR... --data DIR``

PySyncObj has no client protocol, so the load generator runs in the leader's
process (like trioraft's "embedded" mode).  Control is one JSON object per
line on stdin, one JSON answer per line on stdout:

* ``{"cmd": "status"}`` -> ``{"leader": bool, "ready": bool}``
* ``{"cmd": "run", "clients": C, "seconds": S, "size": B, "requests": N}`` ->
  ``{"count", "elapsed", "errors", "lat_ms"}``: C virtual clients each keep
  one ``ReplDict.set`` in flight through the async callback API.

Its journal is a memory-mapped file that is never synced per commit (only
when the object is destroyed): a commit here is *not* on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf  # type: ignore[import-untyped]
from pysyncobj.batteries import ReplDict  # type: ignore[import-untyped]

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.cluster.common import embedded_answer


def run(d: Any, spec: dict[str, Any]) -> dict[str, Any]:
    clients = int(spec["clients"])
    seconds = float(spec["seconds"])
    max_requests = int(spec.get("requests") or 0)
    value = "x" * int(spec.get("size", 100))
    lat: list[float] = []
    errors = [0]
    issued = [0]
    live = [clients]
    lock = threading.Lock()
    done = threading.Event()
    start = time.perf_counter()
    deadline = start + seconds

    def issue(w: int, i: int) -> None:
        with lock:
            if time.perf_counter() >= deadline or (max_requests and issued[0] >= max_requests):
                live[0] -= 1
                if live[0] == 0:
                    done.set()
                return
            issued[0] += 1
        t = time.perf_counter()

        def callback(result: Any, error: Any) -> None:
            now = time.perf_counter()
            with lock:
                if error == FAIL_REASON.SUCCESS:
                    lat.append(now - t)
                else:
                    errors[0] += 1
            issue(w, i + 1)

        d.set(f"k{(w + i * clients) % 1000}", value, callback=callback)

    for w in range(clients):
        issue(w, 0)
    done.wait(seconds + 60)
    return embedded_answer(lat, time.perf_counter() - start, errors[0])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("self_addr")
    p.add_argument("partners", nargs="+")
    p.add_argument("--data", required=True)
    p.add_argument("--batch", action="store_true", help="appendEntriesUseBatch (its default)")
    a = p.parse_args()
    os.makedirs(a.data, exist_ok=True)
    conf = SyncObjConf(
        journalFile=os.path.join(a.data, "journal"),
        fullDumpFile=os.path.join(a.data, "dump"),
        dynamicMembershipChange=False,
        # Its default batches appends on a 0.1 s timer (about 100 ms per commit);
        # unbatched, each command wakes the sender at once.
        appendEntriesUseBatch=a.batch,
    )
    d = ReplDict()
    obj = SyncObj(a.self_addr, a.partners, conf=conf, consumers=[d])
    print(json.dumps({"started": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] == "status":
            out: dict[str, Any] = {"leader": obj._isLeader(), "ready": obj.isReady()}
        elif req["cmd"] == "run":
            out = run(d, req)
        else:
            out = {"error": f"unknown {req['cmd']}"}
        print(json.dumps(out), flush=True)
    obj.destroy()


if __name__ == "__main__":
    main()
