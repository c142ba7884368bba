"""An in-process network with fault injection, for tests.

Theory of operation
-------------------
:class:`MemoryNetwork` owns a nursery with one delivery task and a queue of
in-flight messages ordered by delivery time.  :meth:`MemoryTransport.send`
encodes the message with the real codec (so codec bugs surface in every
runtime test), applies the faults in force and schedules the frame at
``now + delay``; the delivery task decodes it and calls the destination's
``on_messages``.  Messages due at the same moment from one source to one
destination arrive as one batch, like a frame.  The delivery task sleeps in
a cancel scope whose deadline is the earliest message's: a send that is due
sooner moves the deadline, so the task wakes only when something is due (in
a simulation most of its wake-ups used to find nothing to deliver).

Faults (attributes and methods of the network, changeable at any time):

* ``drop_rate``: probability that a message is lost;
* ``duplicate_rate``: probability that it is delivered twice;
* ``delay = (low, high)``: each message takes a uniform random time in the
  range, so messages overtake each other unless ``low == high``;
* ``partition(a, b)``, ``isolate(n)``, ``block(src, dst)`` (one way),
  ``unblock``, ``heal()``: links that drop everything.  A link is checked
  when a message is sent and again when it is delivered.

Client connections are in memory too: :class:`MemoryClientConnection` is a
:class:`~trioraft.transport.base.ClientConnection` whose other end the test
holds (``request``, ``responses``, ``hang_up``).  Its server side and
response queue are the WebSocket transport's (bounded in responses and
bytes, encoded with the real codec); a response counts as written when the
client end takes it, so a test that does not read is a client that does not
read, with no timing involved.

As with TCP, a message sent before a node restarted is never delivered to
the new incarnation.  Each transport has an ``incarnation`` (its node's
data directory id, random if not given); a batch is delivered after
``on_peer(src, incarnation)`` with the sender's incarnation when it sent,
as the WebSocket transport reports what the handshake presented.
Randomness comes from ``seed``, and the clock from Trio, so runs under
``trio.testing.MockClock(autojump_threshold=0)`` are reproducible and take
no wall time.

Mistakes surface loudly: sending an object the codec cannot encode raises
from :meth:`~MemoryTransport.send`, and a frame that fails to decode (a codec
bug) or an exception from ``on_messages`` crashes the network's nursery,
failing the test.  A message larger than the frame limit is logged and
dropped, as the WebSocket transport does.

Why this is one file past 600 lines: :class:`MemoryTransport` is a thin
handle on :class:`MemoryNetwork`, whose delivery queue, fault settings and
random stream every send goes through, so the two only make sense together.
:class:`MemoryClientConnection` (about 110 lines at the end) does not use
the network at all, only the codec and the server side of a client
connection it shares with the WebSocket transport
(:class:`~trioraft.transport.client_queue.QueuedClientConnection`); it is
the seam if this file grows (a ``memory_client.py``), and is not split yet.

Example::

    async with MemoryNetwork(seed=7, delay=(0.001, 0.01)) as net:
        async with net.open_transport(1, on_messages_1) as t1, \\
                   net.open_transport(2, on_messages_2) as t2:
            t1.send(2, Heartbeat(term=1, src=1, dst=2, commit=0))
            net.partition({1}, {2})
            ...
            net.heal()
"""

from __future__ import annotations

import heapq
import logging
import math
import random
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Collection, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TypedDict, Unpack

import trio

from trioraft.core.types import NodeId
from trioraft.transport._ws import open_service_nursery
from trioraft.transport.base import (
    ClientHandler,
    OnMessages,
    OnPeer,
    PeerStatistics,
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
    assemble_frame,
    decode_frame,
    encode_frame,
)
from trioraft.transport.messages import AnyMessage, ClientRequest, ClientResponse

__all__ = [
    "MemoryClientConnection",
    "MemoryNetwork",
    "MemoryTransport",
    "NetworkStatistics",
    "TransportOptions",
]

log = logging.getLogger("trioraft.transport.memory")


@dataclass(frozen=True, slots=True)
class NetworkStatistics:
    """Counters of a :class:`MemoryNetwork`.

    ``blocked``: lost to a partition or block; ``unreachable``: sent to a
    node that was not running (or restarted before delivery); ``lost``:
    random drops; ``oversized``: larger than a frame.
    """

    delivered: int = 0
    in_flight: int = 0
    blocked: int = 0
    unreachable: int = 0
    lost: int = 0
    duplicated: int = 0
    oversized: int = 0


