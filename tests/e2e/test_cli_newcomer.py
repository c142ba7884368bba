"""The ``docstore`` command as a newcomer meets it (issue 13): failures are fast and plain."""

from __future__ import annotations

import pathlib
import socket
import time

from tests.e2e.test_cluster_cli import TIMING, free_base_port, run_cli


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
