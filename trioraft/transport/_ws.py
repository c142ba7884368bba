"""WebSocket plumbing shared by the peer transport and the remote client.

Theory of operation
-------------------
* **We own every TCP stream.**  trio-websocket 0.12.2 stops its reader
  without closing the socket when it rejects an oversized message, and waits
  forever for a close handshake the other side may never finish.  So streams
  are opened (or accepted) here, wrapped with trio-websocket's low-level
  ``wrap_client_stream``/``wrap_server_stream``, and closed in ``finally``
  with :func:`trio.aclose_forcefully` whatever happened to the WebSocket.
* **Nothing waits for ever.**  The opening handshake is bounded by a timeout
  and also ends as soon as trio-websocket's reader task does (garbage instead
  of HTTP, a failed TLS handshake); the closing handshake gets
  :data:`CLOSE_TIMEOUT`.
* **The authentication handshake** of docs/protocol.md ("Handshake") runs
  over :class:`FrameSocket` before anything else; :class:`HandshakeFailed`
  reports who refused and why.  Until the opener has passed its checks
  (cluster id, known node or client handler present), frames are limited to
  :data:`HANDSHAKE_MAX_FRAME` bytes, so a stranger cannot make us buffer a
  full-size frame; :meth:`FrameSocket.authenticated` then lifts the limit
  (the dialer pipelines data behind its HelloAuth, so the listener lifts it
  when it replies; handshake messages themselves are still refused above
  :data:`HANDSHAKE_MAX_FRAME`).  A handshake frame whose cluster id
  (``"c"``) names another cluster is refused with ``wrong_cluster``, like a
  Hello that does.
* **Addresses** follow the one rule of
  :func:`trioraft.core.types.parse_address`, re-exported here.
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, Final, NoReturn, TypedDict, TypeVar, cast

import trio
import trio_websocket
from wsproto.connection import ConnectionState

from trioraft.core.types import NodeId, parse_address
from trioraft.transport.base import TokenLookup
from trioraft.transport.codec import (
    DIALER,
    LISTENER,
    MAX_MESSAGES,
    MAX_TEXT,
    ProtocolError,
    assemble_frame,
    decode_envelope,
    encode_frame,
    handshake_mac,
    new_nonce,
    verify_handshake_mac,
)
from trioraft.transport.messages import AnyMessage, ClientHello, Hello, HelloAuth, HelloReject

__all__ = [
    "CLOSE_TIMEOUT",
    "HANDSHAKE_MAX_FRAME",
    "Closed",
    "FrameSocket",
    "HandshakeFailed",
    "accept_stream",
    "dial",
    "dialer_handshake",
    "listener_handshake",
    "open_service_nursery",
    "parse_address",
    "send_batches",
]

T = TypeVar("T")

CLOSE_TIMEOUT: Final = 1.0
HANDSHAKE_MAX_FRAME: Final = 4096
RECEIVE_BUFFER: Final = 65536
# Frames trio-websocket may hold for us before its reader stops reading the
# socket: a little slack for latency, TCP flow control does the rest.
WS_QUEUE: Final = 4
RESOURCE: Final = "/"
_MESSAGE_TOO_BIG: Final = 1009


class _WebSocketOptions(TypedDict):
    message_queue_size: int
    max_message_size: int
    receive_buffer_size: int


# trio-websocket's settings for every connection, dialled or accepted: the
# small frame limit holds until the handshake lifts it (FrameSocket.authenticated).
_WS_OPTIONS: Final[_WebSocketOptions] = {
    "message_queue_size": WS_QUEUE,
    "max_message_size": HANDSHAKE_MAX_FRAME,
    "receive_buffer_size": RECEIVE_BUFFER,
}


def describe_stream(stream: trio.abc.Stream) -> str:
    """``host:port`` of the other end, for logs."""
    inner: Any = stream
    while isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    try:
        name = inner.socket.getpeername()
    except (AttributeError, OSError):
        return "?"
    if isinstance(name, tuple):
        host = name[0]
        return f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"
    return str(name)


# --------------------------------------------------------------------------
# Nurseries
# --------------------------------------------------------------------------


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


@asynccontextmanager
async def open_service_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery for a context manager's background tasks.

    It is cancelled when the body ends.  The tasks handle their own errors,
    so an exception out of the body propagates as itself instead of inside
    an ExceptionGroup: a user's ``except ValueError`` around our context
    manager keeps working.
    """
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        errors = [e for e in leaves if not isinstance(e, trio.Cancelled)]
        # A Cancelled dropped here is delivered again at the next checkpoint.
        single = errors if errors else leaves
        if len(single) == 1:
            raise single[0] from single[0].__cause__
        raise