@dataclass(slots=True, eq=False)
class _Flight:
    """A message in flight; the queue holds ``(due, sequence, flight)`` tuples
    (compared in C: the heap's comparisons were a good part of a send)."""

    src: NodeId
    dst: NodeId
    target: MemoryTransport
    payload: bytes | AnyMessage
    counter: _PeerCounters
    incarnation: bytes


class TransportOptions(TypedDict, total=False):
    """How a node joins a :class:`MemoryNetwork` (:meth:`~MemoryNetwork.attach`).

    ``peers``: the nodes it may send to and hear from (default: every node on
    the network, until :meth:`MemoryTransport.set_peers`); ``incarnation``:
    its data directory id (default: random); ``on_peer``: see
    :data:`~trioraft.transport.base.OnPeer`.
    """

    peers: Mapping[NodeId, str] | Iterable[NodeId] | None
    incarnation: bytes | None
    on_peer: OnPeer | None


class _PeerCounters:
    __slots__ = ("address", "dropped", "in_flight", "received", "sent")

    def __init__(self, address: str) -> None:
        self.address = address
        self.sent = 0
        self.dropped = 0
        self.received = 0
        self.in_flight = 0


class MemoryTransport:
    """A :class:`~trioraft.transport.base.Transport` on a :class:`MemoryNetwork`.

    Until :meth:`set_peers` is called (or unless ``peers`` was given), every
    node on the network is a peer.
    """

    def __init__(
        self,
        network: MemoryNetwork,
        node_id: NodeId,
        on_messages: OnMessages,
        peers: Mapping[NodeId, str] | Iterable[NodeId] | None = None,
        incarnation: bytes | None = None,
        on_peer: OnPeer | None = None,
    ) -> None:
        self.node_id = node_id
        self.network = network
        self._on_messages = on_messages
        self._on_peer = on_peer
        self.incarnation = incarnation or secrets.token_bytes(INCARNATION_SIZE)
        self._peers: dict[NodeId, str] | None = None
        self._counters: dict[NodeId, _PeerCounters] = {}
        self._closed = False
        self._frames_in = 0
        self._frames_out = 0
        self._dropped_unknown = 0
        if peers is not None:
            self.set_peers(peers if isinstance(peers, Mapping) else {n: "" for n in peers})

    def __repr__(self) -> str:
        return f"<MemoryTransport node {self.node_id}>"

    @property
    def closed(self) -> bool:
        return self._closed

    def _counter(self, dst: NodeId) -> _PeerCounters:
        c = self._counters.get(dst)
        if c is None:
            address = self._peers.get(dst, "") if self._peers is not None else ""
            c = self._counters[dst] = _PeerCounters(address or f"memory:{dst}")
        return c

    def send(self, dst: NodeId, message: AnyMessage) -> None:
        if (
            self._closed
            or dst == self.node_id
            or (self._peers is not None and dst not in self._peers)
        ):
            self._dropped_unknown += 1
            return
        self.network._submit(self, dst, message)

    def set_peers(self, peers: Mapping[NodeId, str]) -> None:
        self._peers = {n: a for n, a in peers.items() if n != self.node_id}
        for n in list(self._counters):
            if n not in self._peers:
                del self._counters[n]
        for n, a in self._peers.items():
            self._counter(n).address = a or f"memory:{n}"

    def statistics(self) -> TransportStatistics:
        net = self.network
        known = self._peers if self._peers is not None else self._counters
        peers = {}
        for n in known:
            c = self._counter(n)
            peers[n] = PeerStatistics(
                address=c.address,
                connected=net._up(self.node_id, n),
                inbound=net._up(n, self.node_id),
                queued=c.in_flight,
                sent=c.sent,
                dropped=c.dropped,
                received=c.received,
                connects=0,
            )
        return TransportStatistics(
            peers=peers,
            frames_in=self._frames_in,
            frames_out=self._frames_out,
            dropped_unknown=self._dropped_unknown,
        )

    def close(self) -> None:
        """Leave the network: nothing more is sent or delivered (like a crash)."""
        if not self._closed:
            self._closed = True
            self.network._detach(self)


