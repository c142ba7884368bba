"""The docstore cluster node: one process, one trioraft node, one port for peers and clients.

Theory of operation
-------------------
:func:`serve` runs a trioraft node whose state machine is
:class:`~docstore.state_machine.DocstoreStateMachine` and whose client
service is :class:`DocstoreService`.  Clients speak the ClientRequest /
ClientResponse messages of docs/protocol.md; the kinds this service answers
are listed in :data:`KINDS` and documented in docs/protocol.md ("docstore
client service").  Writes are proposed with the request's session
(``client_id``, ``sequence``), prefixed with the authenticated client's id,
so a retried write is applied once and answered with the recorded result.
A node that is not the leader answers ``not_leader`` with the leader's id and
address; the client follows.

Configuration comes from :class:`ServerConfig`, the one source of defaults:
a TOML file (``--config``) overrides them, command-line flags override the
file.  Data directory layout (``ServerConfig.data``)::

    DATA/log/         the Raft log and hard state (trioraft.storage)
    DATA/snapshots/   Raft snapshots (state machine snapshots + membership)
    DATA/docstore/    the state machine's base snapshot and apply log
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import signal
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from docstore.engine.errors import DocstoreError, ResyncRequired
from docstore.engine.validate import validate_command, validate_query
from docstore.state_machine import DocstoreStateMachine, encode_command
from trioraft.core.types import NodeId
from trioraft.runtime import Node, NodeConfig, NotLeaderError, serve_node
from trioraft.runtime import error_response as runtime_error_response
from trioraft.runtime.config import parse_address
from trioraft.transport.base import ClientConnection
from trioraft.transport.messages import ClientRequest, ClientResponse

__all__ = [
    "DEFAULT_CLIENT",
    "KINDS",
    "DocstoreService",
    "ServerConfig",
    "load_config",
    "serve",
]

log = logging.getLogger("docstore.server")

#: The client id ``docstore.connect`` authenticates as unless told otherwise.
DEFAULT_CLIENT = "docstore"

#: Request kinds the docstore service answers (docs/protocol.md).
KINDS = (
    "command",
    "query",
    "watch",
    "cancel",
    "status",
    "members",
    "digest",
    "add_learner",
    "promote",
    "remove_node",
    "transfer_leader",
    "snapshot",
    "backup",
)

#: Bytes of snapshot per ``backup`` response (well below the frame limit).
BACKUP_CHUNK = 1 << 20


@dataclass(frozen=True)
class ServerConfig:
    """One node's settings; the defaults here are the only defaults.

    TOML keys and ``docstore serve`` flags have the same names (``-`` for
    ``_`` on the command line).  ``nodes`` (``{id: "host:port"}``, every
    bootstrap member including this one) is an alternative to ``peers``
    that lets all nodes share one file; ``data`` defaults to
    ``node<ID>`` beside that file.
    """

    id: int = 1
    listen: str = "127.0.0.1:7101"
    advertise: str | None = None
    peers: Mapping[int, str] = field(default_factory=dict)
    nodes: Mapping[int, str] = field(default_factory=dict)
    join: bool = False
    data: str = ""
    cluster_id: str = "docstore"
    #: Shared by the nodes (peer handshake).  Required.
    secret: str = ""
    #: Clients' tokens: ``{client_id: token}``; ``token`` is the one of ``docstore``.
    tokens: Mapping[str, str] = field(default_factory=dict)
    token: str = ""
    election_timeout_min: float = 1.0
    election_timeout_max: float = 2.0
    heartbeat_interval: float = 0.1
    snapshot_entries: int = 20_000
    proposal_timeout: float = 30.0
    tls_cert: str | None = None
    tls_key: str | None = None
    #: CA bundle to verify peers' certificates when dialling them over TLS.
    tls_ca: str | None = None
    log_level: str = "warning"

    def client_tokens(self) -> dict[str, bytes]:
        out = {k: v.encode() for k, v in self.tokens.items()}
        if self.token:
            out[DEFAULT_CLIENT] = self.token.encode()
        return out

    def node_config(self) -> NodeConfig:
        """The trioraft NodeConfig this server runs."""
        if not self.secret:
            raise ValueError("a cluster secret is required (--secret or secret = ... in the file)")
        if not self.data:
            raise ValueError("a data directory is required (--data)")
        peers = dict(self.peers) or {n: a for n, a in self.nodes.items() if n != self.id}
        listen = self.listen
        if self.nodes and self.id in self.nodes and not self.peers:
            listen = self.nodes[self.id]
        server_ctx = client_ctx = None
        if self.tls_cert:
            server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_ctx.load_cert_chain(self.tls_cert, self.tls_key)
            client_ctx = ssl.create_default_context(cafile=self.tls_ca or self.tls_cert)
        return NodeConfig(
            node_id=self.id,
            data_dir=self.data,
            listen=listen,
            peers=peers,
            join=self.join,
            advertise=self.advertise,
            election_timeout_min=self.election_timeout_min,
            election_timeout_max=self.election_timeout_max,
            heartbeat_interval=self.heartbeat_interval,
            snapshot_entries=self.snapshot_entries,
            proposal_timeout=self.proposal_timeout,
            cluster_id=self.cluster_id,
            cluster_secret=self.secret.encode(),
            client_tokens=self.client_tokens(),
            ssl_context=server_ctx,
            client_ssl_context=client_ctx,
        )


def _id_map(raw: object, what: str) -> dict[int, str]:
    if not isinstance(raw, dict):
        raise ValueError(f'{what} is a table of id = "host:port"')
    out: dict[int, str] = {}
    for k, v in raw.items():
        try:
            n = int(k)
        except ValueError:
            raise ValueError(f"{what}: {k!r} is not a node id") from None
        if not isinstance(v, str):
            raise ValueError(f"{what}: the address of {k} is not a string")
        parse_address(v)
        out[n] = v
    return out


def load_config(path: str | None = None, **overrides: Any) -> ServerConfig:
    """Defaults <- the TOML file at ``path`` <- ``overrides`` that are not None.

    Raises:
        ValueError: an unknown key, a bad value or an unreadable file (the
            message names it).
    """
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                values = tomllib.load(f)
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in dataclasses.fields(ServerConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
    for key in ("peers", "nodes"):
        if key in values:
            values[key] = _id_map(values[key], key)
    if not values.get("data") and path is not None and values.get("nodes"):
        values["data"] = os.path.join(
            os.path.dirname(os.path.abspath(path)), f"node{values.get('id', 1)}"
        )
    try:
        return ServerConfig(**values)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


class DocstoreService:
    """The docstore client service of one node (a trioraft ``ClientHandler``).

    ``service.handle`` is given to ``serve_node``; requests that arrive before
    the node is up wait for :meth:`attach`.
    """

    def __init__(self, sm: DocstoreStateMachine) -> None:
        self.sm = sm
        self._node: Node | None = None
        self._ready = trio.Event()

    def attach(self, node: Node) -> None:
        self._node = node
        self._ready.set()

    async def handle(self, conn: ClientConnection) -> None:
        await self._ready.wait()
        watches: dict[int, trio.CancelScope] = {}
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    batch = await conn.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError, trio.BrokenResourceError):
                    nursery.cancel_scope.cancel()
                    return
                for req in batch:
                    if req.kind == "watch":
                        scope = trio.CancelScope()
                        watches[req.request_id] = scope
                        nursery.start_soon(self._watch, conn, req, scope, watches)
                    elif req.kind == "backup":
                        nursery.start_soon(self._backup, conn, req)
                    elif req.kind == "cancel":
                        p = req.payload
                        rid = p.get("request_id") if isinstance(p, dict) else None
                        found = watches.pop(rid, None) if isinstance(rid, int) else None
                        if found is not None:
                            found.cancel()
                        conn.send([ClientResponse(req.request_id, True, found is not None)])
                    elif req.kind == "command":
                        self._command(conn, req)  # answered by callback: no task per write
                    else:
                        nursery.start_soon(self._serve, conn, req)

    def _command(self, conn: ClientConnection, req: ClientRequest) -> None:
        node = self._node
        assert node is not None
        rid = req.request_id

        def done(result: object, error: BaseException | None) -> None:
            conn.send(
                [ClientResponse(rid, True, result) if error is None else error_response(rid, error)]
            )

        try:
            cmd = self._check_command(req.payload)
            node.propose_nowait(
                encode_command(cmd),
                done,
                client_id=self._session(conn.client_id, req),
                sequence=req.sequence,
            )
        except Exception as exc:  # refused before it was appended: answer now
            conn.send([error_response(rid, exc)])

    def _check_command(self, payload: object) -> dict[str, Any]:
        """Refuse (``bad_request``) what apply would refuse anyway, before the log sees it."""
        try:
            return validate_command(payload, self.sm.limits, self.sm.engine.registry)
        except DocstoreError as exc:
            raise RequestRefused(exc) from None

    @staticmethod
    def _session(principal: str, req: ClientRequest) -> str:
        return f"{principal}/{req.client_id}" if req.client_id else ""

    async def _serve(self, conn: ClientConnection, req: ClientRequest) -> None:
        try:
            resp = ClientResponse(req.request_id, True, await self.call(req, conn.client_id))
        except Exception as exc:
            resp = error_response(req.request_id, exc)
        conn.send([resp])

    async def call(self, req: ClientRequest, principal: str = DEFAULT_CLIENT) -> object:
        """Answer one (non-streaming) request; raises on failure."""
        node = self._node
        assert node is not None
        p = req.payload if isinstance(req.payload, dict) else {}
        if req.kind == "command":
            cmd = self._check_command(req.payload)
            return await node.propose(
                encode_command(cmd),
                client_id=self._session(principal, req),
                sequence=req.sequence,
            )
        if req.kind == "query":
            try:
                validate_query(req.payload, self.sm.limits)
            except DocstoreError as exc:
                raise RequestRefused(exc) from None
            return await node.read(req.payload, consistency=req.consistency)
        if req.kind == "status":
            st = node.statistics()
            return {
                **node.status().to_dict(),
                "address": node.config.address,
                "lag": {str(n): pr.lag for n, pr in st.peers.items()},
            }
        if req.kind == "members":
            if req.consistency != "local" and not node.is_leader:
                raise _not_leader(node)
            m = node.membership
            addresses = {**node.config.peers, **m.address_map, node.id: node.config.address}
            return {
                "leader_id": node.status().leader_id,
                "voters": sorted(m.all_voters),
                "learners": sorted(m.learners - m.all_voters),
                "addresses": {str(n): addresses.get(n) for n in sorted(m.members)},
            }
        if req.kind == "digest":
            return {"digest": self.sm.digest(), "applied_index": self.sm.last_applied().index}
        if req.kind == "add_learner":
            await node.add_learner(_node_id(p.get("id")), str(p.get("address", "")))
            return True
        if req.kind == "promote":
            await node.promote(_node_id(p.get("id")))
            return True
        if req.kind == "remove_node":
            await node.remove_node(_node_id(p.get("id")))
            return True
        if req.kind == "transfer_leader":
            target = p.get("target")
            return await node.transfer_leadership(None if target is None else _node_id(target))
        if req.kind == "snapshot":
            meta = await node.snapshot()
            return {"index": meta.index, "term": meta.term}
        raise ValueError(f"unknown request kind {req.kind!r}")

    async def _watch(
        self,
        conn: ClientConnection,
        req: ClientRequest,
        scope: trio.CancelScope,
        watches: dict[int, trio.CancelScope],
    ) -> None:
        rid = req.request_id
        p = req.payload if isinstance(req.payload, dict) else {}
        try:
            with scope:
                try:
                    since = p.get("since_rev")
                    watcher = self.sm.watch(
                        str(p.get("coll", "")), p.get("filter"), since, int(p.get("buffer", 1024))
                    )
                except Exception as exc:
                    conn.send([error_response(rid, exc)])
                    return
                async with watcher:
                    conn.send([ClientResponse(rid, True, {"rev": self.sm.last_applied().index})])
                    try:
                        async for change in watcher:
                            conn.send([ClientResponse(rid, True, {"change": change})])
                    except DocstoreError as exc:
                        conn.send([error_response(rid, exc)])
                        return
                conn.send([ClientResponse(rid, False, None, "closed", "the node is stopping")])
        finally:
            watches.pop(rid, None)

    async def _backup(self, conn: ClientConnection, req: ClientRequest) -> None:
        """Stream a snapshot of this node's state, current as of a linearizable read."""
        rid = req.request_id
        node = self._node
        assert node is not None
        tmp = os.path.join(node.config.data_dir, f"backup-{rid}-{os.getpid()}.tmp")
        try:
            # A read barrier: the snapshot includes every write acknowledged before.
            await node.read({"op": "collections"}, consistency=req.consistency)
            info = await self.sm.write_snapshot(tmp)
            data = await trio.to_thread.run_sync(_read_file, tmp)
            digest = hashlib.sha256(data).hexdigest()
            for off in range(0, max(len(data), 1), BACKUP_CHUNK):
                chunk = data[off : off + BACKUP_CHUNK]
                done = off + BACKUP_CHUNK >= len(data)
                result = {"offset": off, "data": chunk, "done": done, "size": len(data)}
                if done:
                    result |= {"sha256": digest, "index": info.index, "term": info.term}
                conn.send([ClientResponse(rid, True, result)])
        except Exception as exc:
            conn.send([error_response(rid, exc)])
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_unlink_quietly, tmp)


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _node_id(v: object) -> NodeId:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"a node id is a positive integer, not {v!r}")
    return v


