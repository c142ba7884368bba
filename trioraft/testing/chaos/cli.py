"""Chaos test a trioraft cluster: real node processes, a faulty proxy on every link, checks.

Run by hand::

    python -m trioraft.testing.chaos --duration 600 --seed 42
    python -m trioraft.testing.chaos --system mypackage.chaos:SYSTEM --duration 120
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import trio

from trioraft.testing.chaos.process import load_system, node_main
from trioraft.testing.chaos.run import FAULTS, ChaosOptions, run_chaos

__all__ = ["main"]

KNOWN_FAULTS = frozenset({*FAULTS, "overlap", "clock", "clock-leader"})


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["_node"]:  # a node process (NodeProcess.start)
        node_main(args[1])
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m trioraft.testing.chaos", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of faults and load")
    parser.add_argument("--seed", type=int, default=None, help="replay a run (printed first)")
    parser.add_argument("--workers", type=int, default=10, help="client tasks")
    parser.add_argument("--keys", type=int, default=None, help="default: 30, more for long runs")
    parser.add_argument("--no-nemesis", action="store_true", help="load without faults")
    parser.add_argument(
        "--system",
        default=None,
        help="the system under test, module:attribute (default: trioraft.testing.chaos.kv:SYSTEM)",
    )
    parser.add_argument("--bug", default="", help="a deliberate bug the system offers")
    parser.add_argument(
        "--faults",
        default=None,
        help="comma-separated faults to pick from (default: all): "
        + ", ".join(sorted(KNOWN_FAULTS)),
    )
    parser.add_argument("--no-clock", action="store_true", help="no wall-clock jumps")
    parser.add_argument("--dir", default=None, help="run directory (default: a new temp dir)")
    ns = parser.parse_args(args)
    unknown = sorted(set(ns.faults.split(",")) - KNOWN_FAULTS) if ns.faults else []
    if unknown:
        parser.error(f"unknown faults: {', '.join(unknown)}")
    keys = ns.keys if ns.keys is not None else max(30, int(ns.duration / 2))
    options = ChaosOptions(
        duration=ns.duration,
        seed=ns.seed,
        workers=ns.workers,
        keys=keys,
        nemesis=not ns.no_nemesis,
        bug=ns.bug,
        root=ns.dir,
        system=load_system(ns.system) if ns.system else None,
        faults=tuple(ns.faults.split(",")) if ns.faults else None,
        clock_jumps=not ns.no_clock,
    )
    report = trio.run(run_chaos, options)
    print(report.summary(), flush=True)
    return 0 if report.ok else 1