class MemoryNetwork:
    """The in-memory network; use as ``async with MemoryNetwork(...) as net``.

    Args:
        seed: seeds the network's :class:`random.Random` (drops, delays).
        drop_rate: probability that a message is lost.
        duplicate_rate: probability that a message is delivered twice.
        delay: ``(low, high)`` seconds, or one number for a fixed delay.
        codec: pass messages through ``encode_frame``/``decode_frame``.
        max_frame: the frame limit; larger messages are dropped.
        queue_size: messages in flight per link before sends are dropped.
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        drop_rate: float = 0.0,
        duplicate_rate: float = 0.0,
        delay: float | tuple[float, float] = 0.0,
        codec: bool = True,
        max_frame: int = DEFAULT_MAX_FRAME,
        queue_size: int = 1024,
    ) -> None:
        self.random = random.Random(seed)
        self.drop_rate = drop_rate
        self.duplicate_rate = duplicate_rate
        self.delay = delay
        self.codec = codec
        self.max_frame = max_frame
        self.queue_size = queue_size
        self._nodes: dict[NodeId, MemoryTransport] = {}
        self._blocked: set[tuple[NodeId, NodeId]] = set()
        self._isolated: set[NodeId] = set()
        self._heap: list[tuple[float, int, _Flight]] = []
        self._seq = 0
        #: The delivery task's sleep, while it sleeps; its deadline is the earliest message's.
        self._sleep: trio.CancelScope | None = None
        self._running = False
        self._cm: AbstractAsyncContextManager[MemoryNetwork] | None = None
        #: The counters of :class:`NetworkStatistics` but ``in_flight``, by field name.
        self._counts: Counter[str] = Counter()

    # ------------------------------------------------------------------
    # Lifetime
    # ------------------------------------------------------------------

    async def __aenter__(self) -> MemoryNetwork:
        if self._cm is not None:
            raise RuntimeError("a MemoryNetwork can be entered once")
        self._cm = self._run()
        return await self._cm.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._cm is not None
        return await self._cm.__aexit__(exc_type, exc, tb)

    @asynccontextmanager
    async def _run(self) -> AsyncIterator[MemoryNetwork]:
        async with open_service_nursery() as nursery:
            nursery.start_soon(self._deliver_forever)
            self._running = True
            try:
                yield self
            finally:
                self._running = False

    def attach(
        self, node_id: NodeId, on_messages: OnMessages, **options: Unpack[TransportOptions]
    ) -> MemoryTransport:
        """Join the network now; :meth:`MemoryTransport.close` leaves it.

        ``options`` are those of :class:`TransportOptions`.
        """
        if not self._running:
            raise RuntimeError("use the network inside `async with MemoryNetwork() as net`")
        if node_id in self._nodes:
            raise ValueError(f"node {node_id} is already on the network")
        transport = MemoryTransport(self, node_id, on_messages, **options)
        self._nodes[node_id] = transport
        return transport

    @asynccontextmanager
    async def open_transport(
        self, node_id: NodeId, on_messages: OnMessages, **options: Unpack[TransportOptions]
    ) -> AsyncIterator[MemoryTransport]:
        """``async with net.open_transport(1, on_messages) as t``: attach, then close on exit.

        An async context manager, like
        :func:`~trioraft.transport.websocket.open_websocket_transport`, so a
        runtime can take either.
        """
        transport = self.attach(node_id, on_messages, **options)
        try:
            yield transport
        finally:
            transport.close()

    def _detach(self, transport: MemoryTransport) -> None:
        if self._nodes.get(transport.node_id) is transport:
            del self._nodes[transport.node_id]

    # ------------------------------------------------------------------
    # Faults
    # ------------------------------------------------------------------

    def partition(self, group_a: Collection[NodeId], group_b: Collection[NodeId]) -> None:
        """Cut every link between the two groups, both ways."""
        for a in group_a:
            for b in group_b:
                if a != b:
                    self._blocked.add((a, b))
                    self._blocked.add((b, a))

    def isolate(self, node: NodeId) -> None:
        """Cut ``node`` off from everyone (until :meth:`heal` or :meth:`reconnect`)."""
        self._isolated.add(node)

    def reconnect(self, node: NodeId) -> None:
        """Undo :meth:`isolate` for ``node``."""
        self._isolated.discard(node)

    def block(self, src: NodeId, dst: NodeId) -> None:
        """Drop everything ``src`` sends to ``dst`` (one way)."""
        self._blocked.add((src, dst))

    def unblock(self, src: NodeId, dst: NodeId) -> None:
        """Undo :meth:`block` (or one direction of a partition)."""
        self._blocked.discard((src, dst))

    def heal(self) -> None:
        """Remove every partition, block and isolation (rates and delays stay)."""
        self._blocked.clear()
        self._isolated.clear()

    def is_blocked(self, src: NodeId, dst: NodeId) -> bool:
        return (src, dst) in self._blocked or src in self._isolated or dst in self._isolated

    def _up(self, src: NodeId, dst: NodeId) -> bool:
        return src in self._nodes and dst in self._nodes and not self.is_blocked(src, dst)

    def statistics(self) -> NetworkStatistics:
        return NetworkStatistics(in_flight=len(self._heap), **self._counts)

    # ------------------------------------------------------------------
    # Sending and delivering
    # ------------------------------------------------------------------

    def _delay(self) -> float:
        d = self.delay
        if isinstance(d, tuple):
            low, high = d
            return low if low >= high else self.random.uniform(low, high)
        return d

    def _submit(self, sender: MemoryTransport, dst: NodeId, message: AnyMessage) -> None:
        counter = sender._counter(dst)
        if counter.in_flight >= self.queue_size:
            counter.dropped += 1
            return
        payload: bytes | AnyMessage = message
        if self.codec:
            payload = encode_frame([message])  # raises on a message the codec refuses
            if len(payload) > self.max_frame:
                self._counts["oversized"] += 1
                counter.dropped += 1
                log.error(
                    "node %d: dropped a %s of %d bytes to %d: larger than a frame",
                    sender.node_id,
                    type(message).__name__,
                    len(payload),
                    dst,
                )
                return
        counter.sent += 1
        sender._frames_out += 1
        src = sender.node_id
        target = self._nodes.get(dst)
        if target is None:
            self._counts["unreachable"] += 1
            return
        if self.is_blocked(src, dst):
            self._counts["blocked"] += 1
            return
        if self.drop_rate and self.random.random() < self.drop_rate:
            self._counts["lost"] += 1
            return
        copies = 1
        if self.duplicate_rate and self.random.random() < self.duplicate_rate:
            copies = 2
            self._counts["duplicated"] += 1
        now = trio.current_time()
        flight = _Flight(src, dst, target, payload, counter, sender.incarnation)
        for _ in range(copies):
            self._seq += 1
            at = now + self._delay()
            heapq.heappush(self._heap, (at, self._seq, flight))
            counter.in_flight += 1
            self._wake_by(at)

    async def _deliver_forever(self) -> None:
        heap = self._heap
        while True:
            # Sleeping yields, so receivers run before the next round, as on a
            # real network, even when the next message is due at once.
            await self._sleep_until(heap[0][0] if heap else math.inf)
            if heap and heap[0][0] <= trio.current_time():
                self._deliver_due()

    async def _sleep_until(self, deadline: float) -> None:
        """The delivery task's sleep; :meth:`_wake_by` brings its deadline forward."""
        with trio.CancelScope(deadline=deadline) as self._sleep:
            await trio.sleep_forever()
        self._sleep = None

    def _wake_by(self, at: float) -> None:
        sleep = self._sleep
        if sleep is not None and at < sleep.deadline:
            sleep.deadline = at

    def _deliver_due(self) -> None:
        now = trio.current_time()
        heap = self._heap
        batches: dict[tuple[NodeId, NodeId, bytes], list[_Flight]] = {}
        while heap and heap[0][0] <= now:
            f = heapq.heappop(heap)[2]
            f.counter.in_flight -= 1
            batches.setdefault((f.src, f.dst, f.incarnation), []).append(f)
        for (src, dst, incarnation), flights in batches.items():
            messages: list[AnyMessage] = []
            target = flights[0].target
            for f in flights:
                if f.target is not target or self._nodes.get(dst) is not target:
                    # Sent to an earlier incarnation: that connection is gone.
                    self._counts["unreachable"] += 1
                elif target._peers is not None and src not in target._peers:
                    # The WebSocket transport refuses a node that is not a peer.
                    self._counts["unreachable"] += 1
                elif self.is_blocked(src, dst):
                    self._counts["blocked"] += 1
                elif isinstance(f.payload, bytes):
                    messages += decode_frame(f.payload, max_size=self.max_frame)
                else:
                    messages.append(f.payload)
            if not messages:
                continue
            self._counts["delivered"] += len(messages)
            target._frames_in += 1
            target._counter(src).received += len(messages)
            if target._on_peer is not None:
                target._on_peer(src, incarnation)
            target._on_messages(src, messages)


