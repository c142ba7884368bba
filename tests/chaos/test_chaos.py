"""Chaos: real processes, a faulty proxy on every link, SIGKILL/SIGSTOP, membership churn,
overlapping faults and wall-clock jumps, for the KV machine and for docstore.

The short runs (``CHAOS_DURATION`` seconds each, default 25; ``TRIORAFT_SLOW=1``:
300) are what CI runs; a long one goes by hand::

    python -m trioraft.testing.chaos --duration 600
    python -m trioraft.testing.chaos --system tests.chaos.docstore_system:SYSTEM --duration 600

``CHAOS_SEED`` replays a seed (each run prints it first).  Clock jumps need
libfaketime (Debian: ``apt-get install faketime``); without it the runs go on
without them and say so.
"""

from __future__ import annotations

import os
import pathlib

import pytest
import trio

from docstore.engine.errors import DocstoreError
from tests.chaos.docstore_system import SYSTEM as DOCSTORE
from tests.chaos.docstore_system import Records
from tests.conftest import SLOW
from trioraft.testing.chaos import ChaosOptions, ChaosRun, run_chaos
from trioraft.testing.chaos.process import find_libfaketime

DURATION = float(os.environ.get("CHAOS_DURATION", "300" if SLOW else "25"))
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
async def test_docstore_under_overlapping_faults_and_clock_jumps(tmp_path: pathlib.Path) -> None:
    """docstore writes, reads, sessions and TTL through faults that overlap and jumped clocks."""
    clock = find_libfaketime() is not None
    # Short: each fault an overlap (half of them a partition while a node is paused, a kill
    # during a membership change or a clock jump of a paused or cut-off node), a leader's jump.
    faults = None if SLOW else ("overlap", "clock-leader", "overlap")
    report = await run_chaos(
        ChaosOptions(
            duration=DURATION,
            seed=SEED,
            workers=6,
            keys=max(20, int(DURATION / 3)),
            root=str(tmp_path),
            system=DOCSTORE,
            faults=faults,
        )
    )
    print(report.summary())
    assert report.ok, report.summary()
    for op in ("put ok", "cas ok", "inc ok", "batch ok", "linearizable read ok", "local read ok"):
        assert report.ops[op] > 0, (op, report.summary())
    assert any(f.startswith("overlap") for f in report.faults), report.summary()
    assert any(f.startswith("clock") for f in report.faults) == clock, report.summary()
    assert any(k.startswith("n/") for k in report.final_values), report.summary()


@pytest.mark.slow
@pytest.mark.skipif(find_libfaketime() is None, reason="no libfaketime (apt-get install faketime)")
async def test_a_leader_clock_jump_moves_docstore_time_forward_for_good(
    tmp_path: pathlib.Path,
) -> None:
    """The nemesis' clock jumps reach docstore: a leader two hours ahead stamps its entries so,
    which expires a ten-minute TTL document and every session; after its clock is true again
    the replicated time does not go back (the document stays expired), and a day's TTL holds."""
    run = ChaosRun(ChaosOptions(system=DOCSTORE, nodes=3, voters=3), tmp_path, 0)
    async with trio.open_nursery() as nursery:
        try:
            router = await run.setup(nursery)
            async with DOCSTORE.connect(run, 10.0) as db:
                r, t = db.collection("r"), db.collection("t")
                await r.put("a", {"v": 1})
                await t.put("x", {"v": 1}, ttl=600)
                await r.put("b", {"v": 1}, ttl=86_400)
                assert await t.get("x") is not None
                leader = await run.find_leader(router)
                assert leader is not None
                run.procs[leader].set_clock(7200)
                with trio.fail_after(10):
                    while await t.get("x") is not None:  # noqa: ASYNC110 - the expire duty
                        await trio.sleep(0.2)
                with pytest.raises(DocstoreError) as err:
                    await r.put("a", {"v": 2})  # its lane's session is two hours old now
                assert err.value.code == "session_expired"
                run.procs[leader].set_clock(0)
                await r.put("a", {"v": 3})  # a new lane, a new session
                assert (await r.get("a") or {}).get("v") == 3
                assert await t.get("x") is None
                assert (await r.get("b") or {}).get("v") == 1
        finally:
            for p in run.procs.values():
                await p.kill()
            nursery.cancel_scope.cancel()


def test_counter_check_catches_lost_and_doubled_increments() -> None:
    """The counter check can fail: below the acknowledged, above acknowledged plus unknown."""
    rec = Records()
    rec.counter("c0").acked, rec.counter("c0").unknown = 5, 2
    for value, ok in ((5, True), (7, True), (4, False), (8, False)):
        rec.final_counters["c0"] = value
        assert (rec.check() == []) == ok, value
    del rec.final_counters["c0"]
    assert rec.check() == ["counter c0 was not read after the run"]


@pytest.mark.slow
async def test_chaos_checks_catch_stale_reads(tmp_path: pathlib.Path) -> None:
    """Proof the checks can fail: nodes that answer some reads one write behind."""
    report = await run_chaos(
        ChaosOptions(duration=8, seed=SEED, nemesis=False, bug="stale-reads", root=str(tmp_path))
    )
    print(report.summary())
    assert not report.ok, report.summary()
    # Caught by the history's check, or by the final reads checked with it: a
    # short run on a busy machine may have no stale answer among its reads.
    caught = [r for r in (report.linearizable, report.final) if r is not None and not r.ok]
    assert caught, report.summary()
    assert "not linearizable" in caught[0].explain()
    # The replicas themselves are intact: only the answers lie.
    assert report.digests_equal, report.summary()
