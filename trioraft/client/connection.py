"""A remote client's connection to one trioraft node.

Theory of operation
-------------------
One WebSocket carries many requests in flight.  :meth:`Connection.call`
gives each request a fresh ``request_id``, queues it for the sender task and
waits for the response with that id; the sender packs everything queued into
one frame (DESIGN.md: coalescing is what makes a connection fast), and the
reader task routes each response to its caller.  Responses to ids that no
``call`` is waiting for (requests queued with :meth:`Connection.send`) are
handed out by :meth:`Connection.receive`.

A ``call`` may carry a ``deadline`` (``trio.current_time()`` scale): past it
the call raises :class:`trio.TooSlowError` and its answer is abandoned.  One
timer task per connection enforces the deadlines of every call in flight, so
a call pays a comparison for its timeout, not a cancel scope (that scope
was a tenth of the client's CPU per request under load).

Backpressure: ``call`` waits for room in the bounded send queue; ``send``
raises :class:`trio.WouldBlock` instead.  If you use ``send``, you must also
``receive``: the reader waits for you once ``queue_size`` unclaimed frames
are pending, and so do the calls behind them.

The connection authenticates with the challenge-response handshake of
docs/protocol.md (``ClientHello``, the token as key).  When it breaks, calls
in flight raise :class:`ConnectionClosedError`; reconnecting (to this node or
to the leader a ``not_leader`` response names) is the caller's job.

Example::

    async with open_client_connection(
        "127.0.0.1:7001", cluster_id="prod", client_id="app-1", token=b"t0ken"
    ) as conn:
        response = await conn.call(ClientRequest(0, "read", {"key": "a"}))
"""

from __future__ import annotations

import dataclasses
import logging
import math
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Final

import trio

from trioraft.core.types import NodeId
from trioraft.transport._ws import (
    CLOSE_TIMEOUT,
    Closed,
    FrameSocket,
    HandshakeFailed,
    dial,
    dialer_handshake,
    open_service_nursery,
    send_batches,
)
from trioraft.transport.codec import (
    DEFAULT_MAX_FRAME,
    FRAME_OVERHEAD,
    ProtocolError,
    decode_frame,
    encode_message,
    new_nonce,
)
from trioraft.transport.messages import ClientHello, ClientRequest, ClientResponse, HelloReject

__all__ = [
    "ClientConnectionError",
    "Connection",
    "ConnectionClosedError",
    "HandshakeError",
    "NoListenerError",
    "open_client_connection",
]

log = logging.getLogger("trioraft.client")

DEFAULT_CONNECT_TIMEOUT: Final = 10.0
DEFAULT_SEND_TIMEOUT: Final = 10.0
_MAX_ABANDONED: Final = 65_536


class ClientConnectionError(Exception):
    """Connecting failed, or the connection broke."""


