"""Strangers, impostors and garbage are refused and logged; good peers keep working.

Nothing from an unauthenticated connection may reach ``on_messages``, a bad
frame after authentication closes only that connection, and no socket is
leaked when a frame is refused for its size (trio-websocket 0.12.2 would leak
it on its own).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from trioraft.core.types import Heartbeat
from trioraft.transport._ws import Closed, FrameSocket, HandshakeFailed, dial
from trioraft.transport.codec import encode_frame
from trioraft.transport.messages import Hello, HelloAuth, HelloReject
from trioraft.transport.websocket import MIN_FRAME, WebSocketTransport

from .inbox import Inbox, hb
from .wshelpers import (
    CLUSTER,
    SECRET,
    addr,
    eventually,
    fake_dialer,
    fake_listener,
    node,
    open_fds,
)

STRANGER = 3  # the node id the tests' strangers and impostors use


@pytest.fixture(autouse=True)
def _log_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trioraft")


@asynccontextmanager
async def pair(
    inbox: Inbox, *, stranger: str = "127.0.0.1:1", **kw: object
) -> AsyncIterator[tuple[WebSocketTransport, WebSocketTransport]]:
    """Nodes 1 and 2, connected both ways; node 3 is configured on node 1 at ``stranger``."""
    async with node(1, inbox, **kw) as t1, node(2, inbox) as t2:  # type: ignore[arg-type]
        t1.set_peers({2: addr(t2), STRANGER: stranger})
        t2.set_peers({1: addr(t1)})
        t1.send(2, hb(1, 2, 0))
        t2.send(1, hb(2, 1, 0))
        await eventually(lambda: inbox.commits(1) == [0] and inbox.commits(2) == [0])
        yield t1, t2


async def still_works(t1: WebSocketTransport, inbox: Inbox, n: int) -> None:
    t1.send(2, hb(1, 2, n))
    await eventually(lambda: n in inbox.commits(2))


def nothing_from_stranger(inbox: Inbox) -> bool:
    return inbox.messages(1, src=STRANGER) == [] and all(
        getattr(m, "src", None) != STRANGER for m in inbox.messages(1)
    )


# --------------------------------------------------------------------------
# Handshake failures
# --------------------------------------------------------------------------


async def test_wrong_secret_is_refused_both_ways(caplog: pytest.LogCaptureFixture) -> None:
    inbox = Inbox()
    async with pair(inbox) as (t1, t2), node(3, inbox, secret=b"not the secret") as t3:
        # 3 dials 1 and 1 dials 3: each side finds the other's MAC wrong.
        t3.set_peers({1: addr(t1)})
        t1.set_peers({2: addr(t2), 3: addr(t3)})
        t3.send(1, hb(3, 1, 99))
        t1.send(3, hb(1, 3, 99))
        await eventually(
            lambda: (
                t1.statistics().handshakes_rejected >= 2
                and t3.statistics().handshakes_rejected >= 2
            )
        )
        assert not t1.statistics().peers[3].connected
        assert not t3.statistics().peers[1].connected
        assert "bad_mac" in caplog.text
        assert nothing_from_stranger(inbox) and inbox.commits(3) == []
        await still_works(t1, inbox, 1)


async def test_forged_auth_with_pipelined_messages_delivers_nothing() -> None:
    """An impostor that guesses the MAC and sends data right behind it gets nowhere."""
    inbox = Inbox()
    async with pair(inbox) as (t1, _):
        async with dial(addr(t1), max_frame=MIN_FRAME, connect_timeout=5) as sock:
            await sock.send(
                encode_frame([Hello(STRANGER, CLUSTER, os.urandom(32), os.urandom(16))])
            )
            await sock.receive()  # the listener's Hello and MAC
            await sock.send(encode_frame([HelloAuth(bytes(32))]))
            await sock.send(encode_frame([hb(STRANGER, 1, 99)]))
            (reject,) = _decode(await sock.receive())
            assert isinstance(reject, HelloReject) and reject.code == "bad_mac"
            with pytest.raises(Closed):
                await sock.receive()
        await eventually(lambda: t1.statistics().handshakes_rejected == 1)
        assert nothing_from_stranger(inbox)
        await still_works(t1, inbox, 1)


@pytest.mark.parametrize(
    ("node_id", "cluster", "code"),
    [
        (9, CLUSTER, "unknown_node"),  # not a configured peer
        (1, CLUSTER, "unknown_node"),  # claims to be the node itself
        (STRANGER, "other-cluster", "wrong_cluster"),
    ],
)
async def test_strangers_are_refused(
    node_id: int, cluster: str, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = Inbox()
    async with pair(inbox) as (t1, _):
        with pytest.raises(HandshakeFailed) as info:
            async with fake_dialer(addr(t1), node_id, expect=1, cluster=cluster):
                pass
        assert info.value.code == code and info.value.by_peer
        await eventually(lambda: t1.statistics().handshakes_rejected == 1)
        assert "refused a connection from 127.0.0.1" in caplog.text and code in caplog.text
        assert nothing_from_stranger(inbox)
        await still_works(t1, inbox, 1)


async def test_dialing_the_wrong_node_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    """Node 1 thinks node 3 lives where node 2 does: it notices and hangs up."""
    inbox = Inbox()
    async with pair(inbox) as (t1, t2):
        t1.set_peers({2: addr(t2), 3: addr(t2)})
        await eventually(lambda: "dialled node 3 but reached node 2" in caplog.text)
        assert not t1.statistics().peers[3].connected
        await still_works(t1, inbox, 1)


async def test_garbage_instead_of_http_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    inbox = Inbox()
    async with pair(inbox) as (t1, _):
        stream = await trio.open_tcp_stream("127.0.0.1", t1.port)
        async with stream:
            await stream.send_all(os.urandom(300) + b"\r\n\r\n")
            with trio.fail_after(2):  # closed at once, not after a timeout
                while await stream.receive_some():
                    pass
        await eventually(lambda: t1.statistics().handshakes_rejected == 1)
        assert "closed before authenticating" in caplog.text
        await still_works(t1, inbox, 1)


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\x00 not cbor",
        encode_frame([hb(STRANGER, 1, 1)]),  # a Raft message before the handshake
        encode_frame(
            [Hello(STRANGER, CLUSTER, os.urandom(32), os.urandom(16)), HelloAuth(bytes(32))]
        ),
        bytes(10_000),  # over the handshake frame limit
        "a text message",
    ],
    ids=["not-cbor", "raft-first", "two-messages", "big", "text"],
)
async def test_garbage_frames_before_the_handshake(payload: bytes | str) -> None:
    inbox = Inbox()
    async with pair(inbox) as (t1, _):
        async with dial(addr(t1), max_frame=MIN_FRAME, connect_timeout=5) as sock:
            await sock.ws.send_message(payload)
            with trio.fail_after(2), pytest.raises(Closed):
                while True:
                    _decode(await sock.receive())  # a HelloReject (most cases), then closed
        await eventually(lambda: t1.statistics().handshakes_rejected == 1)
        assert nothing_from_stranger(inbox)
        await still_works(t1, inbox, 1)


async def test_silent_connections_time_out() -> None:
    inbox = Inbox()
    async with pair(inbox, handshake_timeout=0.2) as (t1, _):
        async with dial(addr(t1), max_frame=MIN_FRAME, connect_timeout=5) as sock:
            with trio.fail_after(2), pytest.raises(Closed):
                await sock.receive()
        await eventually(lambda: t1.statistics().handshakes_rejected == 1)
        await still_works(t1, inbox, 1)


# --------------------------------------------------------------------------
# Bad frames after authentication
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        b"\xa1garbage",
        encode_frame([hb(2, 1, 5)]),  # node 3 speaking for node 2
        encode_frame([hb(STRANGER, 2, 5)]),  # addressed to someone else
        encode_frame([hb(STRANGER, 1, 5)], cluster_id="other-cluster"),
        encode_frame([Hello(STRANGER, CLUSTER, os.urandom(32), os.urandom(16))]),
    ],
    ids=["undecodable", "impersonation", "misaddressed", "other-cluster", "handshake-again"],
)
async def test_bad_frames_close_only_that_connection(
    frame: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = Inbox()
    async with pair(inbox) as (t1, _):
        async with fake_dialer(addr(t1), STRANGER, expect=1) as sock:
            await sock.send(encode_frame([hb(STRANGER, 1, 1)]))
            await eventually(lambda: inbox.commits(1, src=STRANGER) == [1])
            await sock.send(frame)
            await sock.send(encode_frame([hb(STRANGER, 1, 2)]))  # ignored: closing
            with trio.fail_after(2), pytest.raises(Closed):
                await sock.receive()
        await eventually(lambda: t1.statistics().bad_frames == 1)
        assert inbox.commits(1, src=STRANGER) == [1]
        assert f"bad frame from peer {STRANGER}" in caplog.text
        await still_works(t1, inbox, 1)


async def test_oversized_frame_from_a_dialer_leaks_no_socket() -> None:
    """We accepted the connection; the dialer sends too much; our socket must close."""
    inbox = Inbox()

    async def idle(sock: FrameSocket) -> None:
        await trio.sleep_forever()

    async with (
        fake_listener(STRANGER, idle) as port3,
        pair(inbox, stranger=f"127.0.0.1:{port3}", max_frame=MIN_FRAME) as (t1, _),
    ):
        await eventually(lambda: t1.statistics().peers[STRANGER].connected)
        before = open_fds()
        async with fake_dialer(addr(t1), STRANGER, expect=1) as sock:
            await eventually(lambda: t1.statistics().peers[STRANGER].inbound)
            assert open_fds() == before + 2  # both ends of the new connection
            await sock.send(bytes(MIN_FRAME + 1))
            await eventually(lambda: t1.statistics().bad_frames == 1)
            # Our end is closed although the dialer still holds its own.
            await eventually(lambda: open_fds() == before + 1)
            with trio.fail_after(2), pytest.raises(Closed):
                await sock.receive()
        assert open_fds() == before
        await still_works(t1, inbox, 1)


async def test_oversized_frame_from_a_listener_leaks_no_socket() -> None:
    """We dialled; the listener sends too much; our socket must close."""
    inbox = Inbox()
    sent = trio.Event()

    async def flood(sock: FrameSocket) -> None:
        await sock.send(bytes(MIN_FRAME + 1))
        sent.set()
        await trio.sleep_forever()

    # A long backoff keeps node 1 from redialling while we count.
    async with (
        fake_listener(STRANGER, flood) as port3,
        pair(inbox, max_frame=MIN_FRAME, backoff=(30.0, 30.0)) as (t1, t2),
    ):
        before = open_fds()
        t1.set_peers({2: addr(t2), STRANGER: f"127.0.0.1:{port3}"})
        await eventually(lambda: t1.statistics().bad_frames == 1)
        await sent.wait()
        await eventually(lambda: open_fds() == before)
        assert not t1.statistics().peers[STRANGER].connected
        await still_works(t1, inbox, 1)


def _decode(data: bytes) -> list[object]:
    from trioraft.transport.codec import decode_frame

    return list(decode_frame(data))


def test_heartbeat_helper_is_a_heartbeat() -> None:
    assert isinstance(hb(1, 2, 3), Heartbeat)
    assert SECRET
