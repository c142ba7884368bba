"""Node processes: a jump of one process's wall clock (libfaketime), its timers untouched."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from trioraft.testing.chaos.process import NodeProcess, NodeSpec, find_libfaketime

LIBFAKETIME = find_libfaketime()

PROBE = """
import json, time, trio
async def main():
    t0, m0 = time.time(), trio.current_time()
    await trio.sleep(0.05)
    print(json.dumps([t0, time.time() - t0, trio.current_time() - m0]))
trio.run(main)
"""


def _process(tmp_path: pathlib.Path) -> NodeProcess:
    spec = NodeSpec(
        node_id=1,
        listen="127.0.0.1:1",
        address="localhost:1",
        data_dir=str(tmp_path / "n1"),
        routes={},
        bootstrap={1: "localhost:1"},
        join=False,
        system="trioraft.testing.chaos.kv:SYSTEM",
    )
    return NodeProcess(spec, tmp_path, libfaketime=LIBFAKETIME)


def _probe(p: NodeProcess) -> tuple[float, float, float]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=p.environment(), capture_output=True, check=True
    )
    t0, wall, mono = json.loads(out.stdout)
    return t0, wall, mono


@pytest.mark.skipif(LIBFAKETIME is None, reason="no libfaketime (apt-get install faketime)")
def test_set_clock_jumps_the_process_wall_clock_only(tmp_path: pathlib.Path) -> None:
    import time

    p = _process(tmp_path)
    for offset in (7200, -1800, 0):
        p.set_clock(offset)
        t0, wall, mono = _probe(p)
        assert abs(t0 - (time.time() + offset)) < 5, (offset, t0 - time.time())
        # Trio's clock (monotonic) and the wall clock run on at the same pace.
        assert 0.04 < mono < 2 and 0.04 < wall < 2, (wall, mono)


def test_without_libfaketime_the_clock_cannot_move(tmp_path: pathlib.Path) -> None:
    spec = _process(tmp_path).spec
    p = NodeProcess(spec, tmp_path, libfaketime=None)
    assert "LD_PRELOAD" not in p.environment() or p.environment()["LD_PRELOAD"] != LIBFAKETIME
    with pytest.raises(RuntimeError, match="libfaketime"):
        p.set_clock(60)
