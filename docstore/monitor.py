"""A node's HTTP port for operators: metrics, health, status and a live page.

What this module owns
---------------------
``docstore serve --http HOST:PORT`` runs :func:`serve_monitor` beside the
node, in the node's Trio run (no thread).  It answers GET (and HEAD) on:

=============  ==============================================================
``/metrics``   Prometheus text format (``trioraft_*`` families, see
               docs/operations.md, "Monitoring")
``/healthz``   200 while the process serves
``/readyz``    200 when this node is a member, knows a leader and has applied
               what it knows committed (within :data:`READY_MAX_APPLY_LAG`);
               503 with the reason otherwise
``/status``    this node's entry of ``docstore status --json``
``/cluster``   every member's HTTP address, for the page
``/history``   this node's samples of the last minutes (role, term, leader,
               commit, applied), for the page's charts
``/``          the status page: every node, charts, updating by itself
=============  ==============================================================

The HTTP server is a small strict HTTP/1.1 server on Trio streams written
here, not a dependency: it reads one request head of at most
:data:`MAX_HEAD` bytes within :data:`REQUEST_TIMEOUT` seconds, answers it
and closes the connection (``Connection: close``; no keep-alive, no
request bodies, no chunked input).  Anything else gets 400, 405, 404, 408
or 431 and the connection closes; no request can stop the node (every
error ends in this connection's handler).  At most
:data:`MAX_CONNECTIONS` are served at once; more get 503.

The port has no authentication: it shows indices and addresses, never
documents or tokens.  Bind it to 127.0.0.1 or a monitoring network.
``/status``, ``/cluster`` and ``/history`` allow any origin (CORS), so the
page served by one node can poll the others.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from docstore.monitor_page import PAGE
from trioraft.core.types import parse_address
from trioraft.runtime import Node, NodeClosedError
from trioraft.runtime.metrics import node_metrics

log = logging.getLogger("docstore.monitor")

#: The largest request head (request line and headers) read, in bytes.
MAX_HEAD = 8192
#: Most header lines in one request.
MAX_HEADERS = 64
#: Seconds a client has to send its request and read the answer.
REQUEST_TIMEOUT = 5.0
#: Seconds an error answer waits for the client to stop sending (see ``_linger``).
LINGER_SECONDS = 1.0
#: Connections served at once; more are answered 503 at once.
MAX_CONNECTIONS = 64
#: ``/readyz`` allows applied to trail commit by this many entries (a busy
#: node's apply task is always a batch behind; more means it is catching up).
READY_MAX_APPLY_LAG = 1000
#: Seconds between the samples ``/history`` keeps, and how many it keeps.
SAMPLE_INTERVAL = 1.0
HISTORY_SAMPLES = 600

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class HttpError(Exception):
    """A request this server refuses; ``status`` is the answer's code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: Mapping[str, str]


def parse_request(head: bytes) -> Request:
    """Parse a request head (everything before the blank line), strictly.

    Raises:
        HttpError: 400 (malformed), 405 (a method other than GET or HEAD).
    """
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "the request head is not ASCII") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise HttpError(400, "the request line is not METHOD TARGET VERSION")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(400, f"unsupported version {version[:20]!r}")
    if not method or not set(method) <= _TOKEN:
        raise HttpError(400, "bad method")
    if not target.startswith("/") or not target.isprintable():
        raise HttpError(400, "the target must be a path starting with /")
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} header lines")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or not set(name) <= _TOKEN:
            raise HttpError(400, "a malformed header line")
        key = name.lower()
        if key in headers and key == "host":
            raise HttpError(400, "more than one Host header")
        headers[key] = value.strip(" \t")
    if version == "HTTP/1.1" and "host" not in headers:
        raise HttpError(400, "an HTTP/1.1 request needs a Host header")
    if "transfer-encoding" in headers or headers.get("content-length", "0") != "0":
        raise HttpError(400, "requests with a body are not accepted")
    if method not in ("GET", "HEAD"):
        raise HttpError(405, f"{method} is not allowed; use GET")
    return Request(method, target.partition("?")[0], headers)