class _ReaderWatch:
    """Stands in for the nursery given to ``wrap_*_stream``.

    Those functions only call ``start_soon(reader)``; wrapping the reader
    lets us notice it ending during the opening handshake (garbage instead of
    HTTP, a broken TLS handshake) instead of waiting out a timeout.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.done = trio.Event()

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: object, **kw: Any) -> None:
        async def run() -> None:
            try:
                await fn(*args)
            finally:
                self.done.set()

        self._nursery.start_soon(run, **kw)

    def as_nursery(self) -> trio.Nursery:
        """This watch, typed as the nursery ``wrap_*_stream`` expects."""
        return cast(trio.Nursery, self)


async def _open_handshake(watch: _ReaderWatch, opener: Callable[[], Awaitable[T]]) -> T:
    got: list[T] = []
    async with trio.open_nursery() as nursery:

        async def watcher() -> None:
            await watch.done.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(watcher)
        got.append(await opener())
        nursery.cancel_scope.cancel()
    if not got:
        raise Closed("the connection closed during the WebSocket opening handshake")
    return got[0]


# --------------------------------------------------------------------------
# Frame sockets
# --------------------------------------------------------------------------


class Closed(Exception):
    """The WebSocket closed.  ``oversized``: we closed it over a too-large frame."""

    def __init__(self, reason: str, *, oversized: bool = False) -> None:
        super().__init__(reason)
        self.oversized = oversized


class FrameSocket:
    """One WebSocket carrying trioraft frames (binary messages)."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, remote: str, max_frame: int) -> None:
        self.ws = ws
        self.remote = remote
        self.max_frame = max_frame
        #: Set when the other end stopped responding: closing skips the
        #: closing handshake, which would only wait out its timeout.
        self.dead = False

    def authenticated(self) -> None:
        """Lift the frame limit from :data:`HANDSHAKE_MAX_FRAME` to ``max_frame``."""
        # trio-websocket has no public setter; it reads this attribute for
        # every incoming message.  The connection was created with the small
        # limit so that even a frame pipelined behind the HTTP upgrade gets it.
        if not hasattr(self.ws, "_max_message_size"):  # pragma: no cover
            raise RuntimeError("this trio-websocket version cannot raise the frame limit")
        self.ws._max_message_size = self.max_frame

    async def receive(self) -> bytes:
        """The next frame.

        Raises:
            Closed: the connection closed (``oversized`` if over our limit).
            ProtocolError: a text message.
        """
        try:
            data = await self.ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
            # Code 1009 while *we* are closing: our reader refused the frame.
            # (From the peer it would arrive in state REMOTE_CLOSING/CLOSED.)
            wsproto_conn = getattr(self.ws, "_wsproto", None)
            local = getattr(wsproto_conn, "state", None) == ConnectionState.LOCAL_CLOSING
            oversized = reason is not None and reason.code == _MESSAGE_TOO_BIG and local
            raise Closed(str(reason), oversized=oversized) from None
        if isinstance(data, str):
            raise ProtocolError("text WebSocket message; frames are binary")
        return data

    async def ping(self, patience: float) -> None:
        """Send a WebSocket ping; raise :class:`Closed` unless the pong comes in time."""
        try:
            with trio.fail_after(patience):
                await self.ws.ping()
        except trio.TooSlowError:
            self.dead = True
            raise Closed(f"no pong within {patience} s") from None
        except trio_websocket.ConnectionClosed as exc:
            raise Closed(str(exc.reason)) from None

    async def send(self, data: bytes) -> None:
        """Send one frame; raises :class:`Closed` if the connection is gone."""
        try:
            await self.ws.send_message(data)
        except trio_websocket.ConnectionClosed as exc:
            raise Closed(str(exc.reason)) from None


async def _close_ws(sock: FrameSocket) -> None:
    # Graceful close so that a last frame (a HelloReject) is not lost to a
    # TCP reset; bounded, and skipped at once when we are being cancelled or
    # the other end is known to be unresponsive.
    if not sock.dead:
        with trio.move_on_after(CLOSE_TIMEOUT):
            await sock.ws.aclose()


@asynccontextmanager
async def _frame_socket(
    stream: trio.abc.Stream,
    upgrade: Callable[[_ReaderWatch], Awaitable[trio_websocket.WebSocketConnection]],
    *,
    max_frame: int,
    deadline: float,
) -> AsyncIterator[FrameSocket]:
    """The WebSocket ``upgrade`` opens on ``stream`` by ``deadline``, as a :class:`FrameSocket`.

    The one place that closes both: the WebSocket gracefully (bounded), then
    the stream forcefully, whatever happened.
    """
    try:
        remote = describe_stream(stream)
        async with open_service_nursery() as nursery:
            with trio.fail_at(deadline):
                ws = await upgrade(_ReaderWatch(nursery))
            sock = FrameSocket(ws, remote, max_frame)
            try:
                yield sock
            finally:
                await _close_ws(sock)
    finally:
        await trio.aclose_forcefully(stream)


