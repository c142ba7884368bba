"""Chaos: real processes, a faulty proxy on every link, SIGKILL/SIGSTOP, membership churn.

The short run (``CHAOS_DURATION`` seconds, default 60) is what CI runs; a
long one goes by hand: ``python -m trioraft.testing.chaos --duration 600``.
``CHAOS_SEED`` replays a seed (the run prints it first).
"""

from __future__ import annotations

import os
import pathlib

import pytest

from trioraft.testing.chaos import ChaosOptions, run_chaos

DURATION = float(os.environ.get("CHAOS_DURATION", "60"))
SEED = int(os.environ["CHAOS_SEED"]) if os.environ.get("CHAOS_SEED") else None


@pytest.mark.slow
async def test_chaos_history_is_linearizable_and_replicas_agree(tmp_path: pathlib.Path) -> None:
    report = await run_chaos(
        ChaosOptions(
            duration=DURATION, seed=SEED, keys=max(30, int(DURATION / 2)), root=str(tmp_path)
        )
    )
    print(report.summary())
    assert report.linearizable is not None and report.linearizable.ok is True, report.summary()
    assert report.final is not None and report.final.ok is True, report.summary()
    assert report.digests_equal, report.summary()
    assert not report.problems, report.summary()
    assert len(report.faults) >= DURATION / 15, report.summary()  # the nemesis did its job
    assert report.ops["write ok"] > 0 and report.ops["cas ok"] > 0, report.summary()


@pytest.mark.slow
async def test_chaos_checks_catch_stale_reads(tmp_path: pathlib.Path) -> None:
    """Proof the checks can fail: nodes that answer some reads one write behind."""
    report = await run_chaos(
        ChaosOptions(duration=8, seed=SEED, nemesis=False, bug="stale-reads", root=str(tmp_path))
    )
    print(report.summary())
    assert report.linearizable is not None and report.linearizable.ok is False, report.summary()
    assert "not linearizable" in report.linearizable.explain()
    # The replicas themselves are intact: only the answers lie.
    assert report.digests_equal, report.summary()
