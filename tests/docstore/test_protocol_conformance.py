"""The docstore service, driven with raw frames exactly as docs/protocol.md says.

No trioraft client code: a bare WebSocket, frames built with the codec's
message encoder, the handshake computed by hand.  Each test follows one
paragraph or table row of docs/protocol.md ("Handshake", "Client calls",
"The docstore service", "Error codes"), so a change to the protocol that the
document does not follow fails here.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from typing import Any

import cbor2
import pytest
import trio
import trio_websocket

from docstore.server import ServerConfig, serve
from trioraft.runtime import Node
from trioraft.testing.chaos.run import free_ports
from trioraft.transport import messages as wire
from trioraft.transport.codec import (
    decode_frame,
    encode_frame,
    handshake_mac,
    new_nonce,
    verify_handshake_mac,
)

CLUSTER = "docstore"  # the default cluster id of `docstore serve`
CLIENT = "docstore"  # the client id that goes with `docstore serve --token`
TOKEN = "conformance-token"


async def binary(ws: trio_websocket.WebSocketConnection) -> bytes:
    """The next WebSocket message, which a node only ever sends as binary."""
    data = await ws.get_message()
    assert isinstance(data, bytes), data
    return data


class Raw:
    """One client connection speaking frames by hand."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, node_id: int) -> None:
        self.ws = ws
        self.node_id = node_id  # the listener's id, from its Hello
        self.pending: list[wire.ClientResponse] = []

    async def send(self, *requests: wire.ClientRequest) -> None:
        await self.ws.send_message(encode_frame(list(requests), cluster_id=CLUSTER))

    async def send_raw(self, message: list[Any]) -> None:
        """A frame holding one message given as its CBOR array (fields by hand)."""
        await self.ws.send_message(cbor2.dumps({"v": 2, "c": CLUSTER, "m": [message]}))

    async def response(self, rid: int) -> wire.ClientResponse:
        """The next response to ``rid`` (others are kept for later)."""
        with trio.fail_after(10):
            while True:
                for r in self.pending:
                    if r.request_id == rid:
                        self.pending.remove(r)
                        return r
                frame = decode_frame(await binary(self.ws), cluster_id=CLUSTER)
                for m in frame:
                    assert isinstance(m, wire.ClientResponse), m
                    self.pending.append(m)

    async def call(
        self, rid: int, kind: str, payload: object = None, **kw: Any
    ) -> wire.ClientResponse:
        await self.send(wire.ClientRequest(rid, kind, payload, **kw))
        return await self.response(rid)


@pytest.fixture
async def node(tmp_path: pathlib.Path) -> AsyncIterator[Node]:
    cfg = ServerConfig(
        id=1,
        listen=f"127.0.0.1:{free_ports(1)[0]}",
        data=str(tmp_path / "node1"),
        secret="conformance-secret",
        token=TOKEN,
        election_timeout_min=0.1,
        election_timeout_max=0.2,
        heartbeat_interval=0.02,
    )
    assert (cfg.cluster_id, cfg.role(CLIENT)) == (CLUSTER, "admin")
    async with trio.open_nursery() as nursery:
        n: Node = await nursery.start(serve, cfg)
        with trio.fail_after(10):
            while not (n.is_leader and n.status().commit_index > 0):  # noqa: ASYNC110
                await trio.sleep(0.01)
        yield n
        nursery.cancel_scope.cancel()


def url(node: Node) -> str:
    return f"ws://{node.config.address}/"


async def handshake(ws: trio_websocket.WebSocketConnection, token: str = TOKEN) -> list[Any]:
    """Steps 1-3 of "Handshake"; returns the listener's step-2 messages."""
    opener = wire.ClientHello(CLIENT, CLUSTER, new_nonce())
    await ws.send_message(encode_frame([opener]))
    reply = decode_frame(await binary(ws))
    hello, auth = reply
    assert isinstance(hello, wire.Hello) and isinstance(auth, wire.HelloAuth)
    # With a wrong key the listener's MAC does not verify; we answer anyway,
    # to see the listener refuse ours.
    assert verify_handshake_mac(token, "listener", opener, hello, auth.mac) == (token == TOKEN)
    await ws.send_message(
        encode_frame([wire.HelloAuth(handshake_mac(token, "dialer", opener, hello))])
    )
    return reply


