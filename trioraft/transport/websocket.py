"""The WebSocket transport: peers and clients on one port.

Theory of operation
-------------------
Each node listens on one TCP port.  A connection is a peer or a client by
its first handshake message (``Hello`` or ``ClientHello``, docs/protocol.md);
nothing from a connection reaches the application before the handshake has
authenticated it.

**Each node sends only on connections it dialled.**  For every peer there is
one outbound connection, owned by that peer's task: dial, authenticate, then
run a *sender* (fed by a bounded memory channel; :meth:`send` uses
``send_nowait`` and drops on ``WouldBlock``) and a *receiver* side by side.
Inbound connections from peers only receive.  So a request goes out on our
connection and its reply comes back on the peer's: symmetric, and no
arbitration between two connections for the same pair.  Connections that
break are redialled with exponential backoff and jitter (``backoff``);
queued messages wait for the new connection (or are dropped when the queue
fills: Raft resends what matters).  Outbound connections carry no traffic
back, so a WebSocket ping every ``keepalive`` seconds detects one that went
silently dead, and a frame stuck longer than ``send_timeout`` drops it too.

**Batching.**  The sender takes everything queued (up to the frame limit)
and writes it as one frame; a message too large for any frame is dropped and
logged.  Receivers decode a frame at a time and hand its messages to
``on_messages`` in one call.

**Failure is local.**  A bad frame after authentication (undecodable,
oversized, a message from someone other than the authenticated peer, or not
addressed to us) is logged and counted and closes that connection only; the
peer redials.  Every error stops at the connection's task.  Every socket is
closed in ``finally`` (see :mod:`trioraft.transport._ws`).

**Clients** get a :class:`~trioraft.transport.base.ClientConnection` handed
to ``client_handler``; responses are coalesced the same way by a sender
task from a :class:`~trioraft.transport.client_queue.ResponseQueue`, bounded
in responses and in bytes: a client that stops reading is disconnected once
either bound is exceeded, and streams wait for it with ``wait_writable``.

Why this is one file past 600 lines: the dialling side (one task per peer,
its sender and receiver), the listening side (handshake, then a peer or a
client) and :func:`open_websocket_transport` all share the transport's
state: the peer table, the counters, the log throttle and the one port.
Frame I/O is already its own module (``_ws.py``), and so is the client
response queue with the server side of a client connection
(``client_queue.py``); the remaining seam is ``_ServerClientConnection``
(about 65 lines), not split yet.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Final, TypeVar

import trio
import trio_websocket

from trioraft.core.types import Message, NodeId
from trioraft.transport._ws import (
    Closed,
    FrameSocket,
    HandshakeFailed,
    accept_stream,
    describe_stream,
    dial,
    dialer_handshake,
    listener_handshake,
    open_service_nursery,
    parse_address,
    send_batches,
)
from trioraft.transport.base import (
    ClientHandler,
    OnMessages,
    OnPeer,
    PeerStatistics,
    TokenLookup,
    TransportStatistics,
)
from trioraft.transport.client_queue import (
    DEFAULT_CLIENT_QUEUE_BYTES,
    DEFAULT_CLIENT_QUEUE_SIZE,
    QueuedClientConnection,
    QueueLimits,
)
from trioraft.transport.codec import (
    DEFAULT_MAX_FRAME,
    FRAME_OVERHEAD,
    INCARNATION_SIZE,
    ProtocolError,
    decode_frame,
    encode_message,
    new_nonce,
)
from trioraft.transport.messages import (
    AnyMessage,
    ClientRequest,
    Hello,
    HelloReject,
    SnapshotChunk,
    SnapshotChunkAck,
)

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_KEEPALIVE",
    "DEFAULT_SEND_TIMEOUT",
    "WebSocketTransport",
    "open_websocket_transport",
]

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

DEFAULT_CONNECT_TIMEOUT: Final = 5.0
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
DEFAULT_SEND_TIMEOUT: Final = 10.0
DEFAULT_KEEPALIVE: Final = 5.0
DEFAULT_BACKOFF: Final = (0.05, 1.5)
MIN_FRAME: Final = 64 * 1024

# What a peer may send once authenticated: the core's messages and snapshot chunks.
_PeerMessage = Message | SnapshotChunk | SnapshotChunkAck
# Errors that just mean "this connection is gone"; logged briefly.
_NETWORK_ERRORS: Final = (
    Closed,
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio_websocket.HandshakeError,  # e.g. an HTTP server that is not a trioraft node
)


class _Throttle:
    """Log a recurring complaint at WARNING once per ``interval``, at DEBUG in between.

    A misconfigured peer redials every couple of seconds for ever; one line
    per interval is enough to see it.
    """

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: dict[object, float] = {}

    def level(self, key: object) -> int:
        now = trio.current_time()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return logging.DEBUG
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        return logging.WARNING


class _Peer:
    """One outbound peer: its queue, its current connection and its counters."""

    def __init__(self, node_id: NodeId, address: str, queue_size: int) -> None:
        self.node_id = node_id
        self.address = address
        self.send_channel, self.receive_channel = trio.open_memory_channel[AnyMessage](queue_size)
        self.scope = trio.CancelScope()  # the peer's whole life
        self.connection_scope: trio.CancelScope | None = None  # the current connection
        self.carry: list[bytes] = []  # encoded, did not fit the last frame
        self.connected = False
        self.sent = 0
        self.dropped = 0
        self.received = 0
        self.connects = 0


class _ServerClientConnection(QueuedClientConnection):
    """:class:`~trioraft.transport.base.ClientConnection` over a WebSocket."""

    def __init__(self, transport: WebSocketTransport, sock: FrameSocket, client_id: str) -> None:
        super().__init__(client_id, sock.remote, transport._client_limits, transport.log)
        self._transport = transport
        self._sock = sock
        self._carry: list[bytes] = []

    def __repr__(self) -> str:
        return f"<client connection {self.client_id!r} from {self.remote}>"

    async def receive(self) -> list[ClientRequest]:
        t = self._transport
        if self._closed:
            raise trio.EndOfChannel
        try:
            data = await self._sock.receive()
            t._counts["client_frames_in"] += 1
            t._counts["client_bytes_in"] += len(data)
            requests: list[ClientRequest] = []
            for m in decode_frame(data, max_size=t.max_frame, cluster_id=t.cluster_id):
                if not isinstance(m, ClientRequest):
                    raise ProtocolError(f"{type(m).__name__} on a client connection")
                requests.append(m)
        except Closed as exc:
            if exc.oversized:
                t._counts["bad_frames"] += 1
                t.log.warning("%r: frame over %d bytes; closing", self, t.max_frame)
            self.close()
            raise trio.EndOfChannel from None
        except ProtocolError as exc:
            t._counts["bad_frames"] += 1
            t.log.warning("%r: bad frame (%s); closing", self, exc)
            self.close()
            raise trio.EndOfChannel from None
        return requests

    def _encoded(self, data: bytes) -> bytes:
        # Responses are encoded when queued (ResponseQueue.put); count them here.
        self._transport._counts["client_bytes_out"] += len(data)
        return data

    def _sent(self, count: int) -> None:
        self._transport._counts["client_frames_out"] += 1
        self._queue.written(count)

    async def _sender(self) -> None:
        try:
            await send_batches(
                self._sock,
                self._queue.channel,
                self._encoded,
                self._carry,
                self._transport._budget,
                self._transport._send_timeout,
                self._sent,
            )
        except Closed:
            self.close()
        except trio.TooSlowError:
            self._transport.log.warning("%r: send timed out; closing", self)
            self.close()


class WebSocketTransport:
    """A :class:`~trioraft.transport.base.Transport` over WebSockets.

    Made by :func:`open_websocket_transport`; ``port`` is the bound port.
    """

    def __init__(
        self,
        *,
        nursery: trio.Nursery,
        node_id: NodeId,
        port: int,
        cluster_id: str,
        secret: bytes,
        on_messages: OnMessages,
        on_peer: OnPeer | None,
        incarnation: bytes,
        client_handler: ClientHandler | None,
        client_tokens: TokenLookup | None,
        client_ssl_context: ssl.SSLContext | None,
        max_frame: int,
        queue_size: int,
        client_queue_size: int,
        client_queue_bytes: int,
        connect_timeout: float,
        handshake_timeout: float,
        send_timeout: float,
        keepalive: float,
        backoff: tuple[float, float],
    ) -> None:
        self.node_id = node_id
        self.port = port
        self.cluster_id = cluster_id
        self.max_frame = max_frame
        self.log = logging.getLogger(f"trioraft.transport.{node_id}")
        self._nursery = nursery
        self._secret = secret
        self._on_messages = on_messages
        self._on_peer = on_peer
        self.incarnation = incarnation
        self._client_handler = client_handler
        self._client_tokens = client_tokens
        self._client_ssl = client_ssl_context
        self._queue_size = queue_size
        self._connect_timeout = connect_timeout
        self._handshake_timeout = handshake_timeout
        self._send_timeout = send_timeout
        self._keepalive_interval = keepalive
        self._backoff = backoff
        self._budget = max_frame - FRAME_OVERHEAD
        self._client_limits = QueueLimits(
            max_messages=client_queue_size, max_bytes=client_queue_bytes, budget=self._budget
        )
        self._random = random.Random()
        self._throttle = _Throttle()
        self._peers: dict[NodeId, _Peer] = {}
        self._inbound: dict[NodeId, trio.CancelScope] = {}
        # The counters of statistics(), keyed by TransportStatistics' field names.
        self._counts: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"<WebSocketTransport node {self.node_id} port {self.port}>"

    # ------------------------------------------------------------------
    # The Transport interface
    # ------------------------------------------------------------------

    def send(self, dst: NodeId, message: AnyMessage) -> None:
        peer = self._peers.get(dst)
        if peer is None:
            self._counts["dropped_unknown"] += 1
            return
        try:
            peer.send_channel.send_nowait(message)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            peer.dropped += 1

    def set_peers(self, peers: Mapping[NodeId, str]) -> None:
        wanted = {n: a for n, a in peers.items() if n != self.node_id}
        for n in wanted:
            parse_address(wanted[n])  # fail here, not in the peer's task
        for n in list(self._peers):
            if n not in wanted:
                self._remove_peer(n)
        for n, address in wanted.items():
            peer = self._peers.get(n)
            if peer is None:
                peer = self._peers[n] = _Peer(n, address, self._queue_size)
                self._nursery.start_soon(self._run_peer, peer, name=f"peer {n}")
            elif peer.address != address:
                self.log.info("peer %d moved from %s to %s", n, peer.address, address)
                peer.address = address
                if peer.connection_scope is not None:
                    peer.connection_scope.cancel()

    def statistics(self) -> TransportStatistics:
        return TransportStatistics(
            peers={
                n: PeerStatistics(
                    address=p.address,
                    connected=p.connected,
                    inbound=n in self._inbound,
                    queued=p.receive_channel.statistics().current_buffer_used + len(p.carry),
                    sent=p.sent,
                    dropped=p.dropped,
                    received=p.received,
                    connects=p.connects,
                )
                for n, p in self._peers.items()
            },
            **self._counts,
        )

    # ------------------------------------------------------------------
    # Outbound peers
    # ------------------------------------------------------------------

    def _remove_peer(self, node_id: NodeId) -> None:
        peer = self._peers.pop(node_id)
        peer.scope.cancel()
        peer.dropped += peer.receive_channel.statistics().current_buffer_used
        peer.send_channel.close()
        peer.receive_channel.close()
        inbound = self._inbound.pop(node_id, None)
        if inbound is not None:
            inbound.cancel()
        self.log.info("peer %d removed", node_id)

    async def _run_peer(self, peer: _Peer) -> None:
        low, high = self._backoff
        delay = low
        failures = 0
        with peer.scope:
            while True:
                # One attempt and the pause after it; set_peers cancels this
                # scope when the address changes, to redial at once.
                attempt = peer.connection_scope = trio.CancelScope()
                with attempt:
                    connects = peer.connects
                    await self._peer_connection(peer, quiet=failures > 0)
                    if peer.connects > connects:
                        delay, failures = low, 0
                    else:
                        failures += 1
                    # Jitter in [delay/2, delay]: restarted nodes do not all
                    # redial in lockstep.
                    await trio.sleep(delay * (0.5 + 0.5 * self._random.random()))
                    delay = min(delay * 2, high)
                peer.connection_scope = None
                if attempt.cancelled_caught:
                    delay, failures = low, 0

    async def _peer_connection(self, peer: _Peer, *, quiet: bool) -> None:
        address = peer.address
        try:
            async with dial(
                address,
                ssl_context=self._client_ssl,
                max_frame=self.max_frame,
                connect_timeout=self._connect_timeout,
            ) as sock:
                with trio.fail_after(self._handshake_timeout):
                    opener = Hello(self.node_id, self.cluster_id, new_nonce(), self.incarnation)
                    reply = await dialer_handshake(
                        sock, opener, self._secret, expect_node=peer.node_id
                    )
                peer.connected = True
                peer.connects += 1
                self.log.info("connected to peer %d at %s", peer.node_id, address)
                try:
                    async with trio.open_nursery() as nursery:

                        async def receiver() -> None:
                            await self._receive_loop(sock, peer.node_id, reply.incarnation)
                            nursery.cancel_scope.cancel()

                        nursery.start_soon(receiver)
                        nursery.start_soon(self._keepalive, sock)
                        await self._send_loop(sock, peer)
                finally:
                    peer.connected = False
                    self.log.info("disconnected from peer %d at %s", peer.node_id, address)
        except* HandshakeFailed as group:
            self._counts["handshakes_rejected"] += 1
            for exc in _exceptions(group, HandshakeFailed):
                who = "peer refused us" if exc.by_peer else "we refused the peer"
                self.log.log(
                    self._throttle.level((peer.node_id, exc.code)),
                    "handshake with peer %d at %s failed (%s): %s",
                    peer.node_id,
                    address,
                    who,
                    exc,
                )
        except* trio.TooSlowError:
            self.log.log(
                logging.DEBUG if quiet else logging.INFO,
                "peer %d at %s: timed out",
                peer.node_id,
                address,
            )
        except* _NETWORK_ERRORS as group:
            level = logging.DEBUG if quiet else logging.INFO
            self.log.log(level, "peer %d at %s: %s", peer.node_id, address, _summary(group))
        except* Exception as group:
            self.log.error("peer %d at %s: unexpected error", peer.node_id, address, exc_info=group)

    def _encode_for(self, peer: _Peer) -> Callable[[AnyMessage], bytes | None]:
        def encode(message: AnyMessage) -> bytes | None:
            try:
                data = encode_message(message)
            except (TypeError, ProtocolError) as exc:
                peer.dropped += 1
                self.log.error(
                    "cannot send %s to %d: %s", type(message).__name__, peer.node_id, exc
                )
                return None
            if len(data) > self._budget:
                peer.dropped += 1
                self.log.error(
                    "dropped a %s of %d bytes to %d: larger than a frame (%d)",
                    type(message).__name__,
                    len(data),
                    peer.node_id,
                    self.max_frame,
                )
                return None
            self._counts["bytes_out"] += len(data)
            return data

        return encode

    async def _send_loop(self, sock: FrameSocket, peer: _Peer) -> None:
        def sent(count: int) -> None:
            peer.sent += count
            self._counts["frames_out"] += 1

        def lost(count: int) -> None:
            peer.dropped += count

        await send_batches(
            sock,
            peer.receive_channel,
            self._encode_for(peer),
            peer.carry,
            self._budget,
            self._send_timeout,
            sent,
            lost,
        )
        await trio.sleep_forever()  # the peer was removed; its scope ends us

    async def _keepalive(self, sock: FrameSocket) -> None:
        """Ping the peer; no pong within ``keepalive`` seconds means the connection is dead.

        Our outbound connections carry nothing back, so without this a
        half-open connection (the peer vanished without a reset) would
        swallow messages until TCP gives up, many minutes later.
        """
        while True:
            await trio.sleep(self._keepalive_interval)
            await sock.ping(self._keepalive_interval)

    # ------------------------------------------------------------------
    # Receiving from peers (both directions)
    # ------------------------------------------------------------------

    async def _receive_loop(self, sock: FrameSocket, src: NodeId, incarnation: bytes) -> None:
        """Deliver the peer's frames until the connection ends or misbehaves.

        ``incarnation`` is what the peer presented in this connection's handshake.
        """
        while True:
            try:
                data = await sock.receive()
                self._counts["frames_in"] += 1
                self._counts["bytes_in"] += len(data)
                messages = decode_frame(data, max_size=self.max_frame, cluster_id=self.cluster_id)
                self._check_batch(src, messages)
            except Closed as exc:
                if exc.oversized:
                    self._counts["bad_frames"] += 1
                    self.log.warning(
                        "peer %d sent a frame over %d bytes; closing", src, sock.max_frame
                    )
                else:
                    self.log.debug("connection with peer %d closed: %s", src, exc)
                return
            except ProtocolError as exc:
                self._counts["bad_frames"] += 1
                self.log.warning("bad frame from peer %d at %s: %s; closing", src, sock.remote, exc)
                return
            except HandshakeFailed as exc:
                self._counts["handshakes_rejected"] += 1
                self.log.warning("peer %d refused our handshake: %s", src, exc)
                return
            peer = self._peers.get(src)
            if peer is not None:
                peer.received += len(messages)
            try:
                if self._on_peer is not None:
                    self._on_peer(src, incarnation)
                self._on_messages(src, messages)
            except Exception:
                self.log.exception("on_messages failed for a batch from peer %d", src)

    def _check_batch(self, src: NodeId, messages: list[AnyMessage]) -> None:
        for m in messages:
            if isinstance(m, HelloReject):
                raise HandshakeFailed(m.code, m.message, by_peer=True)
            if not isinstance(m, _PeerMessage):
                raise ProtocolError(f"{type(m).__name__} on a peer connection")
            if m.src != src or m.dst != self.node_id:
                raise ProtocolError(
                    f"{type(m).__name__} from {m.src} to {m.dst} on the connection"
                    f" of peer {src} to node {self.node_id}"
                )

    # ------------------------------------------------------------------
    # Inbound connections
    # ------------------------------------------------------------------

    async def _handle_stream(self, stream: trio.abc.Stream) -> None:
        remote = describe_stream(stream)
        authenticated = False
        try:
            deadline = trio.current_time() + self._handshake_timeout
            async with accept_stream(stream, max_frame=self.max_frame, deadline=deadline) as sock:
                with trio.fail_at(deadline):
                    opener = await listener_handshake(
                        sock,
                        node_id=self.node_id,
                        cluster_id=self.cluster_id,
                        secret=self._secret,
                        is_peer=self._peers.__contains__,
                        client_key=self._client_tokens if self._client_handler else None,
                        incarnation=self.incarnation,
                    )
                authenticated = True
                if isinstance(opener, Hello):
                    await self._serve_peer(sock, opener.node_id, opener.incarnation)
                else:
                    await self._serve_client(sock, opener.client_id)
        except* HandshakeFailed as group:
            for exc in _exceptions(group, HandshakeFailed):
                self._refused(remote, exc.code, str(exc), by_dialer=exc.by_peer)
        except* trio.TooSlowError:
            self._refused(remote, "timeout", "handshake timed out")
        except* _NETWORK_ERRORS as group:
            if authenticated:
                self.log.debug("connection from %s ended: %s", remote, _summary(group))
            else:
                # Garbage instead of HTTP, a failed TLS handshake, a hang-up.
                self._refused(remote, "closed", f"closed before authenticating: {_summary(group)}")
        except* Exception as group:
            self.log.error("connection from %s: unexpected error", remote, exc_info=group)

    def _refused(self, remote: str, code: str, text: str, *, by_dialer: bool = False) -> None:
        self._counts["handshakes_rejected"] += 1
        level = self._throttle.level((remote.rpartition(":")[0], code))
        if by_dialer:
            self.log.log(
                level, "the dialer at %s refused a connection to this node: %s", remote, text
            )
        else:
            self.log.log(level, "refused a connection from %s: %s", remote, text)

    async def _serve_peer(self, sock: FrameSocket, node_id: NodeId, incarnation: bytes) -> None:
        scope = trio.CancelScope()
        previous = self._inbound.get(node_id)
        if previous is not None:
            # The peer redialled: its old connection is dead or dying.
            previous.cancel()
        self._inbound[node_id] = scope
        self.log.info("peer %d connected from %s", node_id, sock.remote)
        try:
            with scope:
                await self._receive_loop(sock, node_id, incarnation)
        finally:
            if self._inbound.get(node_id) is scope:
                del self._inbound[node_id]

    async def _serve_client(self, sock: FrameSocket, client_id: str) -> None:
        assert self._client_handler is not None
        conn = _ServerClientConnection(self, sock, client_id)
        self._counts["clients"] += 1
        self._counts["clients_accepted"] += 1
        self.log.debug("client %r connected from %s", client_id, sock.remote)
        try:
            with conn._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(conn._sender)
                    try:
                        await self._client_handler(conn)
                    except trio.EndOfChannel:
                        pass  # from conn.receive(): the connection closed, a normal end
                    except Exception:
                        self.log.exception("the client handler failed on %r", conn)
                    finally:
                        # Let the sender flush what the handler queued, then stop.
                        conn._queue.finish()
        finally:
            conn._closed = True
            conn._queue.close()
            self._counts["clients"] -= 1


def _exceptions(group: BaseExceptionGroup[BaseException], kind: type[E]) -> list[E]:
    out: list[E] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out += _exceptions(exc, kind)
        elif isinstance(exc, kind):
            out.append(exc)
    return out


def _summary(group: BaseExceptionGroup[BaseException]) -> str:
    leaves = _exceptions(group, BaseException)
    return "; ".join(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__ for e in leaves)


def _token_lookup(
    tokens: Mapping[str, bytes | str] | TokenLookup | None,
) -> TokenLookup | None:
    if tokens is None:
        return None
    if callable(tokens):
        return tokens
    table = {k: v.encode() if isinstance(v, str) else bytes(v) for k, v in tokens.items()}
    return table.get


async def _open_listeners(
    host: str, port: int, ssl_context: ssl.SSLContext | None
) -> list[trio.SocketListener] | list[trio.SSLListener[trio.SocketStream]]:
    listeners = await trio.open_tcp_listeners(port, host=host or None)
    ports = {lst.socket.getsockname()[1] for lst in listeners}
    if port == 0 and len(ports) > 1:
        # A name with several addresses got a different port on each: rebind
        # them all to the first one's.
        chosen = listeners[0].socket.getsockname()[1]
        for lst in listeners:
            await lst.aclose()
        listeners = await trio.open_tcp_listeners(chosen, host=host or None)
    if ssl_context is None:
        return listeners
    return [trio.SSLListener(lst, ssl_context, https_compatible=True) for lst in listeners]


@asynccontextmanager
async def open_websocket_transport(
    *,
    node_id: NodeId,
    listen: str,
    peers: Mapping[NodeId, str],
    cluster_id: str,
    secret: bytes | str,
    on_messages: OnMessages,
    on_peer: OnPeer | None = None,
    incarnation: bytes | None = None,
    client_handler: ClientHandler | None = None,
    client_tokens: Mapping[str, bytes | str] | TokenLookup | None = None,
    ssl_context: ssl.SSLContext | None = None,
    client_ssl_context: ssl.SSLContext | None = None,
    max_frame: int = DEFAULT_MAX_FRAME,
    queue_size: int = 1024,
    client_queue_size: int = DEFAULT_CLIENT_QUEUE_SIZE,
    client_queue_bytes: int = DEFAULT_CLIENT_QUEUE_BYTES,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    keepalive: float = DEFAULT_KEEPALIVE,
    backoff: tuple[float, float] = DEFAULT_BACKOFF,
) -> AsyncIterator[WebSocketTransport]:
    """Listen on ``listen`` and connect to ``peers`` until the block exits.

    Args:
        node_id: this node.
        listen: ``"host:port"`` to bind; port 0 picks one (see ``.port``).
        peers: ``{node_id: "host:port"}``; our own id is ignored.  Change
            later with :meth:`WebSocketTransport.set_peers`.
        cluster_id: every node and client must name the same cluster.
        secret: the cluster secret (text is UTF-8 encoded); never sent.
        on_messages: ``on_messages(src, messages)``, called for each frame
            received from an authenticated peer; must not block.
        on_peer: ``on_peer(src, incarnation)``, called before each such
            frame with the incarnation the peer presented on that connection.
        incarnation: this node's data directory id (16 bytes), presented in
            every handshake; random if not given (a transport without data).
        client_handler: ``await client_handler(conn)`` for each authenticated
            client connection; without one, clients are refused.
        client_tokens: ``{client_id: token}``, or a function returning a
            client's token (or None if unknown).
        ssl_context: TLS for the listener (server side); None for plain TCP.
        client_ssl_context: TLS for dialling peers; defaults to
            ``ssl_context`` unless that is a server-only context
            (``PROTOCOL_TLS_SERVER``, e.g. from ``ssl.create_default_context(
            ssl.Purpose.CLIENT_AUTH)``), in which case it is required.
        max_frame: the largest frame sent or accepted, in bytes.
        queue_size: messages queued per peer before :meth:`send` drops.
        client_queue_size: responses queued per client before it is dropped.
        client_queue_bytes: bytes of encoded responses queued per client
            before it is dropped (at least ``max_frame``); streams wait at an
            eighth of it (:meth:`ClientConnection.wait_writable`).
        connect_timeout: TCP/TLS connect plus WebSocket upgrade, per attempt.
        handshake_timeout: the whole handshake of an inbound connection.
        send_timeout: a frame that cannot be written in this time closes the
            connection (the peer is stuck).
        keepalive: each outbound peer connection is pinged this often and
            closed (then redialled) when the pong takes longer.
        backoff: (first, maximum) seconds between redials; doubled per
            failure with jitter.

    Example::

        async with open_websocket_transport(
            node_id=1, listen="127.0.0.1:0", peers={2: "127.0.0.1:7002"},
            cluster_id="prod", secret=b"s3cret", on_messages=handle,
        ) as transport:
            transport.send(2, Heartbeat(term=1, src=1, dst=2, commit=0))
    """
    if node_id <= 0:
        raise ValueError(f"node ids are positive integers, got {node_id}")
    if not cluster_id:
        raise ValueError("cluster_id must not be empty")
    if incarnation is None:
        incarnation = secrets.token_bytes(INCARNATION_SIZE)
    if len(incarnation) != INCARNATION_SIZE:
        raise ValueError(f"incarnation must be {INCARNATION_SIZE} bytes")
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if not key:
        raise ValueError("the cluster secret must not be empty")
    if max_frame < MIN_FRAME:
        raise ValueError(f"max_frame must be at least {MIN_FRAME}")
    if not keepalive > 0:
        raise ValueError("keepalive must be positive")
    if queue_size < 1 or client_queue_size < 1:
        raise ValueError("queue sizes must be positive")
    if client_queue_bytes < max_frame:
        raise ValueError(f"client_queue_bytes must be at least max_frame ({max_frame})")
    if not 0 < backoff[0] <= backoff[1] or not math.isfinite(backoff[1]):
        raise ValueError(f"backoff must be (first, maximum) with 0 < first <= maximum: {backoff}")
    if client_ssl_context is None and ssl_context is not None:
        if ssl_context.protocol == ssl.PROTOCOL_TLS_SERVER:
            raise ValueError(
                "ssl_context is server-only: pass client_ssl_context for dialling peers"
            )
        client_ssl_context = ssl_context
    host, port = parse_address(listen)
    listeners = await _open_listeners(host, port, ssl_context)
    first = listeners[0]
    raw = first.transport_listener if isinstance(first, trio.SSLListener) else first
    assert isinstance(raw, trio.SocketListener)
    async with open_service_nursery() as nursery:
        transport = WebSocketTransport(
            nursery=nursery,
            node_id=node_id,
            port=raw.socket.getsockname()[1],
            cluster_id=cluster_id,
            secret=key,
            on_messages=on_messages,
            on_peer=on_peer,
            incarnation=bytes(incarnation),
            client_handler=client_handler,
            client_tokens=_token_lookup(client_tokens),
            client_ssl_context=client_ssl_context,
            max_frame=max_frame,
            queue_size=queue_size,
            client_queue_size=client_queue_size,
            client_queue_bytes=client_queue_bytes,
            connect_timeout=connect_timeout,
            handshake_timeout=handshake_timeout,
            send_timeout=send_timeout,
            keepalive=keepalive,
            backoff=backoff,
        )
        await nursery.start(trio.serve_listeners, transport._handle_stream, listeners)
        transport.log.info("listening on %s:%d", host or "*", transport.port)
        transport.set_peers(peers)
        yield transport
