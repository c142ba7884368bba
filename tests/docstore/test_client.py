"""docstore.connect against in-process server nodes on real sockets (real clock)."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

import docstore
from docstore.server import ServerConfig, load_config, serve
from docstore.state_machine import OPEN_SESSION
from trioraft.runtime import Node
from trioraft.testing.chaos.run import free_ports

TOKEN = "test-token"


class Cluster:
    def __init__(self, root: pathlib.Path, nursery: trio.Nursery, size: int = 3) -> None:
        self.root = root
        self.nursery = nursery
        self.addr = {i + 1: f"127.0.0.1:{p}" for i, p in enumerate(free_ports(size))}
        self.nodes: dict[int, Node] = {}
        self.scopes: dict[int, trio.CancelScope] = {}

    def config(self, n: int) -> ServerConfig:
        return ServerConfig(
            id=n,
            nodes=self.addr,
            data=str(self.root / f"node{n}"),
            secret="s3cret",
            token=TOKEN,
            election_timeout_min=0.3,
            election_timeout_max=0.6,
            heartbeat_interval=0.05,
        )

    async def start(self, n: int) -> None:
        async def run(task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                self.scopes[n] = scope
                await serve(self.config(n), task_status=task_status)

        self.nodes[n] = await self.nursery.start(run)

    async def start_all(self) -> None:
        for n in self.addr:
            await self.start(n)

    async def stop(self, n: int) -> None:
        self.scopes.pop(n).cancel()
        await self.nodes.pop(n)._stopped.wait()

    def leader(self) -> int | None:
        for n, node in self.nodes.items():
            if node.is_leader:
                return n
        return None

    @property
    def addresses(self) -> list[str]:
        return list(self.addr.values())


@asynccontextmanager
async def running(root: pathlib.Path, kind: type[Cluster] = Cluster) -> AsyncIterator[Cluster]:
    """A cluster of ``kind`` in ``root`` with every node started; stopped on exit."""
    async with trio.open_nursery() as nursery:
        c = kind(root, nursery)
        await c.start_all()
        yield c
        nursery.cancel_scope.cancel()


@pytest.fixture
async def cluster(tmp_path: pathlib.Path) -> AsyncIterator[Cluster]:
    async with running(tmp_path) as c:
        yield c


async def test_crud_reads_and_status(cluster: Cluster) -> None:
    with trio.fail_after(20):
        async with docstore.connect(cluster.addresses, token=TOKEN, call_timeout=10) as db:
            users = db.collection("users")
            rev = await users.put("ann", {"name": "Ann", "age": 31})
            assert rev > 0
            assert (await users.get("ann"))["name"] == "Ann"  # type: ignore[index]
            for c in ("linearizable", "lease", "local"):
                doc = await users.get("ann", consistency=c)
                if c != "local":
                    assert doc is not None and doc["_rev"] == rev
            await users.patch("ann", {"$inc": {"age": 1}})
            assert await users.count({"age": 32}) == 1
            key = await users.insert({"name": "Bob", "age": 5})
            assert [d["_key"] for d in await users.find({"age": {"$lt": 18}})] == [key]
            with pytest.raises(docstore.ConflictError):
                await users.put("ann", {"x": 1}, if_rev=1)
            assert await users.delete(key)
            status = await db.status()
            assert len(status) == 3
            assert sorted(s["role"] for s in status) == ["follower", "follower", "leader"]
            assert all(s["term"] >= 1 for s in status)
            members = await db.members()
            assert members["voters"] == [1, 2, 3]


async def test_many_writes_in_flight_apply_once(cluster: Cluster) -> None:
    with trio.fail_after(20):
        async with docstore.connect(cluster.addresses, token=TOKEN, call_timeout=10) as db:
            c = db.collection("c")

            async def bump() -> None:
                await c.patch("n", {"$inc": {"v": 1}}, upsert=True)

            async with trio.open_nursery() as nursery:
                for _ in range(50):
                    nursery.start_soon(bump)
            doc = await c.get("n")
            assert doc is not None and doc["v"] == 50


async def test_retried_write_is_applied_once(cluster: Cluster) -> None:
    """The same session and sequence sent twice (a retry after a lost reply) apply once."""
    with trio.fail_after(20):
        async with docstore.connect(cluster.addresses, token=TOKEN, call_timeout=10) as db:
            ex = db.client
            cmd = docstore.commands.patch("c", "k", {"$inc": {"v": 1}}, upsert=True)
            # A session is opened through the log first; a write on one that is not
            # open is not applied (its outcome would be unknown to the writer).
            r0 = await ex.request("command", cmd, client_id="s.1", sequence=1)
            assert isinstance(r0, dict) and r0["error"] == "session_expired", r0
            await ex.request("command", OPEN_SESSION, client_id="s.1")
            r1 = await ex.request("command", cmd, client_id="s.1", sequence=1)
            r2 = await ex.request("command", cmd, client_id="s.1", sequence=1)
            assert r1 == r2
            doc = await db.collection("c").get("k")
            assert doc is not None and doc["v"] == 1


async def test_failover_watch_resumes_and_digests_match(cluster: Cluster) -> None:
    with trio.fail_after(30):
        async with docstore.connect(cluster.addresses, token=TOKEN, call_timeout=15) as db:
            c = db.collection("w")
            await c.put("a", {"i": 0})
            seen: list[int] = []
            async with c.watch() as changes:
                for i in range(1, 4):
                    await c.put("a", {"i": i})
                while len(seen) < 3:
                    ch = await changes.__anext__()
                    seen.append(ch["doc"]["i"])
                leader = cluster.leader()
                assert leader is not None
                await cluster.stop(leader)
                for i in range(4, 7):
                    await c.put("a", {"i": i})
                while len(seen) < 6:
                    ch = await changes.__anext__()
                    seen.append(ch["doc"]["i"])
            assert seen == [1, 2, 3, 4, 5, 6]
            await cluster.start(leader)
            target = await c.get("a")
            assert target is not None
            while True:
                digests = await db.node_digests()
                applied = {d["applied_index"] for d in digests.values()}
                if len(digests) == 3 and len(applied) == 1:
                    break
                await trio.sleep(0.05)
            assert len({d["digest"] for d in digests.values()}) == 1
            backup = await db.backup()
            assert backup[:8] == b"DSSNAP01"


def test_load_config_layers(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "cluster.toml"
    f.write_text(
        'secret = "x"\nelection_timeout_min = 0.5\n[nodes]\n1 = "127.0.0.1:1"\n2 = "127.0.0.1:2"\n'
    )
    cfg = load_config(str(f), id=2, election_timeout_min=None, heartbeat_interval=0.2)
    assert cfg.election_timeout_min == 0.5
    assert cfg.heartbeat_interval == 0.2
    assert cfg.data == str(tmp_path / "node2")
    nc = cfg.node_config()
    assert nc.listen == "127.0.0.1:2" and dict(nc.peers) == {1: "127.0.0.1:1"}
    with pytest.raises(ValueError, match="unknown setting"):
        load_config(str(f), bogus=1)


async def test_leader_deletes_expired_documents(cluster: Cluster) -> None:
    with trio.fail_after(20):
        async with docstore.connect(cluster.addresses, token=TOKEN, call_timeout=10) as db:
            c = db.collection("ttl")
            await c.put("gone", {"v": 1}, ttl=0.2)
            await c.put("stays", {"v": 1})
            for _ in range(100):  # the leader's expire rounds delete it
                if await c.count() == 1:
                    break
                await trio.sleep(0.1)
            assert await c.get("gone") is None and await c.get("stays") is not None


async def test_the_first_leader_records_the_cluster_settings(cluster: Cluster) -> None:
    with trio.fail_after(20):
        for node in cluster.nodes.values():
            while not node.state_machine.settings_recorded:  # type: ignore[attr-defined]  # noqa: ASYNC110
                await trio.sleep(0.05)
