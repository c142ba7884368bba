"""CPython's cyclic garbage collector, set for a long-running node process.

Why a node process wants other settings than CPython's defaults
===============================================================

Reference counting frees almost everything a node allocates per request
(frames, messages, dicts of one command).  The cyclic collector is only
for cycles, but CPython runs it by counts of allocations: a young
collection every 700 net new container objects, a middle one every 10
young ones, a full one every 10 middle ones when the objects that reached
the old generation since the last full pass are a quarter of it.

A node keeps long-lived objects that churn: log entries until compaction,
the watch history (10,000 changes by default), session records, documents
that are replaced.  Each of them lives long enough to reach the old
generation and then dies, so full collections come every few thousand
writes and each one walks the whole heap.  Measured on a docstore leader
under 256 writers (``bench/cluster_bench.py``, the CPU time of the thread
around each collection, CPython 3.11): 6% of the process's CPU in the
collector, 326 collections in a run of about 15 s, the longest 27 ms of
CPU: a pause that every request of that moment waits for.  The followers:
5%, the longest 21 ms.

:func:`tune_gc` raises the young generation's threshold so that
collections are rare (:data:`GC_THRESHOLDS`: a young collection every
50,000 net new objects, which bounds uncollected young cyclic garbage to a
few megabytes), and freezes what the process has loaded so far (modules,
functions, configuration: permanent anyway) so full collections no longer
walk it.  The older generations keep CPython's ratios (10 and 10): what
dies old is still found by a full collection after a hundred young ones, so
garbage that reached the old generation cannot pile up unbounded (with
100 instead of 10 a full collection would come after 100 million net new
objects, in practice never).  Measured the same way, 256 writers: one
collection during the run (10 ms) besides ``tune_gc``'s own at start-up,
0.6-1.0% of the CPU with start-up included, and the p99 of 256 writers
25-40% lower (docs/benchmarks.md).

It is a process setting, so the library never applies it by itself: the
servers this project starts (``docstore serve``, the benchmark's nodes,
the chaos run's nodes) call it first thing; an application embedding a
node calls it when the process is its own.
"""

from __future__ import annotations

import gc

__all__ = ["GC_THRESHOLDS", "tune_gc"]

#: ``gc.set_threshold`` values for a node process: young collections every
#: 50,000 net new container objects (CPython: 700), middle ones every 10
#: young ones, full ones every 10 middle ones (and CPython's own rule: only
#: when the objects new to the old generation are a quarter of it).
GC_THRESHOLDS = (50_000, 10, 10)


def tune_gc(thresholds: tuple[int, int, int] = GC_THRESHOLDS, *, freeze: bool = True) -> None:
    """Set the cyclic collector for a long-running node process (see the module docstring).

    ``freeze``: move every object tracked so far to the permanent generation,
    which collections skip (call this after imports and configuration, before
    serving).

    Example::

        from trioraft.runtime import tune_gc

        tune_gc()
        trio.run(main)
    """
    if len(thresholds) != 3 or any(type(t) is not int or t < 1 for t in thresholds):
        raise ValueError(f"thresholds are three positive integers, got {thresholds!r}")
    if freeze:
        gc.collect()  # what is garbage now is not frozen with the rest
        gc.freeze()
    gc.set_threshold(*thresholds)
