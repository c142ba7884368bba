"""Backups stream to disk with a stall timeout, and restore documents as they were
(issue 13, item 8); in-process nodes on real sockets."""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import pty
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

import docstore
import docstore.server
from docstore.cli import ProgressBar, seed_node
from docstore.client import UnavailableError
from tests.docstore.test_client import TOKEN, Cluster, running
from tests.docstore.test_field_order import DOC, user_fields
from trioraft.transport.messages import ClientResponse


@pytest.fixture
async def cluster(tmp_path: pathlib.Path) -> AsyncIterator[Cluster]:
    async with running(tmp_path / "a") as c:
        yield c


def _absent(*paths: str | os.PathLike[str]) -> bool:
    return not any(os.path.exists(p) for p in paths)


async def _fill(db: docstore.RemoteDatabase) -> None:
    users = db.collection("users")
    await users.put("ann", DOC)
    await db.batch(
        [docstore.commands.put("users", f"u{i:03}", {"pad": "x" * 900}) for i in range(60)]
    )


async def test_backup_is_written_to_disk_as_chunks_arrive_and_restores_field_order(
    cluster: Cluster, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(docstore.server, "BACKUP_CHUNK", 4096)  # many chunks
    path = tmp_path / "users.snap"
    seen: list[tuple[int, int]] = []

    def progress(received: int, size: int) -> None:
        # Each chunk is on disk (in the temporary file) before the next one comes.
        assert os.path.getsize(f"{path}.tmp") == received
        assert not path.exists()
        seen.append((received, size))

    with trio.fail_after(30):
        async with docstore.connect(cluster.addresses, token=TOKEN, call_timeout=10) as db:
            await _fill(db)
            info = await db.backup(path, progress=progress)
    data = path.read_bytes()
    assert len(seen) > 10 and seen[-1] == (len(data), len(data))
    assert [r for r, _ in seen] == sorted(r for r, _ in seen)
    assert info["file"] == str(path) and info["bytes"] == len(data) and info["index"] > 0
    assert info["sha256"] == hashlib.sha256(data).hexdigest()
    assert _absent(f"{path}.tmp")

    # Restored (as `docstore restore` seeds a node), the document reads as it was put.
    async with trio.open_nursery() as nursery:
        fresh = Cluster(tmp_path / "b", nursery, size=1)
        seed_node(str(fresh.root / "node1"), data, dict(fresh.addr))
        await fresh.start(1)
        with trio.fail_after(30):
            async with docstore.connect(fresh.addresses, token=TOKEN, call_timeout=10) as db:
                doc = await db.collection("users").get("ann")
                assert doc is not None and user_fields(doc) == user_fields(DOC)
                assert await db.collection("users").count() == 61
        nursery.cancel_scope.cancel()


async def test_backup_stream_yields_the_chunks_in_order(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(docstore.server, "BACKUP_CHUNK", 8192)
    with trio.fail_after(30):
        async with docstore.connect(cluster.addresses, token=TOKEN, call_timeout=10) as db:
            await _fill(db)
            parts: list[bytes] = []
            async with db.backup_stream() as chunks:
                async for chunk in chunks:
                    assert chunk.offset == sum(len(p) for p in parts)
                    parts.append(chunk.data)
            whole = b"".join(parts)
            assert chunk.done and chunk.size == len(whole) and len(parts) > 3
            assert chunk.sha256 == hashlib.sha256(whole).hexdigest()
            assert whole[:8] == b"DSSNAP01"


async def test_a_stalled_backup_fails_after_the_stall_timeout_and_leaves_no_file(
    cluster: Cluster, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def first_chunk_then_silence(conn: Any, rid: int, path: str, info: Any) -> None:
        first = {"offset": 0, "data": b"DSSNAP01", "done": False, "size": info.size}
        conn.send([ClientResponse(rid, True, first)])
        await trio.sleep_forever()

    path = tmp_path / "stalled.snap"
    async with docstore.connect(cluster.addresses, token=TOKEN, call_timeout=10) as db:
        await _fill(db)
        monkeypatch.setattr(docstore.server, "_stream_file", first_chunk_then_silence)
        started = trio.current_time()
        with pytest.raises(UnavailableError, match=r"no chunk for 0.5s"):
            with trio.fail_after(20):
                await db.backup(path, stall_timeout=0.5)
        # Not the 10 s call timeout, nor forever: the stall timeout, once.
        assert trio.current_time() - started < 5
    assert _absent(path, f"{path}.tmp")


def test_progress_bar_draws_in_place_and_ends_its_line() -> None:
    out = io.StringIO()
    bar = ProgressBar(out)
    bar.update(512 * 1024, 1024 * 1024)
    bar.update(1024 * 1024, 1024 * 1024)
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n")
    assert "50%" in text and "100%" in text and "1.0 MiB" in text


async def _backup_cli(cluster: Cluster, path: pathlib.Path, stderr: int) -> int:
    args = [sys.executable, "-m", "docstore", "backup", str(path)]
    args += ["--cluster", ",".join(cluster.addresses), "--token", TOKEN]
    done = await trio.run_process(args, stdout=subprocess.DEVNULL, stderr=stderr, check=False)
    return done.returncode


async def test_backup_command_draws_a_progress_bar_only_on_a_terminal(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    with trio.fail_after(60):
        async with docstore.connect(cluster.addresses, token=TOKEN, call_timeout=10) as db:
            await _fill(db)
        controller, terminal = pty.openpty()
        try:
            assert await _backup_cli(cluster, tmp_path / "a.snap", terminal) == 0
            os.set_blocking(controller, False)
            drawn = os.read(controller, 65536).decode()
        finally:
            os.close(terminal)
            os.close(controller)
        assert "backup" in drawn and "100%" in drawn and "[" + "#" * 30 + "]" in drawn
        log = tmp_path / "stderr.txt"
        fd = os.open(log, os.O_WRONLY | os.O_CREAT)  # not a terminal: no bar
        try:
            assert await _backup_cli(cluster, tmp_path / "b.snap", fd) == 0
        finally:
            os.close(fd)
        assert _size(log) == 0 and _size(tmp_path / "b.snap") > 0


def _size(path: pathlib.Path) -> int:
    return os.path.getsize(path)
