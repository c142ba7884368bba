"""No request can stop the node: roles, bounded streams, validated watches.

The service runs on a real single-node cluster; most clients are in-memory
connections (:class:`MemoryClientConnection`), so "a client that does not
read" is exact and the bounds are read from the connection's queued-bytes
counter, not from timing or RSS.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

import docstore
from docstore.client import ForbiddenError
from docstore.server import (
    BACKUP_CHUNK,
    MAX_BACKUPS,
    MAX_WATCHES,
    DocstoreService,
    ServerConfig,
    load_config,
    serve,
)
from docstore.state_machine import DocstoreStateMachine
from trioraft.runtime import Node, serve_node
from trioraft.testing.chaos.run import free_ports
from trioraft.transport.memory import MemoryClientConnection
from trioraft.transport.messages import ClientRequest, ClientResponse

TOKENS = {"app": "app-token", "reporting": "reporting-token"}


def config(tmp_path: pathlib.Path) -> ServerConfig:
    return ServerConfig(
        id=1,
        listen=f"127.0.0.1:{free_ports(1)[0]}",
        data=str(tmp_path / "node1"),
        secret="s3cret",
        token="admin-token",
        tokens=TOKENS,
        roles={"reporting": "read"},
        election_timeout_min=0.1,
        election_timeout_max=0.2,
        heartbeat_interval=0.02,
    )


class Server:
    def __init__(self, service: DocstoreService, node: Node, nursery: trio.Nursery) -> None:
        self.service = service
        self.node = node
        self.nursery = nursery

    @asynccontextmanager
    async def client(
        self, client_id: str = "docstore", **kw: Any
    ) -> AsyncIterator[MemoryClientConnection]:
        conn = MemoryClientConnection(client_id, **kw)
        done = trio.Event()

        async def run() -> None:
            try:
                await conn.serve(self.node.handle_client)
            finally:
                done.set()

        self.nursery.start_soon(run)
        try:
            yield conn
        finally:
            conn.hang_up()
            with trio.fail_after(10):
                await done.wait()

    def temp_files(self) -> list[str]:
        return [f for f in os.listdir(self.node.config.data_dir) if f.endswith(".tmp")]


@pytest.fixture
async def server(tmp_path: pathlib.Path) -> AsyncIterator[Server]:
    cfg = config(tmp_path)
    sm = DocstoreStateMachine(os.path.join(cfg.data, "docstore"))
    service = DocstoreService(sm, cfg)
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(
            functools.partial(serve_node, cfg.node_config(), sm, client_service=service.build)
        )
        with trio.fail_after(10):
            while not (node.is_leader and node.status().commit_index > 0):  # noqa: ASYNC110
                await trio.sleep(0.01)
        yield Server(service, node, nursery)
        nursery.cancel_scope.cancel()


async def until(check: Any, within: float = 10.0) -> None:
    with trio.fail_after(within):
        while not check():  # noqa: ASYNC110 - state kept by other tasks
            await trio.sleep(0.005)


async def call(
    conn: MemoryClientConnection, kind: str, payload: object = None, rid: int = 1
) -> ClientResponse:
    """One request and its (first) response; other responses read meanwhile are dropped."""
    conn.request(ClientRequest(rid, kind, payload))
    with trio.fail_after(10):
        while True:
            for r in await conn.responses():
                if r.request_id == rid:
                    return r


async def put_docs(s: Server, n: int, size: int, coll: str = "c") -> None:
    async with s.client() as admin:
        for i in range(n):
            cmd = {"op": "put", "coll": coll, "key": f"k{i}", "doc": {"pad": "x" * size}}
            r = await call(admin, "command", cmd, rid=i + 1)
            assert r.ok and r.result["ok"], r  # type: ignore[index]


async def read_all(conn: MemoryClientConnection, until_done: set[int]) -> list[ClientResponse]:
    """Responses until every request in ``until_done`` got a final answer."""
    out: list[ClientResponse] = []
    with trio.fail_after(20):
        while until_done:
            for r in await conn.responses():
                out.append(r)
                if not r.ok or (isinstance(r.result, dict) and r.result.get("done")):
                    until_done.discard(r.request_id)
    return out


def assemble(responses: list[ClientResponse], rid: int) -> bytes:
    chunks = [r.result for r in responses if r.request_id == rid]
    data = b"".join(bytes(c["data"]) for c in chunks)  # type: ignore[index]
    last = chunks[-1]
    assert last["done"] and last["size"] == len(data)  # type: ignore[index]
    assert last["sha256"] == hashlib.sha256(data).hexdigest()  # type: ignore[index]
    assert [c["offset"] for c in chunks] == list(range(0, len(data), BACKUP_CHUNK))  # type: ignore[index]
    return data


# Small queues: a 2 MiB frame limit, 4 MiB per connection, streams wait at 512 KiB.
SMALL = {"max_frame": 2 << 20, "queue_bytes": 4 << 20}


# ------------------------------------------------------------------------ backup


async def test_backup_requests_not_read_stay_bounded(server: Server) -> None:
    """60 backups of a 3 MB database, never read: one streams, held back; 59 are refused."""
    await put_docs(server, 24, 120_000)
    async with server.client(**SMALL) as conn:
        conn.request(*[ClientRequest(i, "backup") for i in range(1, 61)])
        await until(lambda: conn.closed or conn.queued_bytes >= BACKUP_CHUNK)
        await trio.sleep(0.5)  # give a runaway producer time to show itself
        assert not conn.closed
        assert conn.queued_bytes <= conn.low_water + BACKUP_CHUNK + 60 * 200
        assert len(server.temp_files()) == 1
        responses = await read_all(conn, set(range(1, 61)))
    refused = {r.request_id for r in responses if r.error_code == "overloaded"}
    streamed = {r.request_id for r in responses if r.ok}
    assert len(refused) == 59 and len(streamed) == 1
    data = assemble(responses, streamed.pop())
    assert data[:8] == b"DSSNAP01" and len(data) > 2_800_000
    assert server.temp_files() == []


async def test_backups_per_node_are_capped(server: Server) -> None:
    """Two backups stream (held back: nobody reads); a third connection's is refused."""
    assert MAX_BACKUPS == 2
    await put_docs(server, 24, 120_000)
    async with server.client(**SMALL) as a, server.client(**SMALL) as b:
        for conn in (a, b):
            conn.request(ClientRequest(1, "backup"))
        await until(lambda: a.queued_bytes >= BACKUP_CHUNK and b.queued_bytes >= BACKUP_CHUNK)
        async with server.client(**SMALL) as extra:
            r = await call(extra, "backup", rid=9)
            assert r.error_code == "overloaded" and "backups" in r.error_message
        for conn in (a, b):
            assemble(await read_all(conn, {1}), 1)
    assert server.temp_files() == []


