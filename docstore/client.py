"""The remote client: ``docstore.connect(addresses, token=...)``.

Theory of operation
-------------------
:class:`RemoteExecutor` is the executor behind a connected
:class:`~docstore.Database`, so the API is the embedded one.  It keeps one
multiplexed connection, to the leader once it knows which node that is; any
number of requests share it.  Queries are spread over ``connections`` of them
to that node (2 by default), the others opened once queries overlap:
closed-loop readers sharing one connection move in lock-step (one frame out,
one read point, one frame back, each process working on it in turn), and with
a second connection each cycle's frames are handled by two tasks on each side
(measured: 1.6x the local gets, 1.2x the lease gets; docs/benchmarks.md).
Writes keep to the first, where they batch best.  Every request is retried
until ``timeout`` runs out: on a lost connection, a ``not_leader`` answer (the
client switches to the leader it names, or tries the next address while an
election is under way) and on transient errors (``dropped``, ``rejected``,
``read_failed``, ``overloaded``, ``timeout``, ``closed``), with exponential
backoff from 20 ms to 1 s.

Exactly once.  A write carries a session, ``(client_id, sequence)``.  Each
``connect()`` picks a random id; because the state machine remembers one
sequence per session, concurrent writes use *lanes*: session
``"<id>.<lane>"``, at most one write in flight per lane, sequences
increasing per lane.  A retry reuses its lane and sequence, so if the first
attempt was applied the node answers with the recorded result instead of
applying it again.

Watches resume.  A watch remembers the last revision it yielded; when its
stream breaks (node lost, leader change, the stream fell behind) it watches
again on the leader ``since_rev`` that revision, and drops anything at or
below it.

Why this is one file past 600 lines: it owns the remote client, the
executor that holds the connection and retries (:class:`RemoteExecutor`),
the resuming watch (:class:`RemoteWatcher`), the admin and backup calls
(:class:`RemoteDatabase`) and :func:`connect`, and all of them go through
the executor's one connection and retry loop and raise the same errors.
The seam is :class:`RemoteDatabase` with the backup helpers (about 350
lines that only call the executor): they could be a module of their own,
and are not split yet.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, overload
from urllib.parse import unquote

import trio

from docstore.database import Database
from docstore.engine.errors import (
    DatabaseClosedError,
    DocstoreError,
    ResyncRequired,
    error_from_result,
    is_error,
    raise_for_result,
)
from docstore.engine.validate import must_measure, validate_command
from docstore.protocol import DEFAULT_CLIENT, OPEN_SESSION, SESSION_TTL_MS
from trioraft.client.connection import (
    ClientConnectionError,
    Connection,
    HandshakeError,
    NoListenerError,
    open_client_connection,
)
from trioraft.core.types import parse_address
from trioraft.transport.codec import encode_value
from trioraft.transport.messages import ClientRequest, ClientResponse

__all__ = [
    "BackupChunk",
    "BackupInterruptedError",
    "ClusterError",
    "ForbiddenError",
    "NotSupportedRemotely",
    "RemoteExecutor",
    "RemoteWatcher",
    "TlsError",
    "UnavailableError",
    "connect",
]

#: A lane unused for this long opens a new session rather than risk an expired one.
LANE_IDLE = SESSION_TTL_MS / 1000 / 2
_OPEN_SESSION = encode_value(OPEN_SESSION)

#: At most this many connections to the leader (``connect(connections=...)``).
MAX_CONNECTIONS = 16
#: After an extra connection failed to open, queries keep to the first for this long.
READER_RETRY = 1.0

#: Error codes worth retrying (the request had no effect, or a retry dedupes).
RETRY_CODES = frozenset(
    {"not_leader", "dropped", "rejected", "read_failed", "overloaded", "timeout", "closed"}
)


class ClusterError(DocstoreError):
    """The cluster refused a request (``code`` is the protocol's error code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code


class UnavailableError(ClusterError):
    """No node could answer within the timeout (all down, no leader, wrong address)."""

    def __init__(self, message: str) -> None:
        super().__init__("unavailable", message)


class ForbiddenError(ClusterError):
    """The client's role does not allow the request (docs/protocol.md, "Roles"); not retried."""

    def __init__(self, message: str) -> None:
        super().__init__("forbidden", message)


class NotSupportedRemotely(DocstoreError):
    """The embedded-only part of the API, on a connected database (docs/docstore.md says
    what to use instead)."""


class TlsError(ClusterError):
    """The client's TLS setting does not fit the node's (a plain client and a node that
    speaks TLS, or the other way round, or a certificate the client does not trust);
    not retried."""

    def __init__(self, address: str, message: str) -> None:
        super().__init__("tls", message)
        self.address = address


async def _tls_probe(address: str, ctx: ssl.SSLContext | None, limit: float) -> str | None:
    """None if ``address`` completes a TLS handshake under ``ctx`` (None: any
    certificate), else why not."""
    try:
        host, port = parse_address(address)
    except ValueError as exc:
        return str(exc)
    if ctx is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    with trio.move_on_after(limit):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except (OSError, ValueError) as exc:
            return str(exc)
        tls = trio.SSLStream(stream, ctx, server_hostname=host)
        try:
            await tls.do_handshake()
            return None
        except trio.BrokenResourceError as exc:
            return str(exc.__cause__ or exc) or "the connection closed"
        except (ssl.SSLError, OSError) as exc:
            return str(exc)
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(tls)
    return "no answer"


async def _tls_mismatch(address: str, ctx: ssl.SSLContext | None, limit: float) -> TlsError | None:
    """Why a connection to ``address`` closed during its opening, if TLS is the reason."""
    speaks_tls = await _tls_probe(address, None, limit) is None
    if ctx is None:
        if not speaks_tls:
            return None
        return TlsError(
            address,
            f"the node at {address} speaks TLS: connect with ssl_context="
            "ssl.create_default_context(cafile=CA) (the docstore command: --tls-ca CA)",
        )
    if not speaks_tls:
        return TlsError(
            address,
            f"the node at {address} does not speak TLS: connect without ssl_context "
            "(the docstore command: without --tls-ca)",
        )
    why = await _tls_probe(address, ctx, limit)
    if why is None:
        return None
    return TlsError(address, f"TLS with the node at {address} failed: {why}")


class BackupInterruptedError(ClusterError):
    """A backup stream broke after some chunks had arrived (it cannot resume midway;
    :meth:`RemoteDatabase.backup` to a file starts again on its own)."""

    def __init__(self, message: str) -> None:
        super().__init__("backup_interrupted", message)


@dataclass(frozen=True, slots=True)
class BackupChunk:
    """One piece of a backup, in order: ``data`` goes at ``offset`` of a ``size``-byte
    file.  The last (``done``) also carries the whole file's ``sha256`` (already
    checked by the client) and the Raft ``index`` and ``term`` it covers."""

    offset: int
    data: bytes
    size: int
    done: bool
    sha256: str = ""
    index: int = 0
    term: int = 0


def _backup_chunk(result: object) -> BackupChunk:
    try:
        assert isinstance(result, dict)
        return BackupChunk(
            offset=int(result["offset"]),
            data=bytes(result["data"]),
            size=int(result["size"]),
            done=bool(result["done"]),
            sha256=str(result.get("sha256", "")),
            index=int(result.get("index", 0)),
            term=int(result.get("term", 0)),
        )
    except (AssertionError, KeyError, TypeError, ValueError):
        raise ClusterError("bad_backup", f"malformed backup chunk {result!r:.80}") from None


def _response_error(resp: ClientResponse) -> DocstoreError:
    if resp.error_code == "bad_request" and is_error(resp.result):
        # Refused by the server's validation; the result names the precise error.
        return error_from_result(resp.result)  # type: ignore[arg-type]
    if resp.error_code in ("conflict", "not_found", "invalid", "resync_required", "closed"):
        return error_from_result(
            {"ok": False, "error": resp.error_code, "message": resp.error_message}
        )
    if resp.error_code == "forbidden":
        return ForbiddenError(resp.error_message)
    return ClusterError(resp.error_code, resp.error_message)


class _Link:
    """A connection and the task that holds it open."""

    def __init__(self, conn: Connection, done: trio.Event) -> None:
        self.conn = conn
        self.done = done


class _Retry:
    """One call's retries on a cluster, as the module docstring says.

    Every call that goes to the leader (a request, a watch, a read of the
    current revision, a backup) connects through :meth:`connect` and judges an
    error answer with :meth:`answered`; the call bounds the whole, be it with
    an overall timeout or a deadline for the next backup chunk (a cancel scope;
    :meth:`RemoteExecutor.request` passes its deadline down instead).
    """

    __slots__ = ("delay", "ex", "last", "refused")

    #: ``last`` before any failure.
    NO_ANSWER = "no answer"

    def __init__(self, ex: RemoteExecutor) -> None:
        self.ex = ex
        self.delay = 0.02
        #: The last failure, for the error raised when time runs out.
        self.last = self.NO_ANSWER
        # Addresses that refused since a node last answered: once that is all
        # of them no cluster is running, and waiting for the timeout helps nobody.
        self.refused: set[str] = set()

    async def backoff(self, deadline: float = math.inf) -> None:
        """Sleep the current delay (no later than ``deadline``), then double it up to 1 s."""
        await trio.sleep_until(min(trio.current_time() + self.delay, deadline))
        self.delay = min(self.delay * 2, 1.0)

    async def connect(self) -> _Link:
        """The connection to use, trying the addresses in turn until one answers."""
        ex = self.ex
        while True:
            try:
                link = await ex._get_link()
            except HandshakeError as exc:
                raise ClusterError("unauthorized", str(exc)) from None
            except NoListenerError as exc:
                self.refused.add(exc.address)
                if self.refused.issuperset(ex.addresses):
                    raise ex.nobody_listens() from None
                self.last = str(exc)
                continue  # the next address at once
            except (ClientConnectionError, OSError) as exc:
                self.last = str(exc)
                await self.backoff()
                continue
            self.refused.clear()
            return link

    def answered(self, link: _Link, resp: ClientResponse) -> bool:
        """Note the error answer ``resp``, and raise it unless it is worth retrying.

        Returns whether to retry at once: the node named the leader to go to.
        """
        self.last = f"{resp.error_code}: {resp.error_message}"
        if resp.error_code == "not_leader":
            self.ex._redirect(link, resp.leader_addr)
            return bool(resp.leader_addr)
        if resp.error_code not in RETRY_CODES:
            raise _response_error(resp)
        return False


class RemoteExecutor:
    """Runs command and query maps on a cluster (see the module docstring)."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        token: str | bytes,
        client: str = DEFAULT_CLIENT,
        cluster_id: str = "docstore",
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 2.0,
        connections: int = 2,
    ) -> None:
        if type(connections) is not int or not 1 <= connections <= MAX_CONNECTIONS:
            raise ValueError(f"connections: an integer in 1 .. {MAX_CONNECTIONS}")
        if isinstance(addresses, str):
            addresses = [a for a in addresses.split(",") if a]
        if not addresses:
            raise ValueError("connect needs at least one address")
        self.addresses = list(addresses)
        self.token = token
        self.client = client
        self.cluster_id = cluster_id
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        #: This client's session id; writes use ``f"{session}.{lane}"``.
        self.session = secrets.token_hex(8)
        # (lane's session id, last sequence, last used)
        self._lanes_free: list[tuple[str, int, float]] = []
        self._lanes = 0
        self._nursery: trio.Nursery | None = None
        self._link: _Link | None = None
        self._link_lock = trio.Lock()
        # The connections queries also use (``connections - 1``), to the node the
        # first one reaches; a slot being opened is in _opening.
        self._readers: list[_Link | None] = [None] * (connections - 1)
        self._opening: set[int] = set()
        self._preferred: str | None = None
        self._next_addr = 0
        self._closed = False
        self.last_error = ""

    # ----------------------------------------------------------- connection

    async def _run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def _open_connection(self, address: str) -> AbstractAsyncContextManager[Connection]:
        """A connection to ``address`` as this client (its token, cluster and TLS)."""
        return open_client_connection(
            address,
            cluster_id=self.cluster_id,
            client_id=self.client,
            token=self.token,
            ssl_context=self.ssl_context,
            connect_timeout=self.connect_timeout,
        )

    async def _hold(
        self, address: str, task_status: trio.TaskStatus[_Link] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with self._open_connection(address) as conn:
            link = _Link(conn, trio.Event())
            task_status.started(link)
            await link.done.wait()

    async def _connect(self, address: str) -> _Link:
        assert self._nursery is not None
        link: _Link = await self._nursery.start(self._hold, address)
        return link

    def _drop(self, link: _Link | None) -> None:
        if link is not None:
            link.done.set()
            if self._link is link:
                self._link = None
            readers = self._readers
            for i, r in enumerate(readers):
                if r is link:
                    readers[i] = None

    def _query_link(self, first: _Link) -> _Link:
        """The connection for the next query: of the open ones to the node ``first``
        reaches (the leader), the one with the fewest calls in flight.

        Closed-loop callers so fall into groups that keep to one connection each;
        a query sent round-robin instead splits every group over all
        connections (measured: fewer linearizable gets than one connection).
        A missing connection is opened in the background; meanwhile the others
        carry the queries.  A caller alone (nothing in flight on the first)
        never opens one: a one-shot command costs one connection.
        """
        best, least = first, first.conn.in_flight
        if not least:
            return first
        for slot, link in enumerate(self._readers):
            if link is not None and not link.conn.closed and link.conn.remote == first.conn.remote:
                n = link.conn.in_flight
                if n < least:
                    best, least = link, n
                continue
            self._drop(link)  # closed, or open to a node that is no longer the one
            if slot not in self._opening and self._nursery is not None and not self._closed:
                self._opening.add(slot)
                self._nursery.start_soon(self._open_reader, slot, first.conn.remote)
        return best

    async def _open_reader(self, slot: int, address: str) -> None:
        """Open the extra connection ``slot``; after a failure, not again for a while."""
        try:
            link = await self._connect(address)
        except Exception as exc:  # an extra connection never takes the client down
            self.last_error = str(exc)
            await trio.sleep(READER_RETRY)  # queries use the first connection meanwhile
        else:
            if self._closed:
                link.done.set()
            else:
                self._drop(self._readers[slot])
                self._readers[slot] = link
        finally:
            self._opening.discard(slot)

    def _live_link(self) -> _Link | None:
        """The current connection if it is open."""
        link = self._link
        return link if link is not None and not link.conn.closed else None

    async def _get_link(self) -> _Link:
        """The current connection, or a new one (preferred leader first)."""
        link = self._live_link()
        if link is not None:
            return link  # the common case: no lock, no checkpoint
        async with self._link_lock:
            link = self._link
            if link is not None and not link.conn.closed:
                return link
            self._drop(link)
            if self._preferred is not None:
                address, self._preferred = self._preferred, None
            else:
                address = self.addresses[self._next_addr % len(self.addresses)]
                self._next_addr += 1
            try:
                self._link = await self._connect(address)
            except HandshakeError:
                raise
            except (ClientConnectionError, OSError) as exc:
                self.last_error = str(exc)
                if not isinstance(exc, NoListenerError):
                    tls = await _tls_mismatch(address, self.ssl_context, self.connect_timeout)
                    if tls is not None:
                        raise tls from None
                raise
            return self._link

    def _redirect(self, link: _Link, leader_addr: str | None) -> None:
        if leader_addr and leader_addr != link.conn.remote:
            self._preferred = leader_addr
            if leader_addr not in self.addresses:
                self.addresses.append(leader_addr)
        self._drop(link)

    async def request(
        self,
        kind: str,
        payload: object = None,
        *,
        client_id: str = "",
        sequence: int = 0,
        consistency: str = "linearizable",
        limit: float | None = None,
        spread: bool = False,
    ) -> object:
        """Send one request to the leader, retrying as the module docstring says.

        ``spread``: the request may go on any of the connections to the leader
        (queries); otherwise it goes on the first.
        """
        if self._closed:
            raise DatabaseClosedError("the client is closed")
        limit = self.timeout if limit is None else limit
        req = ClientRequest(0, kind, payload, client_id, sequence, consistency)
        # Made at the first failure (fresh then as now): most requests have none.
        retry: _Retry | None = None
        # The deadline bounds every wait below without a cancel scope on the
        # common path (connected, answered): the connection enforces it on the
        # call, and only connecting enters a scope.
        deadline = trio.current_time() + limit
        while True:
            link = self._live_link()
            if link is None:
                retry = retry or _Retry(self)
                with trio.move_on_at(deadline):
                    link = await retry.connect()
                if link is None:
                    break
            if spread and self._readers:
                link = self._query_link(link)
            try:
                resp = await link.conn.call(req, deadline=deadline)
            except trio.TooSlowError:
                break
            except ClientConnectionError as exc:
                retry = retry or _Retry(self)
                retry.last = str(exc)
                self._drop(link)
            else:
                if resp.ok:
                    return resp.result
                retry = retry or _Retry(self)
                if retry.answered(link, resp):
                    continue
            await retry.backoff(deadline)
            if trio.current_time() >= deadline:
                break
        last = retry.last if retry is not None else _Retry.NO_ANSWER
        raise UnavailableError(f"no answer from the cluster within {limit}s ({last})")

    def nobody_listens(self) -> UnavailableError:
        """The error when every address refused the connection: no cluster is running."""
        return UnavailableError(
            f"no node at {', '.join(self.addresses)}: is `docstore cluster` running?"
        )

    async def request_node(self, address: str, kind: str, payload: object = None) -> object:
        """One request to the node at ``address`` itself (no redirects, no retries)."""
        assert self._nursery is not None
        with trio.fail_after(self.connect_timeout + 2):
            async with self._open_connection(address) as conn:
                resp = await conn.call(ClientRequest(0, kind, payload, consistency="local"))
        if not resp.ok:
            raise _response_error(resp)
        return resp.result

    # ------------------------------------------------------------- executor

    async def execute(self, cmd: dict[str, Any]) -> dict[str, Any]:
        # Encoded once, here: the node decodes it once to check it and proposes
        # these very bytes (docs/protocol.md, "The docstore service").
        data = encode_value(cmd, "command")
        if must_measure(len(data)):
            validate_command(cmd)  # a large command: measure its documents
        lane, seq = await self._take_lane()
        seq += 1
        keep = True
        try:
            result = await self.request("command", data, client_id=lane, sequence=seq)
            # A lane whose session the cluster no longer holds is never used again.
            keep = not (isinstance(result, dict) and result.get("error") == "session_expired")
        finally:
            # Even after a failure the sequence is spent: the next write on this
            # lane uses a higher one, so a late apply of this one cannot alias it.
            if keep:
                self._lanes_free.append((lane, seq, trio.current_time()))
        if not isinstance(result, dict):
            raise DocstoreError(f"malformed result {result!r}")
        return result

    async def _take_lane(self) -> tuple[str, int]:
        """A lane (its session id and last sequence): an idle one, or a new, registered one."""
        now = trio.current_time()
        while self._lanes_free:
            lane, seq, used = self._lanes_free.pop()
            if now - used < LANE_IDLE:
                return lane, seq
            # Idle long enough that the cluster may have expired its session: drop it.
        self._lanes += 1
        lane = f"{self.session}.{self._lanes}"
        await self.request("command", _OPEN_SESSION, client_id=lane)
        return lane, 0

    async def query(self, q: dict[str, Any]) -> Any:
        consistency = str(q.pop("consistency", "linearizable"))
        result = await self.request("query", q, consistency=consistency, spread=True)
        return raise_for_result(result)["value"]

    def watch(self, coll: str, flt: object, since_rev: int | None, buffer: int) -> RemoteWatcher:
        return RemoteWatcher(self, coll, flt, since_rev, buffer)

    async def aclose(self) -> None:
        self._closed = True
        self._drop(self._link)
        for link in list(self._readers):
            self._drop(link)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # ---------------------------------------------------------- cluster ops

    async def members(self) -> dict[str, Any]:
        result = await self.request("members")
        assert isinstance(result, dict)
        return result

    async def status(self) -> list[dict[str, Any]]:
        """Every member's status (``role: "unreachable"`` for a node that does not answer).

        Raises :class:`UnavailableError` if no node listens at any address.
        """
        unavailable: UnavailableError | None = None
        try:
            members = await self.members()
            addresses = {int(n): a for n, a in members["addresses"].items() if a}
        except UnavailableError as exc:
            unavailable = exc
            addresses = dict(enumerate(self.addresses, 1))
            members = None
        out: list[dict[str, Any]] = []
        refused = 0

        async def one(n: int, address: str) -> None:
            nonlocal refused
            try:
                st = await self.request_node(address, "status")
                assert isinstance(st, dict)
                out.append(st)
            except (Exception, trio.TooSlowError) as exc:
                refused += isinstance(exc, NoListenerError)
                out.append(
                    {
                        "node_id": n if members else None,
                        "address": address,
                        "role": "unreachable",
                        "error": str(exc) or type(exc).__name__,
                    }
                )

        async with trio.open_nursery() as nursery:
            for n, a in addresses.items():
                nursery.start_soon(one, n, a)
        if unavailable is not None and refused == len(addresses):
            raise unavailable  # no cluster is running: a table of refusals says less
        out.sort(key=lambda s: (s.get("node_id") or 0, s.get("address", "")))
        return out


class RemoteWatcher:
    """``async for change in watcher``: changes from the cluster, resumed across failures.

    The same interface as :class:`docstore.Watcher`.  Without ``since_rev``
    it starts at the revision current when the stream opens: on entering
    ``async with``, else at the first ``__anext__``.  Raises
    :class:`~docstore.ResyncRequired` if the cluster no longer holds the
    history needed to resume.
    """

    def __init__(
        self, ex: RemoteExecutor, coll: str, flt: object, since_rev: int | None, buffer: int
    ) -> None:
        self._ex = ex
        self.coll = coll
        self._flt = flt
        self.last_rev = since_rev
        self._buffer = buffer
        self._stack: AsyncExitStack | None = None
        self._responses: trio.MemoryReceiveChannel[ClientResponse] | None = None
        self._stream_link: _Link | None = None
        self._stream_id = 0
        self._closed = False

    def __aiter__(self) -> RemoteWatcher:
        return self

    async def _open(self) -> None:
        """(Re)start the stream on the leader from ``last_rev``."""
        ex = self._ex
        retry = _Retry(ex)
        with trio.move_on_after(ex.timeout):
            while True:
                await self._close_stream()
                link = await retry.connect()
                try:
                    payload = {
                        "coll": self.coll,
                        "filter": self._flt,
                        "since_rev": self.last_rev,
                        "buffer": self._buffer,
                    }
                    stack = AsyncExitStack()
                    responses = await stack.enter_async_context(
                        link.conn.stream(ClientRequest(0, "watch", payload), buffer=self._buffer)
                    )
                    self._stack, self._responses, self._stream_link = stack, responses, link
                    self._stream_id = link.conn._next_id
                    first = await responses.receive()
                except (ClientConnectionError, OSError, trio.EndOfChannel) as exc:
                    retry.last = str(exc) or "stream ended"
                else:
                    if first.ok:
                        if self.last_rev is None and isinstance(first.result, dict):
                            self.last_rev = int(first.result.get("rev", 0))
                        return
                    if first.error_code == "resync_required":
                        raise ResyncRequired(first.error_message)
                    if retry.answered(link, first):
                        continue
                await retry.backoff()
        raise UnavailableError(f"cannot watch: no answer within {ex.timeout}s ({retry.last})")

    async def __anext__(self) -> dict[str, Any]:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._responses is None:
                await self._open()
                # Watch on the leader: it is the most current replica.
            assert self._responses is not None
            try:
                resp = await self._responses.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                self._responses = None
                continue  # the connection broke or we fell behind: resume
            if not resp.ok:
                if resp.error_code == "resync_required":
                    raise ResyncRequired(resp.error_message)
                self._responses = None  # the node is stopping, or similar: resume
                continue
            change = resp.result.get("change") if isinstance(resp.result, dict) else None
            if not isinstance(change, dict):
                continue
            rev = int(change.get("rev", 0))
            if self.last_rev is not None and rev <= self.last_rev:
                continue  # already seen (a replica catching up, or a resumed stream)
            self.last_rev = rev
            return change

    async def _close_stream(self) -> None:
        stack, link, rid = self._stack, self._stream_link, self._stream_id
        self._stack = self._responses = self._stream_link = None
        if stack is not None:
            await stack.aclose()
        if link is not None and not link.conn.closed:
            # Best effort: tell the node to stop streaming to us.
            with suppress(trio.WouldBlock, ClientConnectionError):
                cancel = ClientRequest(link.conn.next_request_id(), "cancel", {"request_id": rid})
                link.conn.send([cancel], discard_responses=True)

    async def aclose(self) -> None:
        self._closed = True
        with trio.CancelScope(shield=True):
            await self._close_stream()

    async def __aenter__(self) -> RemoteWatcher:
        # Start watching now, so "from now" means when the block was entered.
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class RemoteDatabase(Database):
    """A :class:`~docstore.Database` connected to a cluster, plus cluster operations."""

    _executor: RemoteExecutor

    def __init__(self, executor: RemoteExecutor) -> None:
        super().__init__(executor)
        self._executor = executor

    @property
    def client(self) -> RemoteExecutor:
        return self._executor

    async def status(self) -> list[dict[str, Any]]:
        """Each member's ``node_id, address, role, term, commit_index, applied_index, ...``."""
        return await self._executor.status()

    async def members(self) -> dict[str, Any]:
        """``voters``, ``learners``, ``addresses`` and ``leader_id``, from the leader."""
        return await self._executor.members()

    async def add_node(self, node_id: int, address: str, *, promote: bool = True) -> None:
        """Add a node (started with ``docstore serve --join``) as a learner, then promote it
        once it has caught up."""
        ex = self._executor
        await ex.request("add_learner", {"id": node_id, "address": address})
        if not promote:
            return
        with trio.fail_after(ex.timeout):
            while True:
                try:
                    await ex.request("promote", {"id": node_id})
                    return
                except ClusterError as exc:
                    if exc.code != "not_caught_up":
                        raise
                await trio.sleep(0.2)

    async def remove_node(self, node_id: int) -> None:
        await self._executor.request("remove_node", {"id": node_id})

    async def transfer_leader(self, target: int | None = None) -> int:
        result = await self._executor.request("transfer_leader", {"target": target})
        assert isinstance(result, int)
        return result

    async def snapshot(self) -> dict[str, Any]:
        """Have the leader snapshot now (and compact its log)."""
        result = await self._executor.request("snapshot")
        assert isinstance(result, dict)
        return result

    async def compact(self) -> None:
        """Compact the cluster: the leader snapshots its state and drops the log
        before it (:meth:`snapshot`; followers compact on their own schedule).
        Needs the ``admin`` role (:class:`ForbiddenError` otherwise)."""
        await self.snapshot()

    @property
    def rev(self) -> int:
        """Not on a connected database: it raises :class:`NotSupportedRemotely`.

        Embedded, ``rev`` is a local counter read without I/O; a cluster's
        current revision needs a round trip: ``await db.current_rev()``.
        """
        raise NotSupportedRemotely(
            "db.rev is the embedded database's; on a connected database use "
            "`await db.current_rev()`"
        )

    async def current_rev(self) -> int:
        """The cluster's current revision: the leader's applied log index after a
        linearizable read barrier.  Every write acknowledged before the call has a
        ``_rev`` at or below it, and ``watch(since_rev=it)`` starts here.  (In a
        cluster revisions are log indexes, so it also counts entries that changed
        no document.)"""
        ex = self._executor
        barrier = ClientRequest(0, "query", {"op": "collections"}, consistency="linearizable")
        status = ClientRequest(0, "status", None, consistency="local")
        retry = _Retry(ex)
        with trio.move_on_after(ex.timeout):
            while True:
                link = await retry.connect()
                try:
                    # Both on one connection, so one node: its applied index only grows,
                    # and after the barrier it covers every acknowledged write.
                    resp = await link.conn.call(barrier)
                    if resp.ok:
                        resp = await link.conn.call(status)
                except (ClientConnectionError, OSError) as exc:
                    retry.last = str(exc)
                    ex._drop(link)
                else:
                    if resp.ok and isinstance(resp.result, dict):
                        return int(resp.result["applied_index"])
                    if retry.answered(link, resp):
                        continue
                await retry.backoff()
        raise UnavailableError(f"no answer from the cluster within {ex.timeout}s ({retry.last})")

    @asynccontextmanager
    async def backup_stream(
        self, *, stall_timeout: float = 30.0
    ) -> AsyncIterator[AsyncIterator[BackupChunk]]:
        """The leader's state as a snapshot file, as :class:`BackupChunk` s in order.

        ``async with db.backup_stream() as chunks: async for chunk in chunks: ...``.
        The snapshot is taken after a linearizable read barrier (every write
        acknowledged before is in it).  There is no overall timeout: until the
        first chunk the request is retried (leader changes, lost connections)
        and fails with :class:`UnavailableError` once ``stall_timeout`` seconds
        pass without a chunk, as it does between any two chunks.  A stream that
        breaks after the first chunk raises :class:`BackupInterruptedError`; the
        last chunk's ``sha256`` is checked against the bytes received.
        """
        gen = self._backup_chunks(stall_timeout)
        try:
            yield gen
        finally:
            with trio.CancelScope(shield=True):
                await gen.aclose()

    async def _backup_chunks(self, stall_timeout: float) -> AsyncGenerator[BackupChunk, None]:
        ex = self._executor
        retry = _Retry(ex)
        deadline = trio.current_time() + stall_timeout  # for the next chunk

        def stalled() -> UnavailableError:
            return UnavailableError(f"backup: no chunk for {stall_timeout}s ({retry.last})")

        while True:
            link: _Link | None = None
            with trio.move_on_at(deadline):
                link = await retry.connect()
            offset = 0
            at_once = False
            if link is not None:
                digest = hashlib.sha256()
                try:
                    async with link.conn.stream(ClientRequest(0, "backup"), buffer=16) as chunks:
                        while True:
                            resp: ClientResponse | None = None
                            with trio.move_on_at(deadline):
                                resp = await chunks.receive()
                            if resp is None:
                                if offset:
                                    ex._drop(link)  # the node may still be sending
                                raise stalled()
                            if not resp.ok:
                                if offset:
                                    raise BackupInterruptedError(
                                        f"at byte {offset}: {resp.error_code}: {resp.error_message}"
                                    )
                                at_once = retry.answered(link, resp)
                                break
                            chunk = _backup_chunk(resp.result)
                            if chunk.offset != offset:
                                raise ClusterError(
                                    "bad_backup", f"chunk at {chunk.offset}, expected {offset}"
                                )
                            digest.update(chunk.data)
                            offset += len(chunk.data)
                            if chunk.done and digest.hexdigest() != chunk.sha256:
                                raise ClusterError(
                                    "bad_backup", "the bytes received do not match the sha256"
                                )
                            yield chunk
                            if chunk.done:
                                return
                            deadline = trio.current_time() + stall_timeout
                except (ClientConnectionError, trio.EndOfChannel) as exc:
                    ex._drop(link)
                    if offset:
                        raise BackupInterruptedError(
                            f"at byte {offset}: {exc or 'the connection closed'}"
                        ) from None
                    retry.last = str(exc) or "the connection closed"
            if trio.current_time() >= deadline:
                raise stalled()
            if not at_once:
                await retry.backoff(deadline)

    @overload
    async def backup(
        self,
        path: None = None,
        *,
        stall_timeout: float = ...,
        progress: Callable[[int, int], None] | None = ...,
    ) -> bytes: ...

    @overload
    async def backup(
        self,
        path: str | os.PathLike[str],
        *,
        stall_timeout: float = ...,
        progress: Callable[[int, int], None] | None = ...,
    ) -> dict[str, Any]: ...

    async def backup(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        stall_timeout: float = 30.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> bytes | dict[str, Any]:
        """A backup of the cluster (see :meth:`backup_stream`).

        With ``path`` it is written to disk as the chunks arrive (``PATH.tmp``,
        fsynced, renamed over ``path``, directory fsynced), started again if the
        stream breaks midway, and the answer is ``{"file", "bytes", "index",
        "term", "sha256"}``; without, the whole file comes back as ``bytes``
        (held in memory: for small databases).  ``progress(received, size)`` is
        called after each chunk.
        """
        if path is None:
            parts: list[bytes] = []
            async with self.backup_stream(stall_timeout=stall_timeout) as chunks:
                async for chunk in chunks:
                    parts.append(chunk.data)
                    if progress is not None:
                        progress(chunk.offset + len(chunk.data), chunk.size)
            return b"".join(parts)
        target = os.fspath(path)
        for attempt in range(1, BACKUP_ATTEMPTS + 1):
            try:
                return await _backup_to_file(self, target, stall_timeout, progress)
            except BackupInterruptedError:
                if attempt == BACKUP_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    async def node_digests(self) -> dict[int, dict[str, Any]]:
        """Each reachable member's state digest and applied index (for checks)."""
        members = await self.members()
        out: dict[int, dict[str, Any]] = {}
        for n, a in members["addresses"].items():
            try:
                d = await self._executor.request_node(a, "digest")
            except (Exception, trio.TooSlowError):
                continue
            assert isinstance(d, dict)
            out[int(n)] = d
        return out


#: How many times :meth:`RemoteDatabase.backup` to a file starts a broken stream again.
BACKUP_ATTEMPTS = 3


async def _backup_to_file(
    db: RemoteDatabase,
    path: str,
    stall_timeout: float,
    progress: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    from docstore.storage.records import fsync_dir

    tmp = path + ".tmp"
    done = False
    last: BackupChunk | None = None
    try:
        async with await trio.open_file(tmp, "wb") as f:
            async with db.backup_stream(stall_timeout=stall_timeout) as chunks:
                async for chunk in chunks:
                    await f.write(chunk.data)
                    await f.flush()
                    if progress is not None:
                        progress(chunk.offset + len(chunk.data), chunk.size)
                    last = chunk
            await trio.to_thread.run_sync(os.fsync, f.fileno())
        await trio.to_thread.run_sync(os.replace, tmp, path)
        await trio.to_thread.run_sync(fsync_dir, os.path.dirname(path) or ".")
        done = True
    finally:
        if not done:
            with trio.CancelScope(shield=True), suppress(FileNotFoundError):
                await trio.to_thread.run_sync(os.unlink, tmp)
    assert last is not None and last.done
    return {
        "file": path,
        "bytes": last.size,
        "index": last.index,
        "term": last.term,
        "sha256": last.sha256,
    }


#: ``docstore://TOKEN@host:port,host:port`` (the token part is optional).
URI_SCHEME = "docstore://"


def _target(
    addresses: Sequence[str] | str | None,
    token: str | bytes | None,
    cluster: str | os.PathLike[str] | None,
    cluster_id: str | None,
) -> tuple[list[str], str | bytes, str, str | None]:
    """(addresses, token, cluster_id, CA file) as :func:`connect` documents, in the CLI's
    order."""
    if isinstance(addresses, str) and addresses.startswith(URI_SCHEME):
        rest = addresses[len(URI_SCHEME) :]
        uri_token, at, rest = rest.rpartition("@")
        if at:
            if token is not None and token != unquote(uri_token):
                raise ValueError("connect: two different tokens (the URI's and token=)")
            token = unquote(uri_token)
        addresses = rest
    if isinstance(addresses, str):
        addresses = [a for a in addresses.split(",") if a]
    found = list(addresses or [])
    token = token or os.environ.get("DOCSTORE_TOKEN")
    tls_ca: str | None = None
    if cluster is not None:
        from docstore.clusterfile import CLUSTER_FILE, read_cluster_file

        info = read_cluster_file(os.fspath(cluster))
        if info is None:
            where = os.path.join(os.fspath(cluster), CLUSTER_FILE)
            raise ValueError(f"no {where}: is it the --dir of a `docstore cluster`?")
        found = found or [str(a) for _, a in sorted(info.get("nodes", {}).items())]
        token = token or info.get("token")
        cluster_id = cluster_id or info.get("cluster_id")
        # Nodes that speak TLS: trust what they trust each other with.
        tls_ca = info.get("tls_ca") or info.get("tls_cert")
    if not found:
        raise ValueError("connect needs addresses, a docstore:// URI or cluster=DIR")
    if not token:
        raise ValueError(
            "connect needs a token: token=, a docstore://TOKEN@... URI, "
            "DOCSTORE_TOKEN in the environment, or cluster=DIR"
        )
    return found, token, str(cluster_id or "docstore"), tls_ca


@asynccontextmanager
async def connect(
    addresses: Sequence[str] | str | None = None,
    *,
    token: str | bytes | None = None,
    cluster: str | os.PathLike[str] | None = None,
    client: str = DEFAULT_CLIENT,
    cluster_id: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    call_timeout: float = 30.0,
    connect_timeout: float = 2.0,
    connections: int = 2,
) -> AsyncIterator[RemoteDatabase]:
    """Connect to a docstore cluster; the database has the embedded API.

    ``addresses`` are some of the nodes (``"host:port"``, a list or a
    comma-separated string), or a URI ``"docstore://TOKEN@host:port,host:port"``;
    the client finds the leader.  The token is, first found: ``token``, the
    URI's, ``DOCSTORE_TOKEN`` in the environment, the ``cluster.toml`` of
    ``cluster``, the directory of a ``docstore cluster`` (which also gives
    the addresses and ``cluster_id`` when not passed, and, if its nodes speak
    TLS, the CA to verify them with when ``ssl_context`` is not passed).
    ``ssl_context`` (e.g. ``ssl.create_default_context(cafile=CA)``) speaks TLS
    to the nodes; a mismatch (a plain client and TLS nodes, or the reverse, or
    a certificate the context does not trust) raises :class:`TlsError` at
    once.  ``call_timeout`` bounds each call, retries included; it then raises
    :class:`UnavailableError`, at once if every address refuses the connection.
    ``connections`` (1 to 16): how many connections to the leader queries are
    spread over; writes use the first.

    Example:
        async with docstore.connect(["127.0.0.1:7101"], token=TOKEN) as db:
            users = db.collection("users")
            rev = await users.put("ann", {"age": 31})
            ann = await users.get("ann", consistency="lease")

        async with docstore.connect(cluster="docstore-data") as db: ...
        async with docstore.connect("docstore://TOKEN@127.0.0.1:7101,127.0.0.1:7102") as db: ...
    """
    addresses, token, cluster_id, tls_ca = _target(addresses, token, cluster, cluster_id)
    if ssl_context is None and tls_ca:
        ssl_context = ssl.create_default_context(cafile=tls_ca)
    ex = RemoteExecutor(
        addresses,
        token=token,
        client=client,
        cluster_id=cluster_id,
        ssl_context=ssl_context,
        timeout=call_timeout,
        connect_timeout=connect_timeout,
        connections=connections,
    )
    body_exc: BaseException | None = None
    async with trio.open_nursery() as nursery:
        await nursery.start(ex._run)
        db = RemoteDatabase(ex)
        try:
            yield db
        except BaseException as exc:
            # Re-raised outside the nursery: the caller sees its own exception,
            # not a group wrapping it.
            body_exc = exc
        finally:
            await ex.aclose()
    if body_exc is not None:
        raise body_exc
