"""The response queue of one client connection, bounded in messages and in bytes.

Theory of operation
-------------------
A handler answers with :meth:`ResponseQueue.put`, which never blocks: the
response is encoded at once, so the queue knows the exact bytes it holds,
and an answer that cannot be encoded or would not fit a frame is replaced
by an error response (``internal``, ``too_large``) here, once for every
transport.  The writer (the WebSocket sender, or the reading end of an
in-memory connection) takes encoded responses from :attr:`ResponseQueue.channel`
and reports each batch it wrote with :meth:`ResponseQueue.written`.

``queued_bytes`` counts what was put and not yet written, the frame being
written included.  A client that does not read makes it grow; past
``max_bytes`` (or ``max_messages`` responses) :meth:`put` refuses and the
connection closes it rather than buffer without limit.  Requests with one
answer each cannot be slowed down, so that limit is the only defence; a
*stream* (a backup, a watch) can be: its producer awaits
:meth:`wait_writable` before each response, which returns once the queue
has drained to :attr:`low_water`, so a slow reader holds a stream back
instead of filling memory, and the hard limit is only reached by a client
that also piles up ordinary requests.

:class:`QueuedClientConnection` is what both transports' server-side client
connections (WebSocket and in-memory) build on: the queue, the connection's
identity, and closing on a client that does not read.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import Final, TypedDict

import trio

from trioraft.transport.codec import ProtocolError, encode_message
from trioraft.transport.messages import ClientResponse

__all__ = [
    "DEFAULT_CLIENT_QUEUE_BYTES",
    "DEFAULT_CLIENT_QUEUE_SIZE",
    "QueueLimits",
    "QueuedClientConnection",
    "ResponseQueue",
]

#: Responses queued per client connection before it is closed.
DEFAULT_CLIENT_QUEUE_SIZE: Final = 4096
#: Bytes of encoded responses queued per client connection before it is closed
#: (four maximum-size frames); streams wait at an eighth of it.
DEFAULT_CLIENT_QUEUE_BYTES: Final = 64 << 20


class QueueLimits(TypedDict):
    """The bounds of one :class:`ResponseQueue` (its keyword arguments of the same names)."""

    max_messages: int
    max_bytes: int
    budget: int


class ResponseQueue:
    """Encoded responses waiting to be written to one client.

    Args:
        max_messages: responses queued before :meth:`put` refuses.
        max_bytes: bytes queued before :meth:`put` refuses; at least
            ``budget`` (one response of the largest size must fit).
        budget: the largest encoded response a frame can carry.
        log: where encoding failures are reported.
        owner: names the connection in log lines.
    """

    def __init__(
        self,
        *,
        max_messages: int,
        max_bytes: int,
        budget: int,
        log: logging.Logger,
        owner: object,
    ) -> None:
        if max_messages < 1:
            raise ValueError("a client queue holds at least one response")
        if max_bytes < budget:
            raise ValueError(f"a client queue of {max_bytes} bytes cannot hold a frame ({budget})")
        self.max_bytes = max_bytes
        #: :meth:`wait_writable` returns once at most this many bytes are queued.
        self.low_water = max_bytes // 8
        self.budget = budget
        self._log = log
        self._owner = owner
        self._send, self.channel = trio.open_memory_channel[bytes](max_messages)
        self._sizes: deque[int] = deque()  # of what is queued, in order
        self._queued_bytes = 0
        self._waiters = trio.lowlevel.ParkingLot()
        self._closed = False

    @property
    def queued_bytes(self) -> int:
        """Bytes put and not yet written (the frame being written included)."""
        return self._queued_bytes

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, response: ClientResponse) -> bool:
        """Queue one response; False if it would overflow the queue (nothing queued).

        After :meth:`close` or :meth:`finish` responses are discarded (True).
        """
        if self._closed:
            return True
        data = self._encode(response)
        if self._queued_bytes + len(data) > self.max_bytes:
            return False
        try:
            self._send.send_nowait(data)
        except trio.WouldBlock:
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return True
        self._queued_bytes += len(data)
        self._sizes.append(len(data))
        return True

    def written(self, count: int) -> None:
        """The writer wrote the next ``count`` responses taken from :attr:`channel`."""
        for _ in range(min(count, len(self._sizes))):
            self._queued_bytes -= self._sizes.popleft()
        if self._queued_bytes <= self.low_water:
            self._waiters.unpark_all()

    async def wait_writable(self) -> None:
        """Wait until at most :attr:`low_water` bytes are queued.

        Raises:
            trio.BrokenResourceError: the queue was closed (the connection is
                gone), before or while waiting.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._closed and self._queued_bytes > self.low_water:
            await self._waiters.park()
        if self._closed:
            raise trio.BrokenResourceError("the client connection is closed")
        await trio.lowlevel.cancel_shielded_checkpoint()

    def finish(self) -> None:
        """No more responses: the writer drains what is queued, then sees the end."""
        self._send.close()

    def close(self) -> None:
        """The connection is gone: refuse further responses and wake the waiters."""
        self._closed = True
        self._send.close()
        self._waiters.unpark_all()

    def _encode(self, response: ClientResponse) -> bytes:
        try:
            data = encode_message(response)
        except (TypeError, ProtocolError) as exc:
            self._log.error(
                "%r: cannot encode the response to %d: %s", self._owner, response.request_id, exc
            )
            return encode_message(
                ClientResponse(response.request_id, False, None, "internal", str(exc)[:1000])
            )
        if len(data) > self.budget:
            self._log.warning(
                "%r: response %d too large for a frame", self._owner, response.request_id
            )
            return encode_message(
                ClientResponse(
                    response.request_id,
                    False,
                    None,
                    "too_large",
                    f"the response of {len(data)} bytes exceeds the frame limit",
                )
            )
        return data


class QueuedClientConnection:
    """The server side of a client connection whose responses wait in a :class:`ResponseQueue`.

    A :class:`~trioraft.transport.base.ClientConnection` but for ``receive``,
    which a subclass provides with the writer of the queue's
    :attr:`~ResponseQueue.channel`.  A subclass that owns more extends
    :meth:`close`.
    """

    def __init__(
        self, client_id: str, remote: str, limits: QueueLimits, log: logging.Logger
    ) -> None:
        self.client_id: Final = client_id
        self.remote: Final = remote
        self._log = log
        self._queue = ResponseQueue(**limits, log=log, owner=self)
        #: Cancels the handler when the connection closes.
        self._scope = trio.CancelScope()
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once the connection is gone (responses are then discarded)."""
        return self._closed

    @property
    def queued_bytes(self) -> int:
        return self._queue.queued_bytes

    @property
    def low_water(self) -> int:
        """Where :meth:`wait_writable` returns (bytes queued)."""
        return self._queue.low_water

    def send(self, responses: Sequence[ClientResponse]) -> None:
        if self._closed:
            return
        for response in responses:
            if not self._queue.put(response):
                self._log.warning(
                    "%r does not read its responses (%d queued, %d bytes); closing the connection",
                    self,
                    self._queue.channel.statistics().current_buffer_used,
                    self._queue.queued_bytes,
                )
                self.close()
                return

    async def wait_writable(self) -> None:
        await self._queue.wait_writable()

    def close(self) -> None:
        """Close the connection now: the handler is cancelled, queued responses are lost."""
        self._closed = True
        self._queue.close()
        self._scope.cancel()