async def test_backup_temp_file_removed_when_the_connection_dies(server: Server) -> None:
    await put_docs(server, 24, 120_000)
    async with server.client(**SMALL) as conn:
        conn.request(ClientRequest(1, "backup"))
        await until(lambda: conn.queued_bytes >= BACKUP_CHUNK)
        assert len(server.temp_files()) == 1
    # The client hung up mid-stream; the context waited for the handler to end.
    assert server.temp_files() == []


# ------------------------------------------------------------------------- watch


async def test_watch_that_cannot_be_delivered_falls_behind(server: Server) -> None:
    """The watcher does not read: writers do not wait, the watch ends with resync_required."""
    async with server.client(**SMALL) as watcher:
        watcher.request(ClientRequest(1, "watch", {"coll": "w", "buffer": 8}))
        await until(lambda: watcher.queued_bytes > 0)  # the {"rev"} answer
        await put_docs(server, 40, 64_000, coll="w")  # all 40 writes are answered
        await until(lambda: watcher.queued_bytes > watcher.low_water)
        assert not watcher.closed
        responses = await read_all(watcher, {1})
    assert responses[0].result == {"rev": responses[0].result["rev"]}  # type: ignore[index]
    changes = [r for r in responses if r.ok and "change" in r.result]  # type: ignore[operator]
    assert 0 < len(changes) < 40
    assert responses[-1].error_code == "resync_required"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"coll": "c", "buffer": math.inf}, "buffer"),
        ({"coll": "c", "buffer": 0}, "buffer"),
        ({"coll": "c", "buffer": 65_537}, "buffer"),
        ({"coll": "c", "buffer": True}, "buffer"),
        ({"coll": "c", "buffer": 8.0}, "buffer"),
        ({"coll": "c", "since_rev": -1}, "since_rev"),
        ({"coll": "c", "since_rev": "3"}, "since_rev"),
        ({"coll": "c", "since_rev": False}, "since_rev"),
        ({"coll": ""}, "coll"),
        ({"coll": "$sys"}, "coll"),
        ({"coll": 5}, "coll"),
        ({}, "coll"),
        ({"coll": "c", "filter": {"$nope": 1}}, "filter"),
        ({"coll": "c", "bogus": 1}, "bogus"),
        (["c"], "payload"),
    ],
)
async def test_watch_payload_is_validated(server: Server, payload: object, field: str) -> None:
    async with server.client("reporting") as conn:
        r = await call(conn, "watch", payload)
    assert (r.ok, r.error_code) == (False, "bad_request")
    assert field in r.error_message


