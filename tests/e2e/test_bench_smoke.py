"""bench/cluster_bench.py still runs end to end (a smoke test: nothing about speed)."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _quick_run(tmp_path: object, *options: str) -> str:
    """``cluster_bench.py --quick`` with 50 requests at 1 and 4 clients (4 readers): its output."""
    cmd = [
        sys.executable,
        os.path.join(ROOT, "bench", "cluster_bench.py"),
        "--quick",
        *options,
        "--requests",
        "50",
        "--clients",
        "1,4",
        "--read-clients",
        "4",
        "--dir",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_cluster_bench_quick_run_prints_tables(tmp_path: object) -> None:
    out = _quick_run(tmp_path, "--systems", "trioraft")
    assert "### Writes" in out
    assert "### Reads" in out
    assert "| trioraft" in out
    assert "linearizable" in out


def test_cluster_bench_docstore_short_form_prints_its_rows_ratios_and_targets(
    tmp_path: object,
) -> None:
    out = _quick_run(tmp_path, "--systems", "docstore,trioraft", "--no-embedded")
    writes = out[out.index("### Writes") :]
    # The product comes first, before the library's KV path.
    assert writes.index("| docstore") < writes.index("| trioraft")
    for op in ("linearizable", "lease", "local"):
        assert f"| docstore | remote | {op:>12} |" in out, op
    assert "### docstore ratios" in out
    ratios = out[out.index("### docstore ratios") :]
    assert "docstore/KV" in ratios and "docstore/etcd" in ratios
    assert "docstore: single writer writes/s" in out
    rows = [line for line in writes.split("\n\n")[1].splitlines() if line.startswith("| docstore")]
    assert len(rows) == 2 and all(row.rstrip(" |").endswith(" 0") for row in rows), (
        rows
    )  # no errors


def test_simnode_compare_runs_both_trees_and_compares_their_traces() -> None:
    """bench/simnode_compare.py against HEAD: the same traces; its worktree is gone after."""
    cmd = [sys.executable, "bench/simnode_compare.py", "--base", "HEAD", "--seeds", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "seeds per CPU second" in proc.stdout
    assert "trace hashes: 2 of 2 the same" in proc.stdout
    trees = subprocess.run(
        ["git", "worktree", "list"], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout
    assert "simnode-base-" not in trees