def response(
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    *,
    head_only: bool = False,
    extra: Mapping[str, str] | None = None,
) -> bytes:
    headers = {
        "Content-Type": content_type,
        "Content-Length": str(len(body)),
        "Cache-Control": "no-store",
        "Connection": "close",
        **(extra or {}),
    }
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    out = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return out if head_only else out + body


async def _read_head(stream: trio.abc.Stream) -> bytes:
    buf = bytearray()
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            return bytes(buf[:end])
        if len(buf) > MAX_HEAD:
            raise HttpError(431, f"request head over {MAX_HEAD} bytes")
        data = await stream.receive_some(4096)
        if not data:
            raise HttpError(400, "the connection closed before the request ended")
        buf += data


async def _linger(stream: trio.abc.Stream) -> None:
    """After an error answer: end our side, then read what the client still sends.

    Closing a socket with unread input resets the connection, and the reset
    can destroy the answer before the client reads it (a head over the
    limit, a body we did not read).  Bounded in time and bytes.
    """
    if isinstance(stream, trio.SocketStream):
        await stream.send_eof()
    with trio.move_on_after(LINGER_SECONDS):
        drained = 0
        while drained < MAX_HEAD * 32:
            data = await stream.receive_some(65536)
            if not data:
                return
            drained += len(data)


def basic_status(node: Node) -> dict[str, Any]:
    """``/status`` of a bare trioraft node; ``docstore serve`` passes its own
    (``docstore.server.node_status``, the ``status`` request's answer)."""
    st = node.statistics()
    return {
        **node.status().to_dict(),
        "address": node.config.address,
        "lag": {str(n): pr.lag for n, pr in st.peers.items()},
    }


def readiness(node: Node) -> tuple[bool, str]:
    """``(ready, reason)``: see ``/readyz`` in this module's docstring."""
    try:
        st = node.status()
    except NodeClosedError:
        return False, "the node stopped"
    if node.id not in st.voters and node.id not in st.learners:
        return False, f"node {node.id} is not a member of the cluster (yet)"
    if st.leader_id is None:
        return False, f"node {node.id} knows no leader (term {st.term}, {st.role})"
    behind = st.commit_index - st.applied_index
    if behind > READY_MAX_APPLY_LAG:
        return False, (
            f"node {node.id} is catching up: applied {st.applied_index} of commit {st.commit_index}"
        )
    return True, (
        f"node {node.id} is ready: {st.role} in term {st.term}, leader {st.leader_id}, "
        f"applied {st.applied_index} of {st.commit_index}"
    )


