"""Performance smoke of the KV state machine: apply cost must grow linearly.

d-engine's bar: 100 entries in under 1 s, 1000 entries at most ~10-20x the
cost of 100.  Prints the time for 100, 1000 and 10000 entries applied in
chunks of 64 (as the runtime would hand them over) plus one final flush, and
each size's cost relative to 100.

    python bench/statemachine_smoke.py
"""

from __future__ import annotations

import tempfile
import time

import cbor2
import trio

from trioraft.core.types import Entry
from trioraft.kv import KVStateMachine

CHUNK = 64


async def run(n: int) -> float:
    entries = [
        Entry(i, 1, data=cbor2.dumps({"op": "put", "key": f"key{i % 5000}", "value": b"v" * 100}))
        for i in range(1, n + 1)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        kv = KVStateMachine(tmp)
        await kv.start()
        start = time.perf_counter()
        for at in range(0, n, CHUNK):
            await kv.apply(entries[at : at + CHUNK])
        await kv.flush()
        elapsed = time.perf_counter() - start
        assert kv.last_applied().index == n
        await kv.close()
    return elapsed


async def main() -> None:
    base = None
    print(f"{'entries':>8}{'seconds':>10}{'us/entry':>10}{'x of 100':>10}")
    for n in (100, 1000, 10000):
        t = min([await run(n) for _ in range(3)])
        base = base or t
        print(f"{n:>8}{t:>10.4f}{t / n * 1e6:>10.1f}{t / base:>10.1f}")


if __name__ == "__main__":
    trio.run(main)
