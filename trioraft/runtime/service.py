"""The client service of a node: one receive loop per client connection.

Theory of operation
===================

A node answers its clients through one :class:`ClientService`, created
with the node (``serve_node(..., client_service=factory)`` calls
``factory(node)``), so a handler never runs before the node exists.  Whoever
runs the node registers a handler per request kind; there are four sorts:

* **writes** (:meth:`ClientService.on_write`): ``handler(session, request,
  done)`` runs in the receive loop and hands the request on (typically to
  ``Node.propose_nowait``), which calls ``done(result, error)`` once.  No task
  per request: a write costs a callback, however many are in flight.
* **calls** (:meth:`ClientService.on_call`): ``await handler(session,
  request) -> result`` runs in a task of the connection's nursery (reads,
  status, membership changes: things that wait).
* **batched calls** (:meth:`ClientService.on_batch`): ``await
  handler(session, requests) -> outcomes``, one task for the requests of
  that kind and consistency that came in one frame (reads: one read point
  for all, see ``Node.read_many``).  A frame of a busy connection carries
  dozens of requests; a task, a pending read and a quorum confirmation per
  request were most of a linearizable read's CPU on the leader.
* **streams** (:meth:`ClientService.on_stream`): ``handler(session,
  request)`` starts whatever it needs in ``session.nursery`` and answers
  itself, as many times as it likes; it ends with exactly one final response.

Writes and calls (batched or not) share a bound per connection
(``max_in_flight``): one over it is answered ``overloaded`` at once, without
running its handler.  Streams bound themselves (docstore: watches per
connection, backups per node).  A frame's requests are handed on in their
order, in slices of :data:`HAND_ON` with a scheduling point between two,
so the node replicates the first ones while the rest are checked.

Errors.  A handler fails by raising; the exception becomes the response
(:func:`error_response`).  Its class carries the wire code (a ``code`` class
attribute, inherited, see trioraft/runtime/errors.py), so a subclass answers
with its parent's code and TimeoutError with ``timeout``; an exception with an
``error_result`` attribute puts it in the response's ``result`` (docstore's
refused commands carry the engine's error result).  A request no handler is
registered for is ``bad_request``.  Every request gets exactly one final
response: a handler that raises before accepting its request is answered at
once, and an exception escaping a call's handler is its answer.

A ``check(session, request)`` hook (e.g. docstore's roles) runs before the
bound and the handler; ``connection_state(conn)`` gives each connection an
object of the application's (``session.state``), e.g. its running streams.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import trio

from trioraft.runtime.errors import NodeError, NotLeaderError, OverloadedError
from trioraft.transport.base import ClientConnection
from trioraft.transport.codec import MAX_CODE, MAX_TEXT
from trioraft.transport.messages import ClientRequest, ClientResponse

if TYPE_CHECKING:
    from trioraft.runtime.node import Node

__all__ = [
    "HAND_ON",
    "MAX_IN_FLIGHT",
    "BadRequestError",
    "BatchHandler",
    "CallHandler",
    "ClientService",
    "Done",
    "Outcome",
    "Session",
    "StreamHandler",
    "WriteHandler",
    "error_code",
    "error_response",
    "generic_service",
]

#: Writes and calls a connection may have unanswered at once; more are
#: answered ``overloaded`` at once (no task, no proposal).
MAX_IN_FLIGHT: Final = 1024

#: The receive loop yields after handing on this many requests of one frame.
#: Under load a frame carries hundreds (256 writers: about 250), and the
#: node's Raft loop, which persists and replicates what was proposed, runs
#: only when the loop yields: in slices, the first requests are on their way
#: to the followers, on the other core, while the next are checked.  256
#: docstore writers, writes/s against no slices (pairs run in turn): 1.075x
#: with 64 (five pairs), 1.115x with 128 (three), and 128 against 64 1.10x;
#: 32 was worse than 64 (each slice costs a Raft round and an fsync).  The
#: KV path, whose requests cost less to check: 1.02-1.03x.
HAND_ON: Final = 128

Done = Callable[[object, BaseException | None], None]
#: One request's answer from a :data:`BatchHandler`: ``(result, None)`` or ``(None, error)``.
Outcome = tuple[object, BaseException | None]


class BadRequestError(NodeError, ValueError):
    """The request is malformed or of a kind this node does not serve."""

    code = "bad_request"


class Session:
    """One client connection, as its handlers see it."""

    __slots__ = ("conn", "in_flight", "node", "nursery", "state")

    def __init__(self, node: Node, conn: ClientConnection, nursery: trio.Nursery, state: Any):
        self.node = node
        self.conn = conn
        #: Tasks of this connection (calls, streams); cancelled when it closes.
        self.nursery = nursery
        #: The application's per-connection object (``connection_state(conn)``).
        self.state = state
        #: Writes and calls not answered yet.
        self.in_flight = 0

    @property
    def client_id(self) -> str:
        """The id the client authenticated as."""
        return self.conn.client_id

    def answer(self, request_id: int, result: object, error: BaseException | None) -> None:
        """Send the final response of a write or call and give back its slot."""
        self.in_flight -= 1
        self.conn.send([_response(request_id, result, error)])

    def answer_all(self, requests: Sequence[ClientRequest], outcomes: Sequence[Outcome]) -> None:
        """:meth:`answer` each of ``requests`` with its outcome, in one go."""
        self.in_flight -= len(requests)
        self.conn.send(
            [
                _response(req.request_id, result, error)
                for req, (result, error) in zip(requests, outcomes, strict=True)
            ]
        )


def _response(request_id: int, result: object, error: BaseException | None) -> ClientResponse:
    if error is None:
        return ClientResponse(request_id, True, result)
    return error_response(request_id, error)


WriteHandler = Callable[[Session, ClientRequest, Done], None]
CallHandler = Callable[[Session, ClientRequest], Awaitable[object]]
StreamHandler = Callable[[Session, ClientRequest], None]
BatchHandler = Callable[[Session, Sequence[ClientRequest]], Awaitable[Sequence[Outcome]]]

_WRITE, _CALL, _STREAM, _BATCH = 0, 1, 2, 3


class ClientService:
    """Request kinds -> handlers, and the receive loop serving each connection.

    Example::

        def my_service(node: Node) -> ClientService:
            service = generic_service(node)
            service.on_call("ping", ping)  # async def ping(session, request) -> "pong"
            return service

        await serve_node(config, sm, client_service=my_service)
    """

    def __init__(
        self,
        node: Node,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        check: Callable[[Session, ClientRequest], None] | None = None,
        connection_state: Callable[[ClientConnection], Any] | None = None,
    ) -> None:
        self.node = node
        self.max_in_flight = max_in_flight
        self._check = check
        self._state = connection_state
        self._kinds: dict[str, tuple[int, Any]] = {}

    @property
    def kinds(self) -> tuple[str, ...]:
        """The request kinds served."""
        return tuple(self._kinds)

    def on_write(self, kind: str, handler: WriteHandler) -> None:
        """Serve ``kind`` with a callback: ``handler(session, request, done)``.

        ``done(result, error)`` must be called exactly once, unless the handler
        raises (then it must not be: the exception is the answer).
        """
        self._kinds[kind] = (_WRITE, handler)

    def on_call(self, kind: str, handler: CallHandler) -> None:
        """Serve ``kind`` in a task: ``await handler(session, request) -> result``."""
        self._kinds[kind] = (_CALL, handler)

    def on_batch(self, kind: str, handler: BatchHandler) -> None:
        """Serve ``kind`` in one task per frame: ``await handler(session, requests)``.

        ``requests`` are the requests of ``kind`` with one ``consistency``
        that one frame brought, in their order; the handler returns one
        :data:`Outcome` per request, in the same order.  If it raises, the
        exception is every one's answer.
        """
        self._kinds[kind] = (_BATCH, handler)

    def on_stream(self, kind: str, handler: StreamHandler) -> None:
        """Serve ``kind`` with ``handler(session, request)``, which answers by itself.

        It raises to refuse the request; otherwise it starts its task in
        ``session.nursery`` and sends the responses, the last one final.
        """
        self._kinds[kind] = (_STREAM, handler)

    async def handle(self, conn: ClientConnection) -> None:
        """Serve one connection until it closes (a transport ``ClientHandler``)."""
        async with trio.open_nursery() as nursery:
            state = self._state(conn) if self._state is not None else None
            session = Session(self.node, conn, nursery, state)
            while True:
                try:
                    batch = await conn.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError, trio.BrokenResourceError):
                    nursery.cancel_scope.cancel()
                    return
                batches: dict[tuple[str, str], list[ClientRequest]] = {}
                for i, req in enumerate(batch, 1):
                    self._dispatch(session, req, batches)
                    if i % HAND_ON == 0 and i < len(batch):
                        # Let the node persist and replicate what came so far
                        # while the rest of the frame waits its turn.
                        await trio.lowlevel.checkpoint()
                for requests in batches.values():
                    handler = self._kinds[requests[0].kind][1]
                    nursery.start_soon(self._call_batch, session, requests, handler)

    def _dispatch(
        self,
        session: Session,
        req: ClientRequest,
        batches: dict[tuple[str, str], list[ClientRequest]],
    ) -> None:
        rid = req.request_id
        try:
            entry = self._kinds.get(req.kind)
            if entry is None:
                raise BadRequestError(f"unknown request kind {req.kind!r}")
            if self._check is not None:
                self._check(session, req)
            sort, handler = entry
            if sort == _STREAM:
                handler(session, req)
                return
            if session.in_flight >= self.max_in_flight:
                raise OverloadedError(
                    f"at most {self.max_in_flight} requests in flight per connection"
                )
        except Exception as exc:  # refused before it started
            session.conn.send([error_response(rid, exc)])
            return
        session.in_flight += 1
        if sort == _BATCH:
            batches.setdefault((req.kind, req.consistency), []).append(req)
            return
        if sort == _CALL:
            session.nursery.start_soon(self._call, session, req, handler)
            return
        try:
            handler(session, req, lambda result, error: session.answer(rid, result, error))
        except Exception as exc:  # refused before it was accepted: answer now
            session.answer(rid, None, exc)

    @staticmethod
    async def _call(session: Session, req: ClientRequest, handler: CallHandler) -> None:
        try:
            result = await handler(session, req)
        except Exception as exc:  # every failure becomes the answer
            session.answer(req.request_id, None, exc)
        else:
            session.answer(req.request_id, result, None)

    @staticmethod
    async def _call_batch(
        session: Session, requests: list[ClientRequest], handler: BatchHandler
    ) -> None:
        try:
            outcomes = await handler(session, requests)
            if len(outcomes) != len(requests):
                raise RuntimeError(
                    f"{len(outcomes)} outcomes for {len(requests)} {requests[0].kind!r} requests"
                )
        except Exception as exc:  # every failure becomes the answer
            outcomes = [(None, exc)] * len(requests)
        session.answer_all(requests, outcomes)


# ============================================================ the generic kinds


def generic_service(node: Node) -> ClientService:
    """The service every node offers unless told otherwise: ``propose``, ``read``, ``status``."""
    service = ClientService(node)
    service.on_write("propose", _propose)
    service.on_batch("read", _read)
    service.on_call("status", _status)
    return service


def _propose(session: Session, req: ClientRequest, done: Done) -> None:
    if not isinstance(req.payload, bytes):
        raise BadRequestError("propose needs a bytes payload")
    session.node.propose_nowait(req.payload, done, client_id=req.client_id, sequence=req.sequence)


async def _read(session: Session, requests: Sequence[ClientRequest]) -> Sequence[Outcome]:
    return await session.node.read_many(
        [req.payload for req in requests], consistency=requests[0].consistency
    )


async def _status(session: Session, req: ClientRequest) -> object:
    return session.node.status().to_dict()


# ======================================================= errors on the wire


def error_code(exc: BaseException) -> str:
    """The stable error code of an exception (``"error"`` if unknown).

    An exception class names its own in a ``code`` class attribute (the
    runtime's errors do, see trioraft/runtime/errors.py), inherited by its
    subclasses; otherwise TimeoutError is ``timeout`` and ValueError and
    TypeError are ``bad_request``.
    """
    code = getattr(type(exc), "code", None)
    if isinstance(code, str) and 0 < len(code) <= MAX_CODE:
        return code
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ValueError | TypeError):
        return "bad_request"
    return "error"


def error_response(request_id: int, exc: BaseException) -> ClientResponse:
    """The ClientResponse for a failed request.

    The code comes from :func:`error_code`; ``not_leader`` carries where to
    retry; an ``error_result`` attribute of the exception becomes the
    response's ``result``.  The message is cut to the protocol's ``MAX_TEXT``
    characters (its start kept, the cut marked).  Codes are documented in
    docs/protocol.md ("Error codes").
    """
    message = _cut(str(exc) or type(exc).__name__)
    if isinstance(exc, NotLeaderError):
        return ClientResponse(
            request_id, False, None, "not_leader", message, exc.leader_id, exc.leader_address
        )
    return ClientResponse(
        request_id, False, getattr(exc, "error_result", None), error_code(exc), message
    )


def _cut(message: str) -> str:
    if len(message) <= MAX_TEXT:
        return message
    mark = f"... [cut: {len(message)} characters in all]"
    return message[: MAX_TEXT - len(mark)] + mark
