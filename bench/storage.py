"""Benchmark the file log store against the bare disk.

Prints appends/s for 100-byte entries at batch sizes 1, 64 and 1024 (one
fsync per batch), beside the rate of bare ``os.write`` + ``fdatasync`` of
the same number of bytes per batch, measured in the same run on the same
directory; then the time to reopen a log of ``--entries`` entries, and the
per-call cost of zlib.crc32 and crc32c (if installed) at record sizes.

    python bench/storage.py [--dir DIR] [--seconds 2] [--rounds 4] [--entries 1000000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import zlib

from trioraft.core.types import Entry
from trioraft.storage import FileLogStore

ENTRY_BYTES = 100


def bare_rate(directory: str, batch_bytes: int, seconds: float) -> float:
    """Batches per second of write(batch_bytes) + fdatasync, appending to one file."""
    path = os.path.join(directory, "bare.bin")
    os.sync()  # do not bill this side for the previous side's deletions
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    blob = os.urandom(batch_bytes)
    n = 0
    start = time.perf_counter()
    try:
        while time.perf_counter() - start < seconds:
            os.write(fd, blob)
            os.fdatasync(fd)
            n += 1
    finally:
        os.close(fd)
        os.unlink(path)
    return n / (time.perf_counter() - start)


def store_rate(directory: str, batch: int, seconds: float) -> tuple[float, int]:
    """Batches per second through FileLogStore.append, and bytes per batch on disk."""
    path = os.path.join(directory, f"log-{batch}")
    store = FileLogStore.open(path)
    os.sync()  # do not bill this side for the previous side's deletions
    payload = os.urandom(ENTRY_BYTES)
    idx = 1
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        store.append([Entry(i, 1, data=payload) for i in range(idx, idx + batch)])
        idx += batch
        n += 1
    elapsed = time.perf_counter() - start
    store.close()
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    shutil.rmtree(path)
    return n / elapsed, size // max(n, 1)


def reopen_time(directory: str, entries: int, batch: int) -> tuple[float, float]:
    path = os.path.join(directory, "reopen")
    store = FileLogStore.open(path)
    payload = os.urandom(ENTRY_BYTES)
    t0 = time.perf_counter()
    for lo in range(1, entries + 1, batch):
        hi = min(entries + 1, lo + batch)
        store.append([Entry(i, 1 + i // 100_000, data=payload) for i in range(lo, hi)])
    build = time.perf_counter() - t0
    store.close()
    t0 = time.perf_counter()
    store = FileLogStore.open(path)
    took = time.perf_counter() - t0
    assert store.last_index() == entries
    store.close()
    shutil.rmtree(path)
    return took, build


def checksum_costs() -> list[tuple[int, float, float | None]]:
    try:
        import crc32c  # type: ignore[import-not-found,unused-ignore]

        c32c = crc32c.crc32c
    except ImportError:
        c32c = None
    out: list[tuple[int, float, float | None]] = []
    for size in (150, 9_600, 153_600, 1 << 20):
        data = os.urandom(size)
        reps = max(50, 20_000_000 // size)
        t0 = time.perf_counter()
        for _ in range(reps):
            zlib.crc32(data)
        z = (time.perf_counter() - t0) / reps
        c: float | None = None
        if c32c is not None:
            t0 = time.perf_counter()
            for _ in range(reps):
                c32c(data)
            c = (time.perf_counter() - t0) / reps
        out.append((size, z, c))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dir", default=None, help="directory on the disk to measure (default: cwd)")
    ap.add_argument("--seconds", type=float, default=2.0, help="duration of each rate measurement")
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds per measurement")
    ap.add_argument("--entries", type=int, default=1_000_000, help="log size for the reopen test")
    ap.add_argument("--reopen-batch", type=int, default=64, help="batch size used to build it")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="trioraft-bench-", dir=args.dir or os.getcwd())
    try:
        print(f"directory: {base}")
        print()
        print(
            "| batch | store appends/s | store batches/s | bare write+fdatasync batches/s "
            "(same bytes) | store / bare |"
        )
        print("|---:|---:|---:|---:|---:|")
        for batch in (1, 64, 1024):
            # The disk is shared: alternate short rounds and keep each side's
            # best, so a burst of someone else's I/O does not land on one side.
            rate, bare = 0.0, 0.0
            for _ in range(args.rounds):
                r, per_batch = store_rate(base, batch, args.seconds / args.rounds)
                rate = max(rate, r)
                bare = max(bare, bare_rate(base, per_batch, args.seconds / args.rounds))
            print(
                f"| {batch} | {rate * batch:,.0f} | {rate:,.0f} | {bare:,.0f} "
                f"({per_batch:,} B) | {rate / bare:.2f} |"
            )
        print()
        took, build = reopen_time(base, args.entries, args.reopen_batch)
        print(
            f"reopen of {args.entries:,} entries ({ENTRY_BYTES}-byte, written in batches of "
            f"{args.reopen_batch}): {took:.3f} s (building it took {build:.1f} s)"
        )
        print()
        print("| bytes checksummed | zlib.crc32 | crc32c |")
        print("|---:|---:|---:|")
        for size, z, c in checksum_costs():
            cs = f"{c * 1e6:.2f} us" if c is not None else "not installed"
            print(f"| {size:,} | {z * 1e6:.2f} us | {cs} |")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