class MemoryClientConnection(QueuedClientConnection):
    """Both ends of one client connection, in memory (tests).

    The server side is a :class:`~trioraft.transport.base.ClientConnection`
    (``receive``, ``send``, ``wait_writable``, ...); run a handler on it with
    :meth:`serve`.  The client side is :meth:`request` (send a frame of
    requests), :meth:`responses` (read the next frame of responses) and
    :meth:`hang_up`.  Frames go through the real codec both ways.

    Example::

        conn = MemoryClientConnection("app")
        nursery.start_soon(conn.serve, service.handle)
        conn.request(ClientRequest(1, "status"))
        [answer] = await conn.responses()
    """

    def __init__(
        self,
        client_id: str = "client",
        *,
        queue_size: int = DEFAULT_CLIENT_QUEUE_SIZE,
        queue_bytes: int = DEFAULT_CLIENT_QUEUE_BYTES,
        max_frame: int = DEFAULT_MAX_FRAME,
        remote: str = "memory",
    ) -> None:
        limits = QueueLimits(
            max_messages=queue_size, max_bytes=queue_bytes, budget=max_frame - FRAME_OVERHEAD
        )
        super().__init__(client_id, remote, limits, log)
        self.max_frame = max_frame
        self._requests_in, self._requests_out = trio.open_memory_channel[list[ClientRequest]](
            math.inf
        )
        self._dropped = False  # closed by the server: what was queued is lost

    def __repr__(self) -> str:
        return f"<memory client connection {self.client_id!r}>"

    # ------------------------------------------------------------------ server side

    async def receive(self) -> list[ClientRequest]:
        if self._closed:
            raise trio.EndOfChannel
        return await self._requests_out.receive()

    def close(self) -> None:
        """The server closes the connection: the handler is cancelled, queued responses lost."""
        self._dropped = True
        super().close()
        self._requests_in.close()

    async def serve(self, handler: ClientHandler) -> None:
        """Run ``handler`` on this connection as a transport would; returns when it does.

        The client then reads what the handler queued, and the end.
        """
        try:
            with self._scope:
                await handler(self)
        except trio.EndOfChannel:
            pass  # from receive(): the client hung up
        finally:
            self._queue.finish()
            self._closed = True
            self._requests_in.close()

    # ------------------------------------------------------------------ client side

    def request(self, *requests: ClientRequest) -> None:
        """Send one frame of requests (encoded and decoded by the codec)."""
        frame = encode_frame(list(requests))
        decoded = decode_frame(frame, max_size=self.max_frame)
        try:
            self._requests_in.send_nowait([m for m in decoded if isinstance(m, ClientRequest)])
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise trio.BrokenResourceError("the connection is closed") from None

    async def responses(self) -> list[ClientResponse]:
        """The next frame of responses: what is queued, up to a frame; waits for one.

        Raises:
            trio.EndOfChannel: the connection ended and nothing is left to
                read (or the server closed it: what was queued is lost).
        """
        q = self._queue
        if self._dropped:
            raise trio.EndOfChannel
        batch = [await q.channel.receive()]
        size = len(batch[0])
        while size < q.budget:
            try:
                data = q.channel.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            batch.append(data)
            size += len(data)
        if self._dropped:
            raise trio.EndOfChannel
        q.written(len(batch))
        out: list[ClientResponse] = []
        for data in batch:
            [m] = decode_frame(assemble_frame([data]), max_size=self.max_frame)
            assert isinstance(m, ClientResponse)
            out.append(m)
        return out

    def hang_up(self) -> None:
        """The client closes its end: the handler's ``receive`` ends after queued requests."""
        self._requests_in.close()
