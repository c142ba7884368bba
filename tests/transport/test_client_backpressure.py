"""Client connections are bounded in bytes, and streams wait for the client to read."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from trioraft.transport._ws import Closed, FrameSocket, dial, dialer_handshake
from trioraft.transport.base import ClientConnection
from trioraft.transport.codec import decode_frame, encode_frame
from trioraft.transport.memory import MemoryClientConnection
from trioraft.transport.messages import ClientHello, ClientRequest, ClientResponse
from trioraft.transport.websocket import WebSocketTransport, _ServerClientConnection

from .test_client import server
from .wshelpers import CLUSTER, addr, eventually


@asynccontextmanager
async def raw_client(t: WebSocketTransport) -> AsyncIterator[FrameSocket]:
    """A client that reads only when the test says so."""
    async with dial(addr(t), max_frame=16 << 20, connect_timeout=5) as sock:
        opener = ClientHello("app", CLUSTER, os.urandom(32))
        await dialer_handshake(sock, opener, b"app token", expect_node=1)
        yield sock


@pytest.fixture(autouse=True)
def _log_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trioraft")


async def test_a_client_that_does_not_read_is_closed_by_bytes_not_message_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """100 answers of 1 MiB fit the 4096-message queue; the byte limit closes the connection.

    The send timeout is a minute, so only the byte limit can end it this fast.
    """
    closed_after: list[int] = []

    async def generous(conn: ClientConnection) -> None:
        for sent, r in enumerate(await conn.receive(), 1):
            conn.send([ClientResponse(r.request_id, True, bytes(1 << 20))])
            if getattr(conn, "closed", False):
                closed_after.append(sent)
                return
        await trio.sleep_forever()

    async with server(generous, send_timeout=60.0) as t, raw_client(t) as sock:
        await sock.send(encode_frame([ClientRequest(i, "read") for i in range(100)]))
        with trio.fail_after(5):
            while not closed_after:  # noqa: ASYNC110 - the handler sets it
                await trio.sleep(0.01)
        assert closed_after[0] < 100
        assert "does not read its responses" in caplog.text
        with trio.fail_after(5), pytest.raises(Closed):
            while True:
                await sock.receive()


def _accepts(conn: ClientConnection) -> int:
    return conn.queued_bytes


def _static_checks(ws: _ServerClientConnection, memory: MemoryClientConnection) -> None:
    # mypy checks these structural assignments; never called.
    _accepts(ws)
    _accepts(memory)


async def test_a_stream_waits_for_a_slow_reader_instead_of_filling_memory() -> None:
    """40 chunks of 1 MiB with wait_writable before each: never more than low water + a chunk."""
    chunk = 1 << 20
    high: list[int] = []
    finished = trio.Event()

    async def streamer(conn: ClientConnection) -> None:
        for r in await conn.receive():
            for i in range(40):
                await conn.wait_writable()
                conn.send([ClientResponse(r.request_id, True, {"i": i, "data": bytes(chunk)})])
                high.append(conn.queued_bytes)
        finished.set()
        await trio.sleep_forever()

    async with (
        server(streamer, send_timeout=60.0, client_queue_bytes=16 << 20) as t,
        raw_client(t) as sock,
    ):
        await sock.send(encode_frame([ClientRequest(1, "backup")]))
        await trio.sleep(0.2)  # not reading for a while: the stream must hold back
        got = []
        with trio.fail_after(20):
            while len(got) < 40:
                got += decode_frame(await sock.receive())
        await finished.wait()
    assert [m.result["i"] for m in got] == list(range(40))  # type: ignore[attr-defined, index]
    low_water = (16 << 20) // 8
    assert max(high) <= low_water + chunk + 64


async def test_queued_bytes_are_counted_until_written() -> None:
    seen: list[int] = []

    async def answer(conn: ClientConnection) -> None:
        for r in await conn.receive():
            conn.send([ClientResponse(r.request_id, True, bytes(1000))])
            seen.append(conn.queued_bytes)
        await conn.wait_writable()  # the queue is below its low-water mark at once
        await eventually(lambda: conn.queued_bytes == 0)
        seen.append(conn.queued_bytes)
        await trio.sleep_forever()

    async with server(answer) as t, raw_client(t) as sock:
        await sock.send(encode_frame([ClientRequest(1, "read")]))
        await sock.receive()
        await eventually(lambda: len(seen) == 2)
    assert seen[0] > 1000 and seen[1] == 0


async def test_a_byte_limit_below_a_frame_is_refused() -> None:
    with pytest.raises(ValueError, match="client_queue_bytes"):
        async with server(client_queue_bytes=1 << 20):
            pass


# ---------------------------------------------------------------- the memory transport


async def test_memory_connection_counts_bytes_until_the_client_reads() -> None:
    conn = MemoryClientConnection("app", queue_bytes=16 << 20)

    async def answer(c: ClientConnection) -> None:
        while True:
            for r in await c.receive():
                c.send([ClientResponse(r.request_id, True, bytes(1 << 20))] * 2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.serve, answer)
        conn.request(ClientRequest(1, "read"), ClientRequest(2, "read"))
        await eventually(lambda: conn.queued_bytes > 4 << 20)
        assert not conn.closed
        got = await conn.responses()
        assert [r.request_id for r in got] == [1, 1, 2, 2]
        assert conn.queued_bytes == 0
        conn.hang_up()
    assert conn.closed
    with pytest.raises(trio.EndOfChannel):
        await conn.responses()


async def test_memory_connection_closes_past_its_byte_limit() -> None:
    conn = MemoryClientConnection("app", queue_bytes=16 << 20)
    waiting = trio.Event()
    outcome: list[str] = []

    async def flood(c: ClientConnection) -> None:
        async def waiter() -> None:
            waiting.set()
            try:
                await c.wait_writable()  # parks at once: 12 MiB queued, low water 2 MiB
            except trio.BrokenResourceError:
                outcome.append("broken")

        await c.receive()
        for i in range(3):
            c.send([ClientResponse(i, True, bytes(4 << 20))])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await waiting.wait()
            for i in range(3, 20):
                c.send([ClientResponse(i, True, bytes(4 << 20))])
            await trio.sleep_forever()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.serve, flood)
            conn.request(ClientRequest(1, "read"))
    assert conn.closed and outcome == ["broken"]
    with pytest.raises(trio.EndOfChannel):
        await conn.responses()  # the server dropped the connection: nothing to read