class Monitor:
    """The routes of one node's HTTP port (see the module docstring)."""

    def __init__(
        self,
        node: Node,
        http_nodes: Mapping[int, str],
        *,
        status: Callable[[Node], dict[str, Any]] = basic_status,
    ) -> None:
        self.node = node
        #: Every member's HTTP address (``{id: "host:port"}``), for the page.
        self.http_nodes = dict(http_nodes)
        self._status = status
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_SAMPLES)
        self._open = 0
        self.requests = 0
        self.refused = 0

    def sample(self) -> None:
        try:
            st = self.node.status()
        except NodeClosedError:
            return
        self.history.append(
            {
                "t": round(time.time(), 3),
                "role": st.role,
                "term": st.term,
                "leader_id": st.leader_id,
                "commit_index": st.commit_index,
                "applied_index": st.applied_index,
            }
        )

    async def _sampler(self) -> None:
        while True:
            self.sample()
            await trio.sleep(SAMPLE_INTERVAL)

    def route(self, req: Request) -> bytes:
        head = req.method == "HEAD"
        cors = {"Access-Control-Allow-Origin": "*"}
        path = req.path
        if path == "/healthz":
            return response(200, b"ok\n", head_only=head)
        if path == "/readyz":
            ready, reason = readiness(self.node)
            return response(200 if ready else 503, reason.encode() + b"\n", head_only=head)
        if path == "/metrics":
            try:
                text = node_metrics(self.node.statistics()).text()
            except NodeClosedError:
                return response(503, b"the node stopped\n", head_only=head)
            return response(
                200, text.encode(), "text/plain; version=0.0.4; charset=utf-8", head_only=head
            )
        if path in ("/status", "/cluster", "/history"):
            try:
                value: object
                if path == "/status":
                    value = self._status(self.node)
                elif path == "/cluster":
                    value = self.cluster()
                else:
                    value = {"node_id": self.node.id, "samples": list(self.history)}
            except NodeClosedError:
                return response(503, b"the node stopped\n", head_only=head, extra=cors)
            body = json.dumps(value).encode()
            return response(200, body, "application/json", head_only=head, extra=cors)
        if path in ("/", "/index.html"):
            return response(200, PAGE, "text/html; charset=utf-8", head_only=head)
        raise HttpError(404, f"no page {path[:100]}; try /, /metrics, /healthz, /readyz, /status")

    def cluster(self) -> dict[str, Any]:
        st = self.node.status()
        members = sorted({*st.voters, *st.learners, *self.http_nodes})
        return {
            "self": self.node.id,
            "nodes": [
                {
                    "id": n,
                    "http": self.http_nodes.get(n),
                    "member": n in st.voters or n in st.learners,
                }
                for n in members
            ],
        }

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one connection: one request, one answer, close.  Never raises."""
        self.requests += 1
        self._open += 1
        try:
            with trio.move_on_after(REQUEST_TIMEOUT) as scope:
                try:
                    if self._open > MAX_CONNECTIONS:
                        self.refused += 1
                        raise HttpError(503, "too many connections; try again")
                    try:
                        answer = self.route(parse_request(await _read_head(stream)))
                    except HttpError:
                        raise
                    except Exception:
                        log.exception("monitor: a request failed")
                        raise HttpError(500, "internal error") from None
                except HttpError as exc:
                    extra = {"Allow": "GET, HEAD"} if exc.status == 405 else None
                    answer = response(exc.status, exc.message.encode() + b"\n", extra=extra)
                    await stream.send_all(answer)
                    await _linger(stream)
                else:
                    await stream.send_all(answer)
            if scope.cancelled_caught:
                with trio.move_on_after(0.5):
                    await stream.send_all(response(408, b"request timeout\n"))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away
        except Exception:
            log.exception("monitor: a connection failed")
        finally:
            self._open -= 1
            await trio.aclose_forcefully(stream)


async def serve_monitor(
    node: Node,
    listen: str,
    http_nodes: Mapping[int, str] | None = None,
    *,
    status: Callable[[Node], dict[str, Any]] = basic_status,
    task_status: trio.TaskStatus[tuple[Monitor, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``node``'s HTTP port on ``listen`` (``host:port``, port 0 for any) until cancelled.

    ``task_status.started`` gets ``(monitor, port)``.

    Example:
        >>> async def main(node):  # doctest: +SKIP
        ...     async with trio.open_nursery() as n:
        ...         monitor, port = await n.start(serve_monitor, node, "127.0.0.1:8101")
    """
    host, port = parse_address(listen)
    monitor = Monitor(node, {**(http_nodes or {})}, status=status)
    listeners = await trio.open_tcp_listeners(port, host=host.strip("[]"))
    bound = listeners[0].socket.getsockname()[1]
    if node.id not in monitor.http_nodes:
        monitor.http_nodes[node.id] = f"{host}:{bound}"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(monitor._sampler)
        await nursery.start(trio.serve_listeners, monitor.handle, listeners)
        task_status.started((monitor, bound))
