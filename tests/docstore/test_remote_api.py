"""The embedded-only corners of the API on a connected database (issue 13, item 7):
``rev`` raises a typed error instead of a silent 0, ``current_rev()`` answers on
both, ``compact()`` compacts the cluster (admin) instead of a generic error."""

from __future__ import annotations

import dataclasses
import pathlib
import socket
from collections.abc import AsyncIterator

import pytest
import trio

import docstore
from docstore.server import ServerConfig
from tests.docstore.test_client import TOKEN, Cluster, running
from trioraft.storage.snapshots import SnapshotStore

APP_TOKEN = "app-token"


class RolesCluster(Cluster):
    def config(self, n: int) -> ServerConfig:
        return dataclasses.replace(super().config(n), tokens={"app": APP_TOKEN})


@pytest.fixture
async def cluster(tmp_path: pathlib.Path) -> AsyncIterator[Cluster]:
    async with running(tmp_path, RolesCluster) as c:
        yield c


async def test_rev_on_a_connected_database_is_a_typed_error(cluster: Cluster) -> None:
    with trio.fail_after(20):
        async with docstore.connect(cluster.addresses, token=TOKEN, call_timeout=10) as db:
            await db.collection("c").put("k", {"v": 1})
            with pytest.raises(docstore.NotSupportedRemotely, match="current_rev"):
                _ = db.rev


async def test_current_rev_covers_acknowledged_writes_and_starts_a_watch(
    cluster: Cluster,
) -> None:
    with trio.fail_after(30):
        async with (
            docstore.connect(cluster.addresses, token=TOKEN, call_timeout=10) as db,
            docstore.connect(cluster.addresses[::-1], token=TOKEN, call_timeout=10) as other,
        ):
            c = db.collection("c")
            rev = await c.put("a", {"v": 1})
            now = await other.current_rev()  # another client, maybe another node first
            assert now >= rev
            assert await db.current_rev() >= now  # never goes back
            async with other.collection("c").watch(since_rev=now) as changes:
                rev_b = await c.put("b", {"v": 2})
                change = await changes.__anext__()
                assert change["key"] == "b" and change["rev"] == rev_b


def _latest_snapshot(cluster: Cluster, n: int) -> int:
    """The index of node ``n``'s newest stored Raft snapshot (0: none)."""
    latest = SnapshotStore(str(cluster.root / f"node{n}" / "snapshots")).latest()
    return 0 if latest is None else latest[0].index


async def test_compact_on_a_cluster_snapshots_the_leader(cluster: Cluster) -> None:
    with trio.fail_after(30):
        async with docstore.connect(cluster.addresses, token=TOKEN, call_timeout=10) as db:
            for i in range(5):
                await db.collection("c").put(f"k{i}", {"v": i})
            leader = int((await db.members())["leader_id"])
            assert _latest_snapshot(cluster, leader) == 0
            await db.compact()
            assert _latest_snapshot(cluster, leader) >= 5
        async with docstore.connect(
            cluster.addresses, token=APP_TOKEN, client="app", call_timeout=10
        ) as app:
            await app.collection("c").put("mine", {"v": 1})  # role write
            with pytest.raises(docstore.ForbiddenError):
                await app.compact()


async def test_embedded_current_rev_is_rev(tmp_path: pathlib.Path) -> None:
    async with docstore.open(str(tmp_path / "db")) as db:
        rev = await db.collection("c").put("k", {"v": 1})
        assert db.rev == rev == await db.current_rev()


async def test_current_rev_and_backup_fail_at_once_when_no_node_listens(
    tmp_path: pathlib.Path,
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    with trio.fail_after(10):
        async with docstore.connect([address], token=TOKEN, call_timeout=30) as db:
            started = trio.current_time()
            with pytest.raises(docstore.UnavailableError, match="no node at"):
                await db.current_rev()
            with pytest.raises(docstore.UnavailableError, match="no node at"):
                await db.backup(tmp_path / "x.snap", stall_timeout=30)
            assert trio.current_time() - started < 5  # not the 30 s limits