async def test_watch_buffer_infinity_is_bad_request(server: Server) -> None:
    async with server.client() as conn:
        r = await call(conn, "watch", {"coll": "c", "buffer": math.inf})
    assert r.error_code == "bad_request" and "buffer" in r.error_message


async def test_duplicate_watch_request_id_is_refused(server: Server) -> None:
    async with server.client() as conn:
        assert (await call(conn, "watch", {"coll": "c"}, rid=7)).ok
        r = await call(conn, "watch", {"coll": "d"}, rid=7)
        assert r.error_code == "bad_request"
        assert "request id 7 is already a running watch" in r.error_message
        assert (await call(conn, "cancel", {"request_id": 7}, rid=8)).result is True
        r = await call(conn, "cancel", {"request_id": 7}, rid=9)
        assert (r.ok, r.error_code) == (False, "bad_request")  # no such watch any more
        assert (await call(conn, "watch", {"coll": "d"}, rid=7)).ok  # free again


async def test_watches_per_connection_are_capped(server: Server) -> None:
    async with server.client() as conn:
        for rid in range(1, MAX_WATCHES + 1):
            assert (await call(conn, "watch", {"coll": "c"}, rid=rid)).ok
        r = await call(conn, "watch", {"coll": "c"}, rid=1000)
        assert r.error_code == "overloaded" and str(MAX_WATCHES) in r.error_message
        assert (await call(conn, "cancel", {"request_id": 1}, rid=1001)).result is True
        assert (await call(conn, "watch", {"coll": "c"}, rid=1002)).ok


# ------------------------------------------------------------------------- roles


async def test_read_token_cannot_write(server: Server) -> None:
    put = {"op": "put", "coll": "c", "key": "k", "doc": {"a": 1}}
    async with server.client("reporting") as conn:
        r = await call(conn, "command", put)
        assert (r.ok, r.error_code) == (False, "forbidden")
        assert "command" in r.error_message and "write" in r.error_message
        for kind, payload in [
            ("query", {"op": "get", "coll": "c", "key": "k"}),
            ("status", None),
            ("members", None),
            ("digest", None),
            ("watch", {"coll": "c"}),
            ("cancel", {"request_id": 2}),  # the watch just started
        ]:
            r = await call(conn, kind, payload, rid=2)
            assert r.ok, (kind, r)
    async with server.client("reporting") as conn:
        assert (await call(conn, "backup")).error_code == "forbidden"


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("add_learner", {"id": 9, "address": "127.0.0.1:1"}),
        ("promote", {"id": 9}),
        ("remove_node", {"id": 1}),
        ("transfer_leader", {}),
        ("snapshot", None),
        ("backup", None),
    ],
)
async def test_write_token_cannot_change_membership(
    server: Server, kind: str, payload: object
) -> None:
    async with server.client("app") as conn:
        r = await call(conn, kind, payload)
    assert (r.ok, r.error_code) == (False, "forbidden")
    assert kind in r.error_message and "admin" in r.error_message
    assert server.node.membership.all_voters == {1}


async def test_write_token_cannot_register_extension(server: Server) -> None:
    register = {"op": "register", "kind": "command", "name": "transfer", "version": 1}
    put = {"op": "put", "coll": "c", "key": "k", "doc": {"a": 1}}
    async with server.client("app") as conn:
        assert (await call(conn, "command", put)).result["ok"]  # type: ignore[index]
        r = await call(conn, "command", register, rid=2)
        assert r.error_code == "forbidden" and "register" in r.error_message
        r = await call(conn, "command", {"op": "batch", "commands": [put, register]}, rid=3)
        assert r.error_code == "forbidden" and "register" in r.error_message
    async with server.client("docstore") as conn:
        r = await call(conn, "command", register)
        assert r.error_code != "forbidden"  # the admin may (the node lacks the code: refused)