class HandshakeError(ClientConnectionError):
    """The node refused us (wrong token, unknown client id, other cluster...), or we it.

    ``code`` is the HelloReject code (``bad_mac``, ``wrong_cluster``,
    ``protocol``...).  A wrong token and an unknown client id look the same
    on purpose: the node does not reveal which client ids exist.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class NoListenerError(ClientConnectionError):
    """Nothing listens at ``address``: the connection was refused, not timed out."""

    def __init__(self, address: str) -> None:
        super().__init__(f"cannot connect to {address}: connection refused")
        self.address = address


def _refused(exc: BaseException) -> bool:
    # trio.open_tcp_stream raises one OSError whose cause groups the attempts.
    if isinstance(exc, ConnectionRefusedError):
        return True
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        return all(_refused(e) for e in cause.exceptions)
    return False


class ConnectionClosedError(ClientConnectionError):
    """The connection is closed; requests in flight have no answer."""


class _Waiter:
    __slots__ = ("deadline", "event", "expired", "response")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.event = trio.Event()
        self.response: ClientResponse | None = None
        #: Set by the timer: the deadline passed with no response.
        self.expired = False


class Connection:
    """An authenticated connection to one node (see :func:`open_client_connection`)."""

    def __init__(
        self,
        sock: FrameSocket,
        *,
        client_id: str,
        cluster_id: str,
        node_id: NodeId,
        queue_size: int,
        send_timeout: float,
    ) -> None:
        self._sock = sock
        self._client_id = client_id
        self._cluster_id = cluster_id
        self._node_id = node_id
        self._send_timeout = send_timeout
        self._budget = sock.max_frame - FRAME_OVERHEAD
        self._out_send, self._out_receive = trio.open_memory_channel[bytes](queue_size)
        self._in_send, self._in_receive = trio.open_memory_channel[list[ClientResponse]](queue_size)
        self._carry: list[bytes] = []
        self._pending: dict[int, _Waiter] = {}
        self._abandoned: set[int] = set()
        self._streams: dict[int, trio.MemorySendChannel[ClientResponse]] = {}
        self._ended_streams: set[int] = set()
        self._next_id = 0
        self._closed_reason: str | None = None
        self._sender_done = trio.Event()
        # The timer sleeps in this scope until the earliest deadline it knows of.
        self._timer_scope = trio.CancelScope()
        self._timer_next = math.inf
        self.frames_out = 0
        self.frames_in = 0

    def __repr__(self) -> str:
        return f"<Connection {self._client_id!r} to node {self._node_id} at {self.remote}>"

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def node_id(self) -> NodeId:
        """The node we reached (from its handshake reply)."""
        return self._node_id

    @property
    def remote(self) -> str:
        return self._sock.remote

    @property
    def in_flight(self) -> int:
        """Calls sent on this connection and not answered yet."""
        return len(self._pending)

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    def next_request_id(self) -> int:
        """A request id not used before on this connection (for :meth:`send`)."""
        self._next_id += 1
        return self._next_id

    def _encode(self, request: ClientRequest) -> bytes:
        data = encode_message(request)
        if len(data) > self._budget:
            raise ProtocolError(
                f"request of {len(data)} bytes does not fit a frame ({self._sock.max_frame})"
            )
        return data

    def _check_open(self) -> None:
        if self._closed_reason is not None:
            raise ConnectionClosedError(self._closed_reason)

    def send(self, requests: Sequence[ClientRequest], *, discard_responses: bool = False) -> None:
        """Queue requests without waiting; responses come from :meth:`receive`.

        With ``discard_responses`` their responses are dropped instead (a
        request sent for its effect, such as docstore's ``cancel``): otherwise
        a caller that never calls :meth:`receive` would fill the queue of
        unclaimed frames, and the reader would wait for it forever.

        All or nothing: raises :class:`trio.WouldBlock` if the queue has no
        room for every request, :class:`ConnectionClosedError` if closed, and
        ``ProtocolError``/``TypeError`` for a request the codec refuses.
        """
        self._check_open()
        encoded = [self._encode(r) for r in requests]
        stats = self._out_send.statistics()
        if stats.current_buffer_used + len(encoded) > stats.max_buffer_size:
            raise trio.WouldBlock
        for r, data in zip(requests, encoded, strict=True):
            if discard_responses:
                self._abandon(r.request_id)
            self._out_send.send_nowait(data)

    async def receive(self) -> list[ClientResponse]:
        """The responses of the next frame that no :meth:`call` claimed.

        Raises:
            ConnectionClosedError: closed and nothing left to receive.
        """
        try:
            return await self._in_receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ConnectionClosedError(self._closed_reason or "closed") from None

    async def call(self, request: ClientRequest, *, deadline: float = math.inf) -> ClientResponse:
        """Send ``request`` and wait for its response.

        The connection assigns the ``request_id`` (the one given is
        ignored), so any number of calls may run at once from different
        tasks.  Cancelling a call abandons its response.

        Raises:
            trio.TooSlowError: no response by ``deadline`` (``trio.current_time()``
                scale); the response is abandoned, the request may have run
                (not if the deadline had passed when called: it is not sent).
            ConnectionClosedError: the connection closed before the answer.
            ProtocolError, TypeError: the codec refuses the request.
        """
        self._check_open()
        if deadline <= trio.current_time():
            raise trio.TooSlowError("the call's deadline has passed: not sent")
        rid = self.next_request_id()
        r = request
        data = self._encode(
            ClientRequest(rid, r.kind, r.payload, r.client_id, r.sequence, r.consistency)
        )
        waiter = self._pending[rid] = _Waiter(deadline)
        if deadline < self._timer_next:  # rare: deadlines mostly come later and later
            self._timer_next = self._timer_scope.deadline = deadline
        try:
            try:
                try:
                    # Queued without a checkpoint when there is room: the caller
                    # then runs on to its wait, and the sender finds more requests
                    # queued for one frame.
                    self._out_send.send_nowait(data)
                except trio.WouldBlock:
                    with trio.move_on_at(deadline):
                        await self._out_send.send(data)
                    if trio.current_time() >= deadline:
                        waiter.expired = True
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise ConnectionClosedError(self._closed_reason or "closed") from None
            if not waiter.expired:
                await waiter.event.wait()
        finally:
            del self._pending[rid]
            if waiter.response is None and not self.closed:
                self._abandon(rid)
        if waiter.response is not None:
            return waiter.response
        if waiter.expired:
            raise trio.TooSlowError(f"no answer to request {rid} by its deadline")
        raise ConnectionClosedError(self._closed_reason or "closed")

    async def _timer(self) -> None:
        """Expire the calls whose deadline passed (see the module docstring)."""
        while True:
            now = trio.current_time()
            earliest = math.inf
            for waiter in self._pending.values():
                if waiter.response is not None or waiter.expired:
                    continue
                if waiter.deadline <= now:
                    waiter.expired = True
                    waiter.event.set()
                elif waiter.deadline < earliest:
                    earliest = waiter.deadline
            self._timer_next = earliest
            with trio.CancelScope(deadline=earliest) as self._timer_scope:
                await trio.sleep_forever()

    @asynccontextmanager
    async def stream(
        self, request: ClientRequest, *, buffer: int = 1024
    ) -> AsyncIterator[trio.MemoryReceiveChannel[ClientResponse]]:
        """Send ``request`` and receive every response carrying its id, in order.

        For kinds that answer more than once (a watch).  The channel ends when
        the connection closes, or when the consumer falls ``buffer`` responses
        behind (it cannot tell which: both mean "resume elsewhere").  Leaving
        the block stops routing; tell the node to stop sending with a request
        of your own (docstore sends ``cancel``).

        Example::

            async with conn.stream(ClientRequest(0, "watch", {...})) as responses:
                async for response in responses:
                    ...
        """
        self._check_open()
        rid = self.next_request_id()
        data = self._encode(dataclasses.replace(request, request_id=rid))
        send, receive = trio.open_memory_channel[ClientResponse](buffer)
        self._streams[rid] = send
        try:
            try:
                await self._out_send.send(data)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise ConnectionClosedError(self._closed_reason or "closed") from None
            async with receive:
                yield receive
        finally:
            if self._streams.pop(rid, None) is not None and not self.closed:
                # Responses may keep coming until the node hears we stopped.
                if len(self._ended_streams) >= _MAX_ABANDONED:
                    self._ended_streams.pop()
                self._ended_streams.add(rid)
            send.close()

    def _abandon(self, rid: int) -> None:
        # Its answer may still come: recognise it and throw it away.
        if len(self._abandoned) >= _MAX_ABANDONED:
            self._abandoned.pop()
        self._abandoned.add(rid)

    def _shutdown(self, reason: str) -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        log.debug("%r closed: %s", self, reason)
        for waiter in self._pending.values():
            waiter.event.set()
        for stream in self._streams.values():
            stream.close()
        self._out_send.close()
        self._in_send.close()

    async def _reader(self) -> None:
        reason = "the connection closed"
        try:
            reason = await self._read_until_done()
        finally:
            self._shutdown(reason)
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self._sock.ws.aclose()

    async def _read_until_done(self) -> str:
        while True:
            try:
                data = await self._sock.receive()
                self.frames_in += 1
                messages = decode_frame(
                    data, max_size=self._sock.max_frame, cluster_id=self._cluster_id
                )
            except Closed as exc:
                if exc.oversized:
                    return f"the node sent a frame over {self._sock.max_frame} bytes"
                return f"the connection closed ({exc})"
            except ProtocolError as exc:
                log.warning("%r: bad frame: %s", self, exc)
                return f"bad frame from the node: {exc}"
            unclaimed: list[ClientResponse] = []
            for m in messages:
                if isinstance(m, HelloReject):
                    return f"the node refused us: {m.code}: {m.message}"
                if not isinstance(m, ClientResponse):
                    return f"protocol error: {type(m).__name__} on a client connection"
                waiter = self._pending.get(m.request_id)
                stream = self._streams.get(m.request_id)
                if stream is not None:
                    try:
                        stream.send_nowait(m)
                    except trio.WouldBlock:
                        stream.close()  # the consumer fell behind: it resumes
                    except (trio.ClosedResourceError, trio.BrokenResourceError):
                        pass
                elif waiter is not None and waiter.response is None:
                    waiter.response = m
                    waiter.event.set()
                elif m.request_id in self._ended_streams:
                    pass
                elif m.request_id in self._abandoned:
                    self._abandoned.discard(m.request_id)
                else:
                    unclaimed.append(m)
            if unclaimed:
                try:
                    await self._in_send.send(unclaimed)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    return self._closed_reason or "closed"

    async def _sender(self) -> None:
        def sent(count: int) -> None:
            self.frames_out += 1

        try:
            await send_batches(
                self._sock,
                self._out_receive,
                lambda data: data,
                self._carry,
                self._budget,
                self._send_timeout,
                sent,
            )
        except Closed as exc:
            self._shutdown(f"the connection closed ({exc})")
        except trio.TooSlowError:
            self._shutdown("sending timed out")
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self._sock.ws.aclose()
        finally:
            self._sender_done.set()


@asynccontextmanager
async def open_client_connection(
    address: str,
    *,
    cluster_id: str,
    client_id: str,
    token: bytes | str,
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    max_frame: int = DEFAULT_MAX_FRAME,
    queue_size: int = 1024,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
) -> AsyncIterator[Connection]:
    """Connect and authenticate to the node at ``address`` (``"host:port"``).

    Args:
        cluster_id: must match the node's.
        client_id: who we are; the node looks up our token by it.
        token: the shared key proven in the handshake (text is UTF-8); never sent.
        ssl_context: TLS (e.g. ``ssl.create_default_context(cafile=...)``).
        connect_timeout: TCP/TLS connect, WebSocket upgrade and handshake.
        max_frame: the largest frame sent or accepted.
        queue_size: requests queued for the sender; unclaimed response frames.
        send_timeout: a frame that cannot be written in this time closes the
            connection.

    Raises:
        HandshakeError: the node refused us, or is not a node of ``cluster_id``.
        NoListenerError: every connection attempt was refused.
        ClientConnectionError: cannot connect (timed out, not a trioraft
            node...).
    """
    key = token.encode() if isinstance(token, str) else bytes(token)
    async with AsyncExitStack() as stack:
        try:
            sock = await stack.enter_async_context(
                dial(
                    address,
                    ssl_context=ssl_context,
                    max_frame=max_frame,
                    connect_timeout=connect_timeout,
                )
            )
            with trio.fail_after(connect_timeout):
                reply = await dialer_handshake(
                    sock, ClientHello(client_id, cluster_id, new_nonce()), key, expect_node=None
                )
        except HandshakeFailed as exc:
            if exc.code == "bad_mac":
                # Whichever side noticed, the keys differ; the node does not
                # tell a wrong token from an unknown client id.
                raise HandshakeError(
                    exc.code, f"token rejected by {address} (wrong token or client id)"
                ) from None
            raise HandshakeError(exc.code, exc.message) from None
        except trio.TooSlowError:
            raise ClientConnectionError(f"connecting to {address} timed out") from None
        except Exception as exc:
            if _refused(exc):
                raise NoListenerError(address) from exc
            raise ClientConnectionError(f"cannot connect to {address}: {exc!r}") from exc
        conn = Connection(
            sock,
            client_id=client_id,
            cluster_id=cluster_id,
            node_id=reply.node_id,
            queue_size=queue_size,
            send_timeout=send_timeout,
        )
        nursery = await stack.enter_async_context(open_service_nursery())
        nursery.start_soon(conn._reader)
        nursery.start_soon(conn._sender)
        nursery.start_soon(conn._timer)
        try:
            yield conn
        finally:
            conn._shutdown("closed by the client")
            # Let requests queued with send() leave (bounded; skipped if cancelled).
            with trio.move_on_after(CLOSE_TIMEOUT):
                await conn._sender_done.wait()