@asynccontextmanager
async def dial(
    address: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_frame: int,
    connect_timeout: float,
) -> AsyncIterator[FrameSocket]:
    """Open a TCP (or TLS) stream and a client WebSocket on it; close both on exit.

    ``connect_timeout`` bounds the TCP connect and the WebSocket opening handshake.
    """
    host, port = parse_address(address)
    with trio.fail_after(connect_timeout):
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
        if ssl_context is not None:
            stream = await trio.open_ssl_over_tcp_stream(
                host, port, ssl_context=ssl_context, https_compatible=True
            )
        else:
            stream = await trio.open_tcp_stream(host, port)
    deadline = trio.current_time() + connect_timeout

    async def upgrade(watch: _ReaderWatch) -> trio_websocket.WebSocketConnection:
        return await _open_handshake(
            watch,
            lambda: trio_websocket.wrap_client_stream(
                watch.as_nursery(), stream, host, RESOURCE, **_WS_OPTIONS
            ),
        )

    async with _frame_socket(stream, upgrade, max_frame=max_frame, deadline=deadline) as sock:
        yield sock


@asynccontextmanager
async def accept_stream(
    stream: trio.abc.Stream, *, max_frame: int, deadline: float
) -> AsyncIterator[FrameSocket]:
    """Run the server side of the WebSocket opening handshake on ``stream``.

    The stream is closed on exit, whatever happened.
    """

    async def upgrade(watch: _ReaderWatch) -> trio_websocket.WebSocketConnection:
        request = await _open_handshake(
            watch,
            lambda: trio_websocket.wrap_server_stream(watch.as_nursery(), stream, **_WS_OPTIONS),
        )
        return await request.accept()

    async with _frame_socket(stream, upgrade, max_frame=max_frame, deadline=deadline) as sock:
        yield sock


async def send_batches(
    sock: FrameSocket,
    channel: trio.MemoryReceiveChannel[T],
    encode: Callable[[T], bytes | None],
    carry: list[bytes],
    budget: int,
    send_timeout: float,
    on_sent: Callable[[int], None],
    on_lost: Callable[[int], None] = lambda count: None,
) -> None:
    """Coalesce what is queued on ``channel`` into frames of at most ``budget`` message bytes.

    ``encode`` returns a message's bytes or None to skip it; ``carry`` holds
    an encoded message that did not fit the previous frame.  ``on_sent`` and
    ``on_lost`` get the number of messages in each frame written or lost
    with a failed write.  Returns when the channel is closed and drained.
    """
    while True:
        batch = carry[:]
        carry.clear()
        if not batch:
            try:
                first = encode(await channel.receive())
            except trio.EndOfChannel:
                return
            if first is None:
                continue
            batch = [first]
        size = len(batch[0])
        while len(batch) < MAX_MESSAGES:
            try:
                item = channel.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            data = encode(item)
            if data is None:
                continue
            if size + len(data) > budget:
                carry.append(data)
                break
            batch.append(data)
            size += len(data)
        try:
            with trio.fail_after(send_timeout):
                await sock.send(assemble_frame(batch))
        except BaseException as exc:
            on_lost(len(batch))
            if isinstance(exc, trio.TooSlowError):
                sock.dead = True
            raise
        on_sent(len(batch))


# --------------------------------------------------------------------------
# The authentication handshake (docs/protocol.md, "Handshake")
# --------------------------------------------------------------------------


class HandshakeFailed(Exception):
    """The handshake failed.  ``by_peer``: the other side sent the HelloReject."""

    def __init__(self, code: str, message: str, *, by_peer: bool) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.by_peer = by_peer


async def _reject(sock: FrameSocket, code: str, message: str) -> NoReturn:
    with suppress(Closed):
        await sock.send(encode_frame([HelloReject(code, message[:MAX_TEXT])]))
    raise HandshakeFailed(code, message, by_peer=False)


async def _receive_handshake(sock: FrameSocket, cluster_id: str) -> list[AnyMessage]:
    try:
        frame = decode_envelope(await sock.receive(), max_size=HANDSHAKE_MAX_FRAME)
    except Closed as exc:
        if exc.oversized:
            raise HandshakeFailed("protocol", "oversized handshake frame", by_peer=False) from None
        raise
    except ProtocolError as exc:
        await _reject(sock, "protocol", f"bad handshake frame: {exc}")
    if frame.cluster_id is not None and frame.cluster_id != cluster_id:
        await _reject(sock, "wrong_cluster", f"frame for cluster {frame.cluster_id!r}")
    return list(frame.messages)


