"""Key-value commands and cluster set-ups shared by the runtime tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from trioraft.kv import encode_command
from trioraft.runtime import Node
from trioraft.testing.cluster import MemoryCluster

# Snapshots every 50 entries, sent 1 KiB at a time: a wiped follower needs many chunks.
CHUNKED_SNAPSHOTS = dict(snapshot_entries=50, snapshot_keep_entries=5, snapshot_chunk_bytes=1024)


def put(key: str, value: bytes) -> bytes:
    return encode_command("put", key, value=value)


async def get(node: object, key: str, consistency: str = "linearizable") -> object:
    return await node.read({"op": "get", "key": key}, consistency=consistency)  # type: ignore[attr-defined]


@asynccontextmanager
async def open_cluster(
    path: Path, size: int, **options: Any
) -> AsyncIterator[tuple[MemoryCluster, Node]]:
    """A started ``MemoryCluster`` (``options`` as it takes them) and its first leader.

    Example: ``async with open_cluster(tmp_path, 3) as (c, leader): ...``
    """
    async with MemoryCluster(path, size, **options) as c:
        yield c, await c.wait_for_leader()


async def wipe_a_follower(c: MemoryCluster) -> tuple[Node, int]:
    """Wipe a follower, then commit ``k0``..``k199`` (20 bytes each) without it.

    Under ``CHUNKED_SNAPSHOTS`` the leader has compacted past all the follower
    had, so once started again it can only catch up by a snapshot.
    Returns the leader and the follower's id.
    """
    leader = await c.wait_for_leader()
    victim = next(n for n in c.ids if n != leader.id)
    await c.wipe(victim)
    for i in range(200):
        await leader.propose(put(f"k{i}", b"v" * 20))
    return leader, victim


async def outcome(proposal: Awaitable[object], **errors: type[Exception]) -> str:
    """``"ok"`` once ``proposal`` is answered, else the name ``errors`` gives its error.

    Example: ``await outcome(node.propose(cmd), dropped=ProposalDroppedError)``.
    """
    try:
        await proposal
    except tuple(errors.values()) as exc:
        return next(name for name, kind in errors.items() if isinstance(exc, kind))
    return "ok"
