"""The transport interface the runtime programs against.

Theory of operation
-------------------
A transport moves :data:`~trioraft.transport.messages.AnyMessage` values
between nodes and never makes the Raft loop wait:

* :meth:`Transport.send` is synchronous and never blocks.  It queues the
  message for the destination's sender task; when that bounded queue is full
  (the peer is slow, down or partitioned) the message is dropped and counted.
  Raft tolerates loss: heartbeats, retries and probes resend what matters.
* Incoming messages are handed to the synchronous ``on_messages(src, batch)``
  callback, one call per received frame, in the order they arrived on that
  connection.  The callback must not block (the runtime enqueues with
  ``send_nowait``); while it runs the receiver does not read the socket.
* Only authenticated peers' messages reach ``on_messages``, and only
  messages whose ``src`` is the authenticated peer and whose ``dst`` is us.
* Before each batch, ``on_peer(src, incarnation)`` (when given) names the
  data directory the peer presented in the handshake of the connection the
  batch came on, so the runtime attributes every message to an incarnation.

Two implementations exist: :mod:`trioraft.transport.websocket` (real
sockets) and :mod:`trioraft.transport.memory` (tests, with fault injection).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from trioraft.core.types import NodeId
from trioraft.transport.messages import AnyMessage, ClientRequest, ClientResponse

__all__ = [
    "ClientConnection",
    "ClientHandler",
    "OnMessages",
    "OnPeer",
    "PeerStatistics",
    "TokenLookup",
    "Transport",
    "TransportStatistics",
]

OnMessages = Callable[[NodeId, list[AnyMessage]], None]
"""``on_messages(src, messages)``: called for every received batch.  Must not block."""

OnPeer = Callable[[NodeId, bytes], None]
"""``on_peer(src, incarnation)``: the next batch from ``src`` comes from this data directory."""

TokenLookup = Callable[[str], bytes | None]
"""``lookup(client_id)`` returns the client's token (the handshake key) or None if unknown."""


@dataclass(frozen=True, slots=True)
class PeerStatistics:
    """Counters for one outbound peer.

    ``sent`` and ``dropped`` count messages; ``dropped`` covers a full queue,
    a message too large for one frame and messages lost with a broken
    connection.  ``connected`` is our authenticated outbound connection,
    ``inbound`` the peer's authenticated connection to us.
    """

    address: str
    connected: bool
    inbound: bool
    queued: int
    sent: int
    dropped: int
    received: int
    connects: int


@dataclass(frozen=True, slots=True)
class TransportStatistics:
    """A snapshot of a transport's counters (:meth:`Transport.statistics`).

    ``frames_in``/``frames_out`` count peer frames; ``bad_frames`` frames
    rejected after authentication (undecodable, oversized, from the wrong
    sender, text); ``handshakes_rejected`` failed handshakes in either
    direction; ``dropped_unknown`` sends to a node that is not a peer;
    ``clients`` open client connections.
    """

    peers: Mapping[NodeId, PeerStatistics] = field(default_factory=dict)
    frames_in: int = 0
    frames_out: int = 0
    bad_frames: int = 0
    handshakes_rejected: int = 0
    dropped_unknown: int = 0
    clients: int = 0
    client_frames_in: int = 0
    client_frames_out: int = 0
    #: Client connections accepted since the start (``clients`` is those open now).
    clients_accepted: int = 0
    #: Bytes of peer frames received and of encoded messages sent to peers.
    bytes_in: int = 0
    bytes_out: int = 0
    #: Bytes of client frames received and of encoded responses sent.
    client_bytes_in: int = 0
    client_bytes_out: int = 0


class Transport(Protocol):
    """What the runtime needs from a transport."""

    def send(self, dst: NodeId, message: AnyMessage) -> None:
        """Queue ``message`` for ``dst``; never blocks.

        Dropped (and counted) when ``dst`` is not a peer or its queue is full.
        """
        ...

    def set_peers(self, peers: Mapping[NodeId, str]) -> None:
        """Replace the peer set (``{node_id: "host:port"}``); our own id is ignored.

        New peers get a sender, removed peers lose theirs (queued messages are
        dropped) and their inbound connections are closed; a changed address
        makes the sender redial.
        """
        ...

    def statistics(self) -> TransportStatistics:
        """Current counters."""
        ...


class ClientConnection(Protocol):
    """The server side of one authenticated client connection.

    Requests are read by the handler, responses may be sent from any task.
    """

    @property
    def client_id(self) -> str:
        """The id the client authenticated as."""
        ...

    @property
    def remote(self) -> str:
        """The client's address, for logs."""
        ...

    async def receive(self) -> list[ClientRequest]:
        """The requests of the next frame.

        Raises:
            trio.EndOfChannel: the connection closed (by the client, a bad
                frame, an overflowing response queue or the transport closing).
        """
        ...

    @property
    def closed(self) -> bool:
        """True once the connection is gone (responses are then discarded)."""
        ...

    @property
    def queued_bytes(self) -> int:
        """Bytes of responses queued and not yet written to the client."""
        ...

    def send(self, responses: Sequence[ClientResponse]) -> None:
        """Queue responses; never blocks.

        The connection's sender coalesces everything queued into one frame.
        The queue is bounded in responses and in bytes (encoded size): if the
        client does not read and either bound is exceeded, the connection is
        closed instead of buffering without limit.  Responses sent after the
        connection closed are discarded.
        """
        ...

    async def wait_writable(self) -> None:
        """Wait until the queue has drained to its low-water mark.

        A producer of a stream (many responses to one request) awaits this
        before each response, so a client that reads slowly holds the stream
        back instead of making the node buffer it.

        Raises:
            trio.BrokenResourceError: the connection closed, before or while
                waiting.
        """
        ...


ClientHandler = Callable[[ClientConnection], Awaitable[None]]
"""Runs once per authenticated client connection; the connection closes when it returns."""