def _peer_rejected(messages: list[AnyMessage]) -> None:
    if len(messages) == 1 and isinstance(messages[0], HelloReject):
        raise HandshakeFailed(messages[0].code, messages[0].message, by_peer=True)


async def dialer_handshake(
    sock: FrameSocket,
    opener: Hello | ClientHello,
    key: bytes,
    *,
    expect_node: NodeId | None,
) -> Hello:
    """Steps 1 and 3 of the handshake; returns the listener's Hello.

    ``expect_node`` is the node we meant to reach (None: any node of the
    cluster, as for a client).  Raises :class:`HandshakeFailed` or
    :class:`Closed`.
    """
    await sock.send(encode_frame([opener], cluster_id=opener.cluster_id))
    messages = await _receive_handshake(sock, opener.cluster_id)
    _peer_rejected(messages)
    reply, auth = messages[0], messages[-1]
    if len(messages) != 2 or not isinstance(reply, Hello) or not isinstance(auth, HelloAuth):
        await _reject(sock, "protocol", "expected Hello and HelloAuth in one frame")
    if reply.cluster_id != opener.cluster_id:
        await _reject(
            sock, "wrong_cluster", f"we are in {opener.cluster_id!r}, not {reply.cluster_id!r}"
        )
    if expect_node is not None and reply.node_id != expect_node:
        await _reject(
            sock, "unknown_node", f"dialled node {expect_node} but reached node {reply.node_id}"
        )
    if not verify_handshake_mac(key, LISTENER, opener, reply, auth.mac):
        await _reject(
            sock,
            "bad_mac",
            "the listener's proof does not verify: the two sides hold different keys",
        )
    # The listener is proven: accept full-size frames from here on (before
    # sending, since its first data frame may follow our HelloAuth at once).
    sock.authenticated()
    await sock.send(encode_frame([HelloAuth(handshake_mac(key, DIALER, opener, reply))]))
    return reply


async def listener_handshake(
    sock: FrameSocket,
    *,
    node_id: NodeId,
    cluster_id: str,
    secret: bytes,
    is_peer: Callable[[NodeId], bool],
    client_key: TokenLookup | None,
    incarnation: bytes,
) -> Hello | ClientHello:
    """Steps 2 and 4 of the handshake; returns the dialer's authenticated opener.

    Our reply presents ``incarnation`` (our data directory's id); a peer's
    opener carries its own.  Peers (``Hello``) prove ``secret``; clients
    (``ClientHello``) prove the token ``client_key(client_id)`` returns.  An
    unknown client gets the same treatment as a wrong token (a MAC under a
    random key), so the handshake does not reveal which client ids exist.
    Raises :class:`HandshakeFailed` or :class:`Closed`.
    """
    messages = await _receive_handshake(sock, cluster_id)
    _peer_rejected(messages)
    opener = messages[0]
    if len(messages) != 1 or not isinstance(opener, Hello | ClientHello):
        await _reject(sock, "protocol", "expected Hello or ClientHello alone in the first frame")
    if opener.cluster_id != cluster_id:
        await _reject(sock, "wrong_cluster", f"this is cluster {cluster_id!r}")
    if isinstance(opener, Hello):
        if opener.node_id == node_id or not is_peer(opener.node_id):
            await _reject(sock, "unknown_node", f"node {opener.node_id} is not a peer here")
        key = secret
    else:
        if client_key is None:
            await _reject(sock, "protocol", "this node does not accept client connections")
        token = client_key(opener.client_id)
        key = token if token is not None else secrets.token_bytes(32)
    nonce = new_nonce()
    while nonce == opener.nonce:  # pragma: no cover - 2**-256
        nonce = new_nonce()
    reply = Hello(node_id, cluster_id, nonce, incarnation)
    # The dialer sends data right behind its HelloAuth, which trio-websocket
    # reads before we have checked the MAC: lift the limit now.  Nothing the
    # dialer sends reaches the application before the MAC verifies.
    sock.authenticated()
    await sock.send(
        encode_frame(
            [reply, HelloAuth(handshake_mac(key, LISTENER, opener, reply))], cluster_id=cluster_id
        )
    )
    messages = await _receive_handshake(sock, cluster_id)
    _peer_rejected(messages)
    auth = messages[0]
    if len(messages) != 1 or not isinstance(auth, HelloAuth):
        await _reject(sock, "protocol", "expected HelloAuth alone")
    if not verify_handshake_mac(key, DIALER, opener, reply, auth.mac):
        await _reject(sock, "bad_mac", "authentication failed")
    return opener