def _not_leader(node: Node) -> NotLeaderError:
    s = node.status()
    return NotLeaderError(s.leader_id, s.leader_address)


class RequestRefused(DocstoreError):
    """A command or query that validation refused before it reached the log.

    Answered ``bad_request`` (the message starts with the field at fault); the
    response's ``result`` is the engine's error result, whose ``error`` is the
    precise code (``invalid``, ``limit``, ``unknown_command``, ...).
    """

    code = "bad_request"

    def __init__(self, exc: DocstoreError) -> None:
        super().__init__(exc.message, rev=exc.rev)
        self.result = exc.to_result()


def error_response(rid: int, exc: BaseException) -> ClientResponse:
    """The ClientResponse for a failure (``not_leader`` carries where to go)."""
    if isinstance(exc, RequestRefused):
        return ClientResponse(rid, False, exc.result, exc.code, exc.message)
    if isinstance(exc, ResyncRequired):
        return ClientResponse(rid, False, None, "resync_required", exc.message)
    if isinstance(exc, DocstoreError):
        return ClientResponse(rid, False, None, exc.code, exc.message)
    return runtime_error_response(rid, exc)


async def serve(
    config: ServerConfig,
    *,
    handle_signals: bool = False,
    task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one docstore node until cancelled (or SIGINT/SIGTERM with ``handle_signals``)."""
    node_config = config.node_config()
    sm = DocstoreStateMachine(os.path.join(config.data, "docstore"))
    service = DocstoreService(sm)
    async with trio.open_nursery() as nursery:
        if handle_signals:
            nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        node: Node = await nursery.start(_serve_node, node_config, sm, service)
        service.attach(node)
        log.warning(
            "docstore node %d serving on %s (data %s)", node.id, node.config.address, config.data
        )
        task_status.started(node)


async def _serve_node(
    cfg: NodeConfig,
    sm: DocstoreStateMachine,
    service: DocstoreService,
    task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serve_node(cfg, sm, client_handler=service.handle, task_status=task_status)


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.warning("docstore: %s, stopping", signal.Signals(signum).name)
            scope.cancel()
            return