@pytest.fixture
async def raw(node: Node) -> AsyncIterator[Raw]:
    async with trio_websocket.open_websocket_url(url(node)) as ws:
        hello = (await handshake(ws))[0]
        yield Raw(ws, hello.node_id)


# ------------------------------------------------------------------ handshake


async def test_handshake_names_the_listener_and_succeeds_silently(raw: Raw) -> None:
    # The listener's id is in its Hello (step 2); success is not announced:
    # the first response to a request is the proof.
    assert raw.node_id == 1
    r = await raw.call(1, "status")
    assert r.ok and r.result["node_id"] == 1  # type: ignore[index]


async def test_a_wrong_token_gets_hello_reject_bad_mac(node: Node) -> None:
    async with trio_websocket.open_websocket_url(url(node)) as ws:
        await handshake(ws, token="wrong")
        with trio.fail_after(10):
            rejected = decode_frame(await binary(ws))
        assert isinstance(rejected[0], wire.HelloReject) and rejected[0].code == "bad_mac"


# -------------------------------------------------------------------- command


def cbor(v: object) -> bytes:
    return cbor2.dumps(v)


async def test_command_as_bytes_and_as_a_map(raw: Raw) -> None:
    put = {"op": "put", "coll": "c", "key": "a", "doc": {"n": 1}}
    r = await raw.call(1, "command", cbor(put))
    assert r.ok and r.result["ok"] is True and r.result["rev"] > 0  # type: ignore[index]
    put2 = {**put, "key": "b"}
    r = await raw.call(2, "command", put2)  # older clients send the map
    assert r.ok and r.result["ok"] is True  # type: ignore[index]
    r = await raw.call(3, "query", {"op": "get", "coll": "c", "key": "b"})
    assert r.ok and r.result["ok"] is True  # type: ignore[index]
    assert r.result["value"]["n"] == 1 and r.result["value"]["_key"] == "b"  # type: ignore[index]


async def test_query_wraps_the_value_and_a_missing_key_is_null(raw: Raw) -> None:
    await raw.call(1, "command", cbor({"op": "put", "coll": "c", "key": "a", "doc": {"x": 2}}))
    for rid, consistency in enumerate(("linearizable", "lease", "local"), start=2):
        r = await raw.call(
            rid, "query", {"op": "get", "coll": "c", "key": "a"}, consistency=consistency
        )
        assert isinstance(r.result, dict) and set(r.result) == {"ok", "value"}, consistency
        assert r.result["ok"] is True and r.result["value"]["x"] == 2, consistency
    r = await raw.call(9, "query", {"op": "get", "coll": "c", "key": "nope"})
    assert r.ok and r.result == {"ok": True, "value": None}


async def test_consistency_may_be_left_out(raw: Raw) -> None:
    # A ClientRequest of six fields (no consistency) is linearizable.
    await raw.send_raw([32, 5, "query", {"op": "collections"}, "", 0])
    r = await raw.response(5)
    assert r.ok and r.result["ok"] is True  # type: ignore[index]


async def test_status_members_digest_payloads(raw: Raw) -> None:
    status = (await raw.call(1, "status")).result
    assert isinstance(status, dict)
    for key in (
        "node_id",
        "role",
        "term",
        "leader_id",
        "leader_address",
        "commit_index",
        "applied_index",
        "last_index",
        "snapshot_index",
        "voters",
        "learners",
        "joint",
        "address",
        "lag",
    ):
        assert key in status, key
    assert status["role"] == "leader" and status["leader_id"] == 1
    members = (await raw.call(2, "members")).result
    assert isinstance(members, dict)
    assert set(members) == {"leader_id", "voters", "learners", "addresses"}
    assert members["voters"] == [1] and members["addresses"] == {"1": status["address"]}
    digest = (await raw.call(3, "digest")).result
    assert isinstance(digest, dict) and set(digest) == {"digest", "applied_index"}
    assert len(digest["digest"]) == 64


# --------------------------------------------------------------------- errors


