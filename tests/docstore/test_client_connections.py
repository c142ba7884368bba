"""docstore.connect spreads queries over its connections to the leader; writes keep to one."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

import docstore
from docstore.client import READER_RETRY, RemoteDatabase, RemoteExecutor, _Link
from trioraft.client.connection import NoListenerError

from .test_client import TOKEN, Cluster, running


@pytest.fixture
async def cluster(tmp_path: pathlib.Path) -> AsyncIterator[Cluster]:
    async with running(tmp_path) as c:
        yield c


async def _leader(cluster: Cluster) -> int:
    while (n := cluster.leader()) is None:  # noqa: ASYNC110 - an election
        await trio.sleep(0.05)
    return n


def _clients(cluster: Cluster, n: int) -> int:
    transport = cluster.nodes[n].transport
    assert transport is not None
    return transport.statistics().clients


@asynccontextmanager
async def _filled(
    cluster: Cluster, n: int, **connect: Any
) -> AsyncIterator[tuple[RemoteDatabase, list[str]]]:
    """A client of ``cluster`` (``connect`` its options) after ``n`` puts: k<i> = {"v": i}."""
    async with docstore.connect(cluster.addresses, token=TOKEN, **connect) as db:
        keys = [f"k{i}" for i in range(n)]
        for i, k in enumerate(keys):
            await db.collection("c").put(k, {"v": i})
        yield db, keys


async def _gets(db: RemoteDatabase, keys: list[str], consistency: str) -> list[object]:
    coll = db.collection("c")
    out: list[object] = [None] * len(keys)

    async def one(i: int) -> None:
        doc = await coll.get(keys[i], consistency=consistency)
        out[i] = None if doc is None else doc["v"]

    async with trio.open_nursery() as nursery:
        for i in range(len(keys)):
            nursery.start_soon(one, i)
    return out


@pytest.mark.parametrize("connections", [1, 2, 3])
async def test_queries_use_every_connection_and_answer_right(
    cluster: Cluster, connections: int
) -> None:
    with trio.fail_after(30):
        async with _filled(cluster, 40, call_timeout=10, connections=connections) as (db, keys):
            coll = db.collection("c")
            leader = await _leader(cluster)
            before = _clients(cluster, leader)
            ex = db.client
            # The first queries open the other connections (in the background).
            assert await _gets(db, keys, "linearizable") == list(range(40))
            while None in ex._readers:  # noqa: ASYNC110 - opened by a background task
                await trio.sleep(0.01)
            for consistency in ("linearizable", "lease", "local"):
                assert await _gets(db, keys, consistency) == list(range(40))
            # The first connection, and the others opened by the queries, to the leader.
            assert _clients(cluster, leader) == before + connections - 1
            readers = [r for r in ex._readers if r is not None]
            assert len(readers) == connections - 1
            assert all(r.conn.remote == cluster.addr[leader] for r in readers)
            # Concurrent queries were spread: each extra connection carried some.
            assert all(r.conn.frames_out > 0 for r in readers)
            # Writes keep to the first connection.
            sent = [r.conn.frames_out for r in readers]
            for i, k in enumerate(keys):
                await coll.put(k, {"v": i + 100})
            assert [r.conn.frames_out for r in readers] == sent
            assert await _gets(db, keys, "linearizable") == [i + 100 for i in range(40)]
        # Closing the client closes them all.
        with trio.fail_after(5):
            while _clients(cluster, leader) != before - 1:  # noqa: ASYNC110 - the node sees the close
                await trio.sleep(0.02)


async def test_a_caller_alone_opens_no_other_connection(cluster: Cluster) -> None:
    with trio.fail_after(30):
        async with docstore.connect(cluster.addresses, token=TOKEN, call_timeout=10) as db:
            coll = db.collection("c")
            await coll.put("k", {"v": 1})
            leader = await _leader(cluster)
            before = _clients(cluster, leader)
            for consistency in ("linearizable", "lease", "local") * 10:
                assert (await coll.get("k", consistency=consistency)) is not None
            await trio.sleep(0.2)
            assert db.client._readers == [None] and not db.client._opening
            assert _clients(cluster, leader) == before


@pytest.mark.parametrize("how", ["stop", "transfer"])
async def test_queries_follow_the_leader_after_failover(cluster: Cluster, how: str) -> None:
    with trio.fail_after(40):
        async with _filled(cluster, 20, call_timeout=15) as (db, keys):
            assert await _gets(db, keys, "linearizable") == list(range(20))
            old = await _leader(cluster)
            if how == "stop":
                await cluster.stop(old)
            else:  # the old leader stays up: its connections stay open
                await db.transfer_leader()
            # Every query is answered by the new leader, through its connections.
            assert await _gets(db, keys, "linearizable") == list(range(20))
            assert await _gets(db, keys, "lease") == list(range(20))
            new = await _leader(cluster)
            assert new != old
            ex = db.client
            assert ex._link is not None and ex._link.conn.remote == cluster.addr[new]

            def on_new() -> bool:
                r = ex._readers[0]
                return r is not None and not r.conn.closed and r.conn.remote == cluster.addr[new]

            # The queries move the other connection to the new leader too.
            while not on_new():
                assert await _gets(db, keys, "lease") == list(range(20))
                await trio.sleep(0.01)


async def test_an_extra_connection_that_fails_leaves_queries_on_the_first(
    cluster: Cluster,
) -> None:
    with trio.fail_after(30):
        async with _filled(cluster, 20, call_timeout=10) as (db, keys):
            ex = db.client
            attempts = 0

            async def refuse(address: str) -> object:
                nonlocal attempts
                attempts += 1
                raise NoListenerError(address)

            ex._connect = refuse  # type: ignore[method-assign,assignment]
            for _ in range(5):
                assert await _gets(db, keys, "linearizable") == list(range(20))
            assert ex._readers == [None]
            assert attempts == 1  # not again before READER_RETRY has passed
            await trio.sleep(READER_RETRY + 0.1)
            assert await _gets(db, keys, "lease") == list(range(20))
            assert attempts == 2


@pytest.mark.parametrize("bad", [0, 17, -1, True, 2.0, "2"])
def test_connections_is_checked(bad: object) -> None:
    with pytest.raises(ValueError, match="connections"):
        RemoteExecutor(["127.0.0.1:1"], token="t", connections=bad)  # type: ignore[arg-type]


class _Conn:
    def __init__(self, remote: str, in_flight: int) -> None:
        self.remote = remote
        self.in_flight = in_flight
        self.closed = False


def test_a_query_takes_the_connection_with_fewest_calls_in_flight() -> None:
    # Not round-robin: that splits every group of closed-loop callers over all
    # connections and keeps their cycles in step.
    ex = RemoteExecutor(["a:1"], token="t", connections=3)
    first, r1, r2 = (_Link(_Conn("a:1", n), trio.Event()) for n in (5, 2, 3))  # type: ignore[arg-type]
    ex._readers = [r1, r2]
    assert ex._query_link(first) is r1
    r1.conn.in_flight = 9  # type: ignore[misc]
    assert ex._query_link(first) is r2
    first.conn.in_flight = 3  # type: ignore[misc]
    assert ex._query_link(first) is first  # a tie: the first connection
    r2.conn.remote = "b:1"  # type: ignore[misc]  # no longer to the leader: dropped
    first.conn.in_flight = 10  # type: ignore[misc]
    assert ex._query_link(first) is r1
    assert ex._readers == [r1, None] and r2.done.is_set()
    r1.conn.closed = True  # type: ignore[misc]
    assert ex._query_link(first) is first
    assert ex._readers == [None, None]