async def test_admin_token_may_snapshot(server: Server) -> None:
    # The fixture waits for a commit; the snapshot is of what is applied.
    with trio.fail_after(10):
        await server.node.wait_applied(1)
    async with server.client("docstore") as conn:
        r = await call(conn, "snapshot")
    assert r.ok and r.result["index"] >= 1  # type: ignore[index]


def test_roles_config(tmp_path: pathlib.Path) -> None:
    cfg = ServerConfig(tokens=TOKENS)
    assert cfg.role("docstore") == "admin"
    assert cfg.role("app") == "write"
    f = tmp_path / "node.toml"
    f.write_text('secret = "x"\nroles = {reporting = "read", docstore = "write"}\n')
    cfg = load_config(str(f))
    assert cfg.role("reporting") == "read" and cfg.role("docstore") == "write"
    assert cfg.role("app") == "write"
    f.write_text('secret = "x"\nroles = {reporting = "superuser"}\n')
    with pytest.raises(ValueError, match="superuser"):
        load_config(str(f))
    with pytest.raises(ValueError, match="roles"):
        load_config(None, roles=["read"])


async def test_forbidden_is_a_typed_client_error(tmp_path: pathlib.Path) -> None:
    cfg = config(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, cfg)
        async with docstore.connect(
            [cfg.listen], token=TOKENS["reporting"], client="reporting", call_timeout=10
        ) as db:
            assert await db.collection("c").get("k") is None
            with trio.fail_after(5), pytest.raises(ForbiddenError, match="write") as info:
                await db.collection("c").put("k", {"a": 1})  # not retried
            assert info.value.code == "forbidden"
        nursery.cancel_scope.cancel()


async def test_requests_in_flight_are_capped_per_connection(server: Server) -> None:
    # One frame of 5,000 reads used to start 5,000 tasks at once (and as many
    # pending reads); a connection gets MAX_IN_FLIGHT, the rest `overloaded`.
    from docstore.server import MAX_IN_FLIGHT

    n = MAX_IN_FLIGHT + 500
    q = {"op": "get", "coll": "c", "key": "k"}
    async with server.client() as conn:
        conn.request(*(ClientRequest(i, "query", q) for i in range(1, n + 1)))
        answers: list[ClientResponse] = []
        with trio.fail_after(20):
            while len(answers) < n:
                answers += await conn.responses()
    codes = [r.error_code for r in answers]
    assert codes.count("overloaded") == n - MAX_IN_FLIGHT
    assert codes.count("") == MAX_IN_FLIGHT
    async with server.client() as conn:  # the slots are given back
        assert (await call(conn, "query", q)).ok


async def test_a_bad_query_in_a_frame_of_queries_is_refused_alone(server: Server) -> None:
    # The queries of one frame share a read point (one task, one ReadIndex):
    # a query that fails validation must still be answered by itself.
    await put_docs(server, 2, 10)
    good = [{"op": "get", "coll": "c", "key": f"k{i}"} for i in range(2)]
    async with server.client() as conn:
        conn.request(
            ClientRequest(1, "query", good[0]),
            ClientRequest(2, "query", {"op": "get", "coll": "c"}),  # no key
            ClientRequest(3, "query", good[1], consistency="local"),
            ClientRequest(4, "query", good[1]),
            ClientRequest(5, "query", "not a map"),
        )
        answers: dict[int, ClientResponse] = {}
        with trio.fail_after(10):
            while len(answers) < 5:
                for r in await conn.responses():
                    assert r.request_id not in answers, "answered twice"
                    answers[r.request_id] = r
    codes = [answers[i].error_code for i in range(1, 6)]
    assert codes == ["", "bad_request", "", "", "bad_request"]
    assert "key" in answers[2].error_message
    for i, key in ((1, "k0"), (3, "k1"), (4, "k1")):
        assert answers[i].result["value"]["_key"] == key  # type: ignore[index]


def test_docstore_error_messages_are_cut_to_the_protocol_limit() -> None:
    from docstore.engine.errors import InvalidCommandError, ResyncRequired
    from docstore.server import error_response
    from trioraft.transport.codec import MAX_TEXT

    for exc in (ResyncRequired("x" * 1_000_000), InvalidCommandError("y" * 1_000_000)):
        r = error_response(1, exc)
        assert r.error_code == exc.code and len(r.error_message) <= MAX_TEXT
