"""Helpers for the WebSocket transport tests: nodes, inboxes, hand-driven fake peers."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio_websocket

from trioraft.core.types import NodeId
from trioraft.transport._ws import (
    Closed,
    FrameSocket,
    HandshakeFailed,
    accept_stream,
    dial,
    dialer_handshake,
    listener_handshake,
)
from trioraft.transport.codec import DEFAULT_MAX_FRAME
from trioraft.transport.messages import Hello
from trioraft.transport.websocket import WebSocketTransport, open_websocket_transport

from .inbox import Inbox

CLUSTER = "test-cluster"
SECRET = b"the cluster secret"
LOCAL = "127.0.0.1"


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until ``check()`` holds (real sockets: poll, do not guess delays)."""
    with trio.fail_after(within):
        while not check():  # noqa: ASYNC110 - polling state kept by other tasks
            await trio.sleep(0.005)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@asynccontextmanager
async def node(
    node_id: NodeId,
    inbox: Inbox,
    peers: dict[NodeId, str] | None = None,
    *,
    listen: str = f"{LOCAL}:0",
    **kw: Any,
) -> AsyncIterator[WebSocketTransport]:
    kw.setdefault("backoff", (0.01, 0.1))
    kw.setdefault("handshake_timeout", 2.0)
    async with open_websocket_transport(
        node_id=node_id,
        listen=listen,
        peers=peers or {},
        cluster_id=kw.pop("cluster_id", CLUSTER),
        secret=kw.pop("secret", SECRET),
        on_messages=inbox.of(node_id),
        **kw,
    ) as transport:
        yield transport


def addr(t: WebSocketTransport) -> str:
    return f"{LOCAL}:{t.port}"


def mesh(*transports: WebSocketTransport, **extra: str) -> None:
    """Make every transport a peer of every other (plus ``extra``: ``n3="host:port"``)."""
    peers = {t.node_id: addr(t) for t in transports}
    peers |= {int(k[1:]): v for k, v in extra.items()}
    for t in transports:
        t.set_peers(peers)


@asynccontextmanager
async def fake_dialer(
    address: str,
    node_id: NodeId,
    *,
    expect: NodeId | None,
    secret: bytes = SECRET,
    cluster: str = CLUSTER,
    max_frame: int = DEFAULT_MAX_FRAME,
) -> AsyncIterator[FrameSocket]:
    """A hand-driven peer that dials ``address`` and authenticates as ``node_id``."""
    async with dial(address, max_frame=max_frame, connect_timeout=5) as sock:
        with trio.fail_after(5):
            await dialer_handshake(
                sock,
                Hello(node_id, cluster, os.urandom(32), os.urandom(16)),
                secret,
                expect_node=expect,
            )
        yield sock


@asynccontextmanager
async def fake_listener(
    node_id: NodeId,
    behaviour: Callable[[FrameSocket], Awaitable[None]],
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
) -> AsyncIterator[int]:
    """A hand-driven peer listening on a fresh port; runs ``behaviour`` once authenticated."""

    async def handler(stream: trio.SocketStream) -> None:
        try:
            deadline = trio.current_time() + 5
            async with accept_stream(stream, max_frame=max_frame, deadline=deadline) as sock:
                await listener_handshake(
                    sock,
                    node_id=node_id,
                    cluster_id=CLUSTER,
                    secret=SECRET,
                    is_peer=lambda n: True,
                    client_key=None,
                    incarnation=os.urandom(16),
                )
                await behaviour(sock)
        except* (
            Closed,
            HandshakeFailed,
            trio.BrokenResourceError,
            trio_websocket.ConnectionClosed,
        ):
            pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, handler, 0)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()
