"""Embedded docstore against sqlite3 (and lmdb / TinyDB when installed).

Run: ``python bench/docstore_bench.py [--n 20000] [--writers 64] [--dir DIR]``

Each engine stores N documents of ~100 B and ~1 KB, then reads them back by
key, then runs an equality query on an indexed field.  Every write is its
own durable transaction:

* docstore: ``coll.put`` from ``--writers`` concurrent Trio tasks; each put
  returns after its record is fsynced (group commit shares the fsyncs);
* sqlite3: WAL journal, one ``INSERT OR REPLACE`` + commit per document, with
  ``synchronous=FULL`` (fsync per commit) and ``synchronous=NORMAL`` (WAL
  fsynced only at checkpoints: *not* durable against power loss);
* lmdb / TinyDB: one write transaction per document (only if importable).

Ratios are docstore / other: above 1 means docstore is faster.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import trio

import docstore


def make_doc(i: int, size: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"i": i, "group": i % 100, "name": f"user{i}"}
    pad = size - len(json.dumps(doc)) - 12
    doc["pad"] = "x" * max(pad, 0)
    return doc


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


@contextlib.contextmanager
def timed(out: dict[str, float], op: str, count: int) -> Iterator[None]:
    """Time the block, which does ``count`` operations ``op``: ``out[op]`` is their rate."""
    t = time.perf_counter()
    yield
    out[op] = rate(count, time.perf_counter() - t)


def bench_docstore(path: str, n: int, size: int, writers: int) -> dict[str, float]:
    out: dict[str, float] = {}

    async def run() -> None:
        async with docstore.open(path, expire_interval=None) as db:
            c = db.collection("bench")
            await c.create_index("group")
            docs = [make_doc(i, size) for i in range(n)]

            async def writer(w: int) -> None:
                for i in range(w, n, writers):
                    await c.put(f"k{i:08}", docs[i])

            with timed(out, "put", n):
                async with trio.open_nursery() as nursery:
                    for w in range(writers):
                        nursery.start_soon(writer, w)
            with timed(out, "get", n):
                for i in range(n):
                    await c.get(f"k{i:08}")
            q = 200
            with timed(out, "find", q):
                for i in range(q):
                    await c.find({"group": i % 100})

    trio.run(run)
    return out


def bench_sqlite(path: str, n: int, size: int, sync: str) -> dict[str, float]:
    conn = sqlite3.connect(os.path.join(path, "bench.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={sync}")
    conn.execute("CREATE TABLE docs (k TEXT PRIMARY KEY, grp INTEGER, body TEXT)")
    conn.execute("CREATE INDEX docs_grp ON docs (grp)")
    docs = [make_doc(i, size) for i in range(n)]
    out: dict[str, float] = {}
    with timed(out, "put", n):
        for i, d in enumerate(docs):
            conn.execute("BEGIN")
            conn.execute(
                "INSERT OR REPLACE INTO docs VALUES (?, ?, ?)",
                (f"k{i:08}", d["group"], json.dumps(d)),
            )
            conn.execute("COMMIT")
    with timed(out, "get", n):
        for i in range(n):
            row = conn.execute("SELECT body FROM docs WHERE k = ?", (f"k{i:08}",)).fetchone()
            json.loads(row[0])
    q = 200
    with timed(out, "find", q):
        for i in range(q):
            [
                json.loads(r[0])
                for r in conn.execute("SELECT body FROM docs WHERE grp = ?", (i % 100,))
            ]
    conn.close()
    return out


def bench_lmdb(path: str, n: int, size: int) -> dict[str, float]:
    import lmdb  # type: ignore[import-not-found, unused-ignore]

    docs = [json.dumps(make_doc(i, size)).encode() for i in range(n)]
    out: dict[str, float] = {}
    with contextlib.closing(lmdb.open(os.path.join(path, "lmdb"), map_size=1 << 32)) as env:
        with timed(out, "put", n):
            for i, d in enumerate(docs):
                with env.begin(write=True) as txn:
                    txn.put(b"k%08d" % i, d)
        with timed(out, "get", n), env.begin() as txn:
            for i in range(n):
                json.loads(txn.get(b"k%08d" % i))
    return out


def bench_tinydb(path: str, n: int, size: int) -> dict[str, float]:
    from tinydb import Query, TinyDB  # type: ignore[import-not-found, unused-ignore]

    n = min(n, 2000)  # TinyDB rewrites its whole file per write
    out: dict[str, float] = {}
    with TinyDB(os.path.join(path, "tiny.json")) as db:
        with timed(out, "put", n):
            for i in range(n):
                db.insert({"k": f"k{i:08}", **make_doc(i, size)})
        q = Query()
        with timed(out, "get", min(n, 500)):
            for i in range(min(n, 500)):
                db.search(q.k == f"k{i:08}")
    return out


def fresh(base: str, name: str) -> str:
    p = os.path.join(base, name)
    shutil.rmtree(p, ignore_errors=True)
    os.makedirs(p)
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="documents per run")
    ap.add_argument("--writers", type=int, default=256, help="concurrent docstore writers")
    ap.add_argument("--dir", default=None, help="where to put the files (default: a temp dir)")
    args = ap.parse_args()
    base = args.dir or tempfile.mkdtemp(prefix="docstore-bench-")
    print(f"n={args.n} writers={args.writers} dir={base}")
    header = f"{'size':>5} {'op':>5} {'docstore':>11}"
    # (name, the module it needs: compared with only when installed, run)
    engines: list[tuple[str, str, Callable[[str, int], dict[str, float]]]] = [
        ("sqlite FULL", "sqlite3", lambda p, s: bench_sqlite(p, args.n, s, "FULL")),
        ("sqlite NORMAL", "sqlite3", lambda p, s: bench_sqlite(p, args.n, s, "NORMAL")),
        ("lmdb", "lmdb", lambda p, s: bench_lmdb(p, args.n, s)),
        ("TinyDB", "tinydb", lambda p, s: bench_tinydb(p, args.n, s)),
    ]
    installed = [(name, fn) for name, module, fn in engines if importlib.util.find_spec(module)]
    rows = []
    for size in (100, 1000):
        ds = bench_docstore(fresh(base, f"ds{size}"), args.n, size, args.writers)
        others = {
            name: fn(fresh(base, f"{name.replace(' ', '_')}{size}"), size) for name, fn in installed
        }
        rows.append((size, ds, others))
    names = list(rows[0][2])
    print(header + "".join(f" {n:>13} {'ratio':>6}" for n in names))
    for size, ds, others in rows:
        for op in ("put", "get", "find"):
            line = f"{size:>5} {op:>5} {ds[op]:>9,.0f}/s"
            for n in names:
                v = others[n].get(op)
                line += f" {v:>11,.0f}/s {ds[op] / v:>6.2f}" if v else f" {'-':>13} {'-':>6}"
            print(line)
    if not args.dir:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