async def test_malformed_requests_are_bad_request(raw: Raw) -> None:
    cases: list[tuple[str, object, str]] = [
        ("frobnicate", None, "unknown request kind"),
        ("command", [1, 2], "command"),  # not a map
        ("command", b"\xff\xff", "payload"),  # not CBOR
        ("command", cbor(["put"]), "command"),  # CBOR, not a map
        ("command", cbor({"op": "put", "coll": "c", "key": 5, "doc": {}}), "key"),
        ("command", {"op": "put", "coll": "c", "key": 5, "doc": {}}, "key"),
        ("query", [1], "query"),  # not a map, like a command
        ("query", "get", "query"),
        ("query", {"op": "get", "coll": "c"}, "key"),
    ]
    for rid, (kind, payload, field) in enumerate(cases, start=1):
        r = await raw.call(rid, kind, payload)
        assert (r.ok, r.error_code) == (False, "bad_request"), (kind, payload, r)
        assert field in r.error_message, (kind, payload, r)
        if kind != "frobnicate":  # a refused command or query carries the engine's result
            assert isinstance(r.result, dict) and r.result["ok"] is False, r


async def test_a_refused_command_reaches_no_log(raw: Raw, node: Node) -> None:
    # The leader records the cluster's settings on its own within 50 ms of its
    # election (docstore.server._leader_duties): once that entry is in, only
    # the refused command could move the log.
    with trio.fail_after(10):
        while not node.state_machine.settings_recorded:  # type: ignore[attr-defined]  # noqa: ASYNC110
            await trio.sleep(0.01)
    before = node.status().last_index
    r = await raw.call(1, "command", cbor({"op": "put", "coll": "c", "key": 5, "doc": {}}))
    assert r.error_code == "bad_request"
    assert node.status().last_index == before


# --------------------------------------------------------------------- cancel


async def test_cancel_ends_the_watch_with_one_final_response(raw: Raw) -> None:
    first = await raw.call(1, "watch", {"coll": "c"})
    assert first.ok and "rev" in first.result  # type: ignore[operator]
    r = await raw.call(2, "cancel", {"request_id": 1})
    assert r.ok and r.result is True
    final = await raw.response(1)
    assert (final.ok, final.error_code, final.error_message) == (False, "closed", "cancelled")
    # Nothing more for request 1, even after a write to the watched collection.
    await raw.call(3, "command", cbor({"op": "put", "coll": "c", "key": "k", "doc": {}}))
    await raw.call(4, "status")
    assert not [p for p in raw.pending if p.request_id == 1]


async def test_cancel_of_an_unknown_request_is_bad_request(raw: Raw) -> None:
    for rid, payload in enumerate(({"request_id": 77}, {}, None, [1]), start=1):
        r = await raw.call(rid, "cancel", payload)
        assert (r.ok, r.error_code) == (False, "bad_request"), payload


# ------------------------------------------------------------------- sessions


async def test_sequence_zero_opens_a_session(raw: Raw) -> None:
    opened = await raw.call(1, "command", cbor({"op": "open_session"}), client_id="s1")
    assert opened.ok and opened.result["ok"] is True  # type: ignore[index]
    assert opened.result["session"] == f"{CLIENT}/s1"  # type: ignore[index]
    again = await raw.call(2, "command", {"op": "open_session"}, client_id="s1")
    assert again.ok and again.result["ok"] is True  # type: ignore[index]
    r = await raw.call(
        3, "command", cbor({"op": "put", "coll": "c", "key": "k", "doc": {}}), client_id="s2"
    )
    assert r.error_code == "bad_request" and r.error_message.startswith("sequence")


async def test_a_retry_gets_the_first_result_whatever_it_carries(raw: Raw) -> None:
    await raw.call(1, "command", cbor({"op": "open_session"}), client_id="s")
    first = await raw.call(
        2,
        "command",
        cbor({"op": "put", "coll": "c", "key": "k", "doc": {"v": 1}}),
        client_id="s",
        sequence=1,
    )
    assert first.ok and first.result["ok"] is True  # type: ignore[index]
    retry = await raw.call(
        3,
        "command",
        cbor({"op": "put", "coll": "c", "key": "k", "doc": {"v": 2}}),
        client_id="s",
        sequence=1,
    )
    assert retry.ok and retry.result == first.result
    r = await raw.call(4, "query", {"op": "get", "coll": "c", "key": "k"})
    assert r.result["value"]["v"] == 1  # type: ignore[index]  # the retry applied nothing
