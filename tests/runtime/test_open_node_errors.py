"""Errors out of ``open_node`` are the original exception, not a group (issue 13).

The README's library snippet wraps ``open_node`` in user code; ``except
TimeoutError`` there must catch a timeout raised in the block, as it does
around ``docstore.open`` and ``docstore.connect``.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio

import trioraft
from trioraft.kv import KVStateMachine


def _open(
    tmp_path: Path, data_dir: Path | None = None
) -> AbstractAsyncContextManager[trioraft.Node]:
    config = trioraft.NodeConfig(
        node_id=1,
        data_dir=str(data_dir or tmp_path / "n1"),
        listen="127.0.0.1:0",
        cluster_secret=b"test secret",
    )
    return trioraft.open_node(config, KVStateMachine(str(tmp_path / "kv")))


async def test_an_exception_in_the_block_comes_out_as_itself(tmp_path: Path) -> None:
    with pytest.raises(TimeoutError, match="from the block"):
        async with _open(tmp_path):
            raise TimeoutError("from the block")


async def test_a_timeout_in_the_block_is_caught_by_except_too_slow(tmp_path: Path) -> None:
    caught = False
    try:
        async with _open(tmp_path):
            with trio.fail_after(0.01):
                await trio.sleep(1)
    except trio.TooSlowError:
        caught = True
    assert caught


async def test_a_bad_data_dir_fails_startup_with_the_plain_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("not a directory")
    with pytest.raises(OSError):
        async with _open(tmp_path, not_a_dir):
            pytest.fail("the node started on a file as its data dir")
