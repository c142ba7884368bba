"""The ``docstore`` command as a newcomer meets it (issue 13): failures are fast and plain."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import time
from typing import Any

import trio

import docstore
from tests.e2e import test_cluster_cli
from tests.e2e.test_cluster_cli import TIMING, ClusterProcess, free_base_port, run_cli

start_cluster = test_cluster_cli.start_cluster  # the fixture


def test_cluster_on_a_busy_port_fails_at_once_and_writes_nothing(tmp_path: pathlib.Path) -> None:
    base = free_base_port()
    directory = tmp_path / "d"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base + 1))
        busy.listen()
        started = time.monotonic()
        r = run_cli("cluster", "--dir", str(directory), "--base-port", str(base), *TIMING)
        took = time.monotonic() - started
    assert r.returncode == 1, r
    assert r.stderr.count("\n") == 1 and f"127.0.0.1:{base + 1}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert took < 10
    assert not (directory / "cluster.toml").exists()  # no new secret or token left behind
    assert not directory.exists() or not any(directory.iterdir())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: it only waits for its parent to reap it.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] != "Z"


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])


async def test_restart_node_brings_a_killed_node_back_supervised(start_cluster: Any) -> None:
    c: ClusterProcess = start_cluster()
    old = c.pid(1)
    c.sigkill(1)
    r = run_cli("restart-node", "1", "--dir", str(c.dir))
    assert r.returncode == 0, r.stderr
    new = c.pid(1)
    assert new != old and _alive(new) and _parent(new) == c.proc.pid
    with trio.fail_after(30):
        async with docstore.connect(c.addresses, token=c.token, call_timeout=20) as db:
            await db.collection("x").put("k", {"v": 1})
            while True:  # node 1 answers again
                status = await db.status()
                if all(s["role"] != "unreachable" for s in status):
                    break
                await trio.sleep(0.1)
    pids = [c.pid(n) for n in (1, 2, 3)]
    c.proc.send_signal(signal.SIGTERM)  # as Ctrl-C: every node stops, the restarted one too
    assert c.proc.wait(timeout=20) == 0
    assert not any(_alive(p) for p in pids)  # the supervisor waited for each before exiting


def test_restart_node_without_a_running_cluster_is_one_plain_line(tmp_path: pathlib.Path) -> None:
    r = run_cli("restart-node", "1", "--dir", str(tmp_path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr
