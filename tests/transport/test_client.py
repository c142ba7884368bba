"""Client connections: token handshake, many calls in flight, coalescing, misbehaving clients."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import trio

from trioraft.client.connection import (
    ClientConnectionError,
    Connection,
    ConnectionClosedError,
    HandshakeError,
    open_client_connection,
)
from trioraft.transport._ws import Closed, dial, dialer_handshake
from trioraft.transport.base import ClientConnection, ClientHandler
from trioraft.transport.codec import encode_frame
from trioraft.transport.messages import ClientHello, ClientRequest, ClientResponse
from trioraft.transport.websocket import WebSocketTransport

from .inbox import Inbox, hb
from .wshelpers import CLUSTER, addr, eventually, mesh, node

TOKENS = {"app": b"app token", "ops": "text tokens work too"}


@pytest.fixture(autouse=True)
def _log_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trioraft")


async def echo(conn: ClientConnection) -> None:
    """Answers each request after a random short pause, so answers overtake each other."""

    async def answer(request: ClientRequest) -> None:
        await trio.sleep(random.random() * 0.01)
        conn.send([ClientResponse(request.request_id, True, {"echo": request.payload})])

    async with trio.open_nursery() as nursery:
        while True:
            try:
                requests = await conn.receive()
            except trio.EndOfChannel:
                return
            for r in requests:
                nursery.start_soon(answer, r)


@asynccontextmanager
async def server(
    handler: ClientHandler | None = echo, **kw: object
) -> AsyncIterator[WebSocketTransport]:
    kw.setdefault("client_tokens", TOKENS)
    async with node(1, Inbox(), client_handler=handler, **kw) as t:  # type: ignore[arg-type]
        yield t


def connect(
    t: WebSocketTransport,
    client_id: str = "app",
    token: bytes | str = b"app token",
    max_frame: int = 16 << 20,
) -> AbstractAsyncContextManager[Connection]:
    return open_client_connection(
        addr(t), cluster_id=CLUSTER, client_id=client_id, token=token, max_frame=max_frame
    )


async def test_many_calls_in_flight_over_one_connection() -> None:
    async with server() as t, connect(t) as conn:
        assert conn.node_id == 1 and conn.client_id == "app"
        results: dict[int, ClientResponse] = {}

        async def one(i: int) -> None:
            results[i] = await conn.call(ClientRequest(0, "read", {"i": i}))

        async with trio.open_nursery() as nursery:
            for i in range(500):
                nursery.start_soon(one, i)
        assert all(results[i].ok and results[i].result == {"echo": {"i": i}} for i in range(500))
        stats = t.statistics()
        # Requests queued together travel together, and so do the answers.
        assert stats.client_frames_in < 250 and conn.frames_out < 250
        assert stats.client_frames_out < 500 and conn.frames_in < 500
        assert stats.clients == 1
    await eventually(lambda: t.statistics().clients == 0)


async def test_send_and_receive_without_call() -> None:
    async with server() as t, connect(t, "ops", "text tokens work too") as conn:
        ids = [conn.next_request_id() for _ in range(20)]
        conn.send([ClientRequest(i, "status") for i in ids])
        got: list[ClientResponse] = []
        while len(got) < 20:
            got += await conn.receive()
        assert sorted(r.request_id for r in got) == ids
        with pytest.raises(trio.WouldBlock):
            conn.send([ClientRequest(conn.next_request_id(), "status")] * 5000)
        with pytest.raises(ValueError, match="payload"):
            await conn.call(ClientRequest(0, "propose", payload={1: 2}))


async def test_token_lookup_function() -> None:
    lookups: list[str] = []

    def lookup(client_id: str) -> bytes | None:
        lookups.append(client_id)
        return b"fn-token" if client_id == "fn" else None

    async with server(client_tokens=lookup) as t, connect(t, "fn", b"fn-token") as conn:
        assert (await conn.call(ClientRequest(0, "status"))).ok
    assert lookups == ["fn"]


@pytest.mark.parametrize(
    ("client_id", "token", "cluster", "code"),
    [
        ("app", b"wrong token", CLUSTER, "bad_mac"),
        ("nobody", b"app token", CLUSTER, "bad_mac"),  # unknown ids look like bad tokens
        ("app", b"app token", "other", "wrong_cluster"),
    ],
)
async def test_bad_credentials_are_refused(
    client_id: str, token: bytes, cluster: str, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    served: list[str] = []

    async def handler(conn: ClientConnection) -> None:
        served.append(conn.client_id)

    async with server(handler) as t:
        with pytest.raises(HandshakeError) as info:
            async with open_client_connection(
                addr(t), cluster_id=cluster, client_id=client_id, token=token
            ):
                pass
        assert info.value.code == code
        await eventually(lambda: t.statistics().handshakes_rejected == 1)
        assert "refused a connection" in caplog.text
        assert served == []
        async with connect(t):  # a good client still gets in
            await eventually(lambda: served == ["app"])


async def test_nodes_without_a_client_handler_refuse_clients() -> None:
    async with server(None) as t:
        with pytest.raises(HandshakeError, match="client connections"):
            async with connect(t):
                pass


async def test_connect_failures() -> None:
    async with server() as t:
        port = t.port
    with pytest.raises(ClientConnectionError, match="cannot connect"):
        async with open_client_connection(
            f"127.0.0.1:{port}", cluster_id=CLUSTER, client_id="app", token=b"x"
        ):
            pass


async def test_calls_fail_when_the_connection_drops() -> None:
    async def ignore(conn: ClientConnection) -> None:
        while True:
            await conn.receive()  # never answers

    async with server(ignore) as t, connect(t) as conn:
        async with trio.open_nursery() as nursery:

            async def pending() -> None:
                with pytest.raises(ConnectionClosedError):
                    await conn.call(ClientRequest(0, "read"))

            nursery.start_soon(pending)
            await eventually(lambda: t.statistics().client_frames_in == 1)
            assert not conn.closed
            await conn._sock.send(b"\xff")  # the server hangs up on a bad frame
        assert conn.closed
        with pytest.raises(ConnectionClosedError):
            await conn.call(ClientRequest(0, "read"))
        with pytest.raises(ConnectionClosedError):
            await conn.receive()
        assert t.statistics().bad_frames == 1


async def test_handler_errors_close_the_connection_not_the_node(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(conn: ClientConnection) -> None:
        await conn.receive()
        raise RuntimeError("handler bug")

    inbox = Inbox()
    async with server(broken) as t, node(2, inbox) as t2:
        mesh(t, t2)
        async with connect(t) as conn:
            with pytest.raises(ConnectionClosedError):
                await conn.call(ClientRequest(0, "read"))
        await eventually(lambda: "the client handler failed" in caplog.text)
        t.send(2, hb(1, 2, 1))
        await eventually(lambda: inbox.commits(2) == [1])


async def test_cancelled_calls_drop_their_late_answers() -> None:
    async def slow(conn: ClientConnection) -> None:
        while True:
            for r in await conn.receive():
                await trio.sleep(0.05)
                conn.send([ClientResponse(r.request_id, True, r.kind)])

    async with server(slow) as t, connect(t) as conn:
        with trio.move_on_after(0.01):
            await conn.call(ClientRequest(0, "first"))
        second = await conn.call(ClientRequest(0, "second"))
        assert second.result == "second"
        with trio.move_on_after(0.1):
            assert await conn.receive() == []  # the late answer is not handed out


async def test_calls_past_their_deadline_raise_and_drop_their_late_answers() -> None:
    # No cancel scope per call: the connection's timer wakes the late ones,
    # including one whose deadline is earlier than every other in flight.
    async def slow(conn: ClientConnection) -> None:
        async def answer(r: ClientRequest) -> None:
            await trio.sleep(r.payload)  # type: ignore[arg-type]
            conn.send([ClientResponse(r.request_id, True, r.kind)])

        async with trio.open_nursery() as nursery:
            while True:
                for r in await conn.receive():
                    nursery.start_soon(answer, r)

    async with server(slow) as t, connect(t) as conn:
        now = trio.current_time()
        outcomes: dict[str, object] = {}

        async def one(kind: str, pause: float, within: float) -> None:
            try:
                outcomes[kind] = (
                    await conn.call(ClientRequest(0, kind, pause), deadline=now + within)
                ).result
            except trio.TooSlowError:
                outcomes[kind] = "late"
                outcomes[kind + ".at"] = trio.current_time() - now

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "patient", 0.3, 5.0)
            await trio.sleep(0.01)
            nursery.start_soon(one, "hurried", 0.3, 0.05)
            nursery.start_soon(one, "quick", 0.0, 0.5)
        assert outcomes["patient"] == "patient" and outcomes["quick"] == "quick"
        assert outcomes["hurried"] == "late" and 0.05 <= outcomes["hurried.at"] < 0.25  # type: ignore[operator]
        with pytest.raises(trio.TooSlowError):
            await conn.call(ClientRequest(0, "past", 0.0), deadline=now)
        with trio.move_on_after(0.4):
            assert await conn.receive() == []  # late answers are not handed out


async def test_oversized_responses_become_errors() -> None:
    async def big(conn: ClientConnection) -> None:
        for r in await conn.receive():
            conn.send([ClientResponse(r.request_id, True, bytes(200_000))])
        await trio.sleep_forever()

    async with server(big, max_frame=128 * 1024) as t, connect(t, max_frame=128 * 1024) as conn:
        response = await conn.call(ClientRequest(0, "read"))
        assert not response.ok and response.error_code == "too_large"


async def test_a_client_that_does_not_read_is_disconnected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The handler answers with 1 MiB each; the client reads nothing: closed, memory bounded."""
    cancelled = trio.Event()

    async def generous(conn: ClientConnection) -> None:
        try:
            while True:
                for r in await conn.receive():
                    conn.send([ClientResponse(r.request_id, True, bytes(1 << 20))])
        finally:
            cancelled.set()

    async with server(generous, client_queue_size=8) as t:
        async with dial(addr(t), max_frame=16 << 20, connect_timeout=5) as sock:
            opener = ClientHello("app", CLUSTER, os.urandom(32))
            await dialer_handshake(sock, opener, b"app token", expect_node=1)
            requests = [ClientRequest(i, "read") for i in range(100)]
            await sock.send(encode_frame(requests))  # 100 MiB of answers, 8 may queue
            with trio.fail_after(5):
                await cancelled.wait()
            assert "does not read its responses" in caplog.text
            with trio.fail_after(2), pytest.raises(Closed):
                while True:
                    await sock.receive()  # what got through, then the end
        assert t.statistics().clients == 0
