"""The whole-node simulator's cost per seed, this tree against an earlier commit.

Run: ``python bench/simnode_compare.py --base REV [--seeds 40] [--start 300000]
[--nodes 3]``

On a shared virtual machine the wall-clock rate of one and the same code
moves by a third from one minute to the next, so two sweeps run one after
the other cannot tell a 10% change.  This runs both trees at once, each in
its own long-lived process (a git worktree of ``REV``, removed after), and
hands them the seeds alternately, one seed at a time, the order swapped
every seed: both see the same machine.  It prints the CPU seconds per seed
of each, their ratio, the rate per CPU second, and whether every seed's
trace hash is the same in both trees (a change that keeps them keeps every
pinned seed and every clean sweep of the earlier code valid).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# What each tree's process runs: one seed per line on stdin, its CPU time,
# violations and trace hash on stdout.
WORKER = """
import logging, sys, time
logging.disable(logging.CRITICAL)
from trioraft.testing.simnode import SimConfig, run_seed
cfg = SimConfig(nodes=int(sys.argv[1]))
for line in sys.stdin:
    t = time.process_time()
    r = run_seed(int(line), cfg)
    print(time.process_time() - t, len(r.violations), r.trace_hash, flush=True)
"""


class _Tree:
    def __init__(self, path: Path, nodes: int) -> None:
        env = {**os.environ, "PYTHONPATH": str(path), "PYTHONHASHSEED": "0"}
        self.path = path
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(nodes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=path,
        )
        self.cpu: list[float] = []
        self.hashes: list[str] = []
        self.violations = 0

    def run(self, seed: int, *, keep: bool = True) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{seed}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the simulator in {self.path} stopped (seed {seed})")
        cpu, violations, trace = line.split()
        if keep:
            self.cpu.append(float(cpu))
            self.hashes.append(trace)
            self.violations += int(violations)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="the commit to compare with")
    p.add_argument("--seeds", type=int, default=40)
    p.add_argument("--start", type=int, default=300000)
    p.add_argument("--nodes", type=int, choices=(3, 5), default=3)
    a = p.parse_args(argv)
    if a.seeds < 1:
        p.error("--seeds must be at least 1")
    here = Path(__file__).resolve().parent.parent
    rev = subprocess.run(
        ["git", "-C", str(here), "rev-parse", "--short", a.base],
        capture_output=True,
        text=True,
    )
    if rev.returncode != 0:
        p.error(f"--base {a.base!r}: {rev.stderr.strip()}")
    tmp = Path(tempfile.mkdtemp(prefix="simnode-base-"))
    worktree = tmp / "tree"
    subprocess.run(
        ["git", "-C", str(here), "worktree", "add", "--detach", "-q", str(worktree), a.base],
        check=True,
    )
    try:
        base, this = _Tree(worktree, a.nodes), _Tree(here, a.nodes)
        for tree in (base, this):  # the first seed pays for the lazy imports
            tree.run(a.start - 1, keep=False)
        for i, seed in enumerate(range(a.start, a.start + a.seeds)):
            for tree in (base, this) if i % 2 == 0 else (this, base):
                tree.run(seed)
        base.close()
        this.close()
    finally:
        subprocess.run(
            ["git", "-C", str(here), "worktree", "remove", "--force", str(worktree)], check=False
        )
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = sum(this.cpu) / sum(base.cpu)
    per_seed = statistics.median(t / b for t, b in zip(this.cpu, base.cpu, strict=True))
    same = sum(x == y for x, y in zip(base.hashes, this.hashes, strict=True))
    print(f"{a.seeds} seeds from {a.start}, {a.nodes} nodes, seed by seed in turn:")
    for name, tree in ((f"base {rev.stdout.strip()}", base), ("this tree", this)):
        mean = statistics.mean(tree.cpu)
        print(
            f"  {name:14s} {mean * 1000:6.0f} ms CPU per seed, {1 / mean:5.2f} seeds per CPU"
            f" second, {tree.violations} violations"
        )
    print(f"  this / base: {ratio:.3f} of the CPU (median per seed {per_seed:.3f})")
    print(
        f"  trace hashes: {same} of {a.seeds} the same"
        + ("" if same == a.seeds else " (the change moves the schedule)")
    )
    return 1 if base.violations or this.violations else 0


if __name__ == "__main__":
    sys.exit(main())
