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

No request can stop the node.  Every authenticated client has a role
(:meth:`ServerConfig.role`); :func:`required_role` says what a request
needs, and one beyond the client's role is answered ``forbidden`` before
anything runs.  Streamed answers wait for the client to read
(``ClientConnection.wait_writable``): a ``backup`` is read from disk a chunk
at a time, one per connection and :data:`MAX_BACKUPS` per node; a watch that
cannot be delivered falls behind and ends with ``resync_required`` (writers
never wait for a watcher).  A watch payload is validated before the watch
starts, the request ids of running watches are unique per connection, and
at most :data:`MAX_WATCHES` run per connection.

Configuration comes from :class:`ServerConfig`, the one source of defaults:
a TOML file (``--config``) overrides them, command-line flags override the
file.  Data directory layout (``ServerConfig.data``)::

    DATA/log/         the Raft log and hard state (trioraft.storage)
    DATA/snapshots/   Raft snapshots (state machine snapshots + membership)
    DATA/docstore/    the state machine's base snapshot and apply log

Why this is one file past 600 lines: it owns the node side of docstore,
the configuration a node starts from (:class:`ServerConfig`,
:func:`load_config`), the service answering clients (:class:`DocstoreService`,
its admin handlers, roles, watches and backups) and :func:`serve`, which
puts them on a trioraft node.  The seam is the configuration (about 150
lines that read TOML and flags and start nothing): it could be a
``docstore/config.py``, and is not split yet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import hashlib
import itertools
import logging
import os
import signal
import ssl
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

import trio

from docstore.engine.errors import DocstoreError, InvalidCommandError
from docstore.engine.validate import validate_command, validate_query, validate_watch
from docstore.protocol import DEFAULT_CLIENT
from docstore.state_machine import OPEN_SESSION, DocstoreStateMachine, encode_command
from trioraft.core.types import NodeId
from trioraft.runtime import (
    Node,
    NodeConfig,
    NotLeaderError,
    OverloadedError,
    ProposalDroppedError,
    serve_node,
)
from trioraft.runtime.config import default_of, parse_address, tuning_of
from trioraft.runtime.service import (
    MAX_IN_FLIGHT,
    ClientService,
    Done,
    Outcome,
    Session,
    error_response,
)
from trioraft.statemachine import SnapshotInfo
from trioraft.transport.base import ClientConnection
from trioraft.transport.codec import ProtocolError, decode_value
from trioraft.transport.messages import ClientRequest, ClientResponse

__all__ = [
    "DEFAULT_CLIENT",
    "KINDS",
    "KIND_ROLES",
    "ROLES",
    "DocstoreService",
    "ForbiddenRequest",
    "Role",
    "ServerConfig",
    "load_config",
    "required_role",
    "serve",
]

log = logging.getLogger("docstore.server")

Role = Literal["read", "write", "admin"]
#: Client roles, each allowed what the ones before it are (docs/protocol.md, "Roles").
ROLES: Final[tuple[Role, ...]] = get_args(Role)

#: The role each request kind needs; a ``command`` that registers extension
#: code needs ``admin`` (:func:`required_role`).
KIND_ROLES: Final[Mapping[str, Role]] = {
    "command": "write",
    "query": "read",
    "watch": "read",
    "cancel": "read",
    "status": "read",
    "members": "read",
    "digest": "read",
    "add_learner": "admin",
    "promote": "admin",
    "remove_node": "admin",
    "transfer_leader": "admin",
    "snapshot": "admin",
    "backup": "admin",
}

#: Request kinds the docstore service answers (docs/protocol.md).
KINDS = tuple(KIND_ROLES)
#: A role's place in :data:`ROLES` (each request is authorised: a lookup, not a search).
_RANK: Final[Mapping[str, int]] = {role: i for i, role in enumerate(ROLES)}

#: Bytes of snapshot per ``backup`` response (well below the frame limit).
BACKUP_CHUNK = 1 << 20
#: Backups in progress per node (at most one per connection); more: ``overloaded``.
MAX_BACKUPS = 2
#: Watches running per connection; more: ``overloaded``.
MAX_WATCHES = 64

# MAX_IN_FLIGHT (trioraft.runtime.service): commands and one-shot requests
# (queries, status, ...) a connection may have unanswered at once; more are
# answered ``overloaded`` at once (no task, no read).
_OPEN_SESSION_DATA = encode_command(OPEN_SESSION)
#: Backup files being streamed, in the data directory; removed when done.
_BACKUP_FILES = "backup-*.tmp"


class ForbiddenRequest(DocstoreError):
    """The client's role does not allow the request (docs/protocol.md, "Roles")."""

    code = "forbidden"


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
    #: Clients' roles, ``{client_id: "read" | "write" | "admin"}``; see :meth:`role`.
    roles: Mapping[str, Role] = field(default_factory=dict)
    election_timeout_min: float = default_of(NodeConfig, "election_timeout_min")
    election_timeout_max: float = default_of(NodeConfig, "election_timeout_max")
    heartbeat_interval: float = default_of(NodeConfig, "heartbeat_interval")
    snapshot_entries: int = default_of(NodeConfig, "snapshot_entries")
    proposal_timeout: float = default_of(NodeConfig, "proposal_timeout")
    tls_cert: str | None = None
    tls_key: str | None = None
    #: CA bundle to verify peers' certificates when dialling them over TLS.
    tls_ca: str | None = None
    log_level: str = "warning"
    #: ``host:port`` of this node's HTTP port: /metrics, /healthz, /readyz,
    #: /status and the status page (docstore/monitor.py).  Off when unset,
    #: unless ``http_nodes`` has an entry for this id.
    http: str | None = None
    #: Every member's HTTP port, ``{id: "host:port"}``: the status page polls them.
    http_nodes: Mapping[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.http is not None:
            parse_address(self.http)
        if not isinstance(self.roles, Mapping):
            raise ValueError('roles is a table of client = "read" | "write" | "admin"')
        for client, role in self.roles.items():
            if role not in ROLES:
                raise ValueError(
                    f"roles: {client} has the unknown role {role!r} (one of {', '.join(ROLES)})"
                )

    def role(self, client_id: str) -> Role:
        """The role of an authenticated client.

        As set in ``roles``; otherwise ``admin`` for :data:`DEFAULT_CLIENT`
        (the operator's ``token``) and ``write`` for every other token.
        """
        role = self.roles.get(client_id)
        if role is None:
            return "admin" if client_id == DEFAULT_CLIENT else "write"
        return role

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
            cluster_id=self.cluster_id,
            cluster_secret=self.secret.encode(),
            client_tokens=self.client_tokens(),
            ssl_context=server_ctx,
            client_ssl_context=client_ctx,
            **tuning_of(self),
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
    for key in ("peers", "nodes", "http_nodes"):
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
    """The docstore client service: the handlers :meth:`build` registers on a node's
    :class:`~trioraft.runtime.service.ClientService` (one receive loop per connection).

    ``serve_node(..., client_service=service.build)`` builds it with the node.
    Commands are proposed by callback (no task per write), queries in one
    task per frame and consistency with one read point for all
    (:meth:`_queries`), the other one-shot kinds in a task each (at most
    :data:`MAX_IN_FLIGHT` requests per connection), ``watch``,
    ``backup`` and ``cancel`` are streams of this class's own.
    A ``command`` is decoded once here to be checked and its bytes are proposed
    as they came (:meth:`_check_command`).
    """

    def __init__(self, sm: DocstoreStateMachine, config: ServerConfig | None = None) -> None:
        self.sm = sm
        self.config = config or ServerConfig()
        self._backups = 0  # in progress on this node
        self._backup_ids = itertools.count(1)
        self._recording = trio.Lock()  # one settings proposal at a time

    def build(self, node: Node) -> ClientService:
        """The client service of ``node``, serving :data:`KINDS`."""
        service = ClientService(
            node,
            max_in_flight=MAX_IN_FLIGHT,
            check=self._authorize,
            connection_state=lambda conn: _Streams(self.config.role(conn.client_id)),
        )
        service.on_write("command", self._command)
        service.on_batch("query", self._queries)
        service.on_call("status", _status)
        service.on_call("members", _members)
        service.on_call("digest", self._digest)
        service.on_call("add_learner", _add_learner)
        service.on_call("promote", _promote)
        service.on_call("remove_node", _remove_node)
        service.on_call("transfer_leader", _transfer_leader)
        service.on_call("snapshot", _snapshot)
        service.on_stream("watch", self._start_watch)
        service.on_stream("backup", self._start_backup)
        service.on_stream("cancel", _cancel)
        assert set(service.kinds) == set(KINDS)
        return service

    @staticmethod
    def _authorize(session: Session, req: ClientRequest) -> None:
        role: Role = session.state.role
        needed = required_role(req)
        if needed is None or _RANK[role] >= _RANK[needed]:
            return
        what = repr(req.kind) if needed == KIND_ROLES[req.kind] else "a 'register' command"
        raise ForbiddenRequest(
            f"{what} needs the {needed} role; client {session.client_id!r} has the {role} role"
        )

    def _command(self, session: Session, req: ClientRequest, done: Done) -> None:
        data = self._check_command(session, req)
        client_id = self._session(session.client_id, req)
        if not self.sm.settings_recorded and session.node.is_leader:
            # Entries before the record apply with the built-in settings, not
            # this cluster's: a new cluster's first writes wait for its first
            # leader's record, which this service proposes if need be.
            session.nursery.start_soon(
                self._command_after_settings, session, data, client_id, req.sequence, done
            )
            return
        session.node.propose_nowait(data, done, client_id=client_id, sequence=req.sequence)

    async def _command_after_settings(
        self, session: Session, data: bytes, client_id: str, sequence: int, done: Done
    ) -> None:
        try:
            with trio.move_on_after(SETTINGS_WAIT):
                await self._record_settings(session.node)
            if not self.sm.settings_recorded and session.node.is_leader:
                raise ProposalDroppedError(
                    f"the cluster's settings are not recorded after {SETTINGS_WAIT:g} s:"
                    " not applied, retry with the same sequence"
                )
            session.node.propose_nowait(data, done, client_id=client_id, sequence=sequence)
        except Exception as exc:  # not the leader any more, overloaded...: the answer
            done(None, exc)

    async def _record_settings(self, node: Node) -> None:
        """Propose this node's settings as the cluster's while it leads and none are
        recorded, one proposal at a time: for a write that finds none, and as one
        of :func:`serve`'s leader duties."""
        while not self.sm.settings_recorded and node.is_leader:
            async with self._recording:
                if self.sm.settings_recorded:
                    return
                try:
                    await node.propose(encode_command(self.sm.settings_command()))
                except Exception as exc:  # lost leadership...: look again
                    log.debug("settings not recorded: %r", exc)
                if not self.sm.settings_recorded:  # failed, or refused by apply
                    await trio.sleep(DUTY_INTERVAL_UNRECORDED)

    def _check_command(self, session: Session, req: ClientRequest) -> bytes:
        """The entry data of a ``command``, decoded once and checked; raises to refuse it.

        The payload is the command's CBOR bytes (proposed as they are) or, from
        older clients, the command map (encoded here).  What apply would refuse
        anyway is refused now (``bad_request``, the field named), before the log
        sees it; a command registering code needs the admin role (``forbidden``).
        A session's sequence 0 is its registration, ``{"op": "open_session"}``.
        """
        payload = req.payload
        try:
            cmd = decode_value(payload, "payload") if isinstance(payload, bytes) else payload
        except ProtocolError as exc:
            raise RequestRefused(InvalidCommandError(str(exc))) from None
        if (
            isinstance(payload, bytes)
            and session.state.role != "admin"
            and _command_role(cmd) == "admin"
        ):
            raise ForbiddenRequest(
                "a 'register' command needs the admin role;"
                f" client {session.client_id!r} has the {session.state.role} role"
            )
        try:
            if req.client_id and req.sequence == 0:
                if cmd != OPEN_SESSION:
                    raise InvalidCommandError(
                        f"sequence: 0 opens a session and carries {OPEN_SESSION}"
                    )
                return _OPEN_SESSION_DATA
            checked = validate_command(
                cmd,
                self.sm.limits,
                self.sm.engine.registry,
                # decoded without tags: its size bounds its documents'
                encoded_size=len(payload) if isinstance(payload, bytes) else None,
            )
            op = checked["op"]
            if op == "expire" or op == "batch":  # the others cannot hold an expire
                subs = checked["commands"] if op == "batch" else [checked]
                for i, sub in enumerate(subs):
                    if sub["op"] == "expire" and "now_ms" in sub:
                        where = f"commands[{i}]." if sub is not checked else ""
                        raise InvalidCommandError(
                            f"{where}now_ms: a cluster expires by the leader's clock; omit it"
                        )
        except DocstoreError as exc:
            raise RequestRefused(exc) from None
        return payload if isinstance(payload, bytes) else encode_command(checked)

    @staticmethod
    def _session(principal: str, req: ClientRequest) -> str:
        return f"{principal}/{req.client_id}" if req.client_id else ""

    async def _queries(self, session: Session, requests: Sequence[ClientRequest]) -> list[Outcome]:
        """The ``query`` requests of one frame with one consistency: one read point for all.

        A query that fails validation is refused alone (``bad_request``); the
        others are answered by ``Node.read_many``, after one confirmation.
        """
        outcomes: list[Outcome] = []
        valid: list[object] = []
        for req in requests:
            try:
                validate_query(req.payload, self.sm.limits)
            except DocstoreError as exc:
                outcomes.append((None, RequestRefused(exc)))
            else:
                outcomes.append((None, None))
                valid.append(req.payload)
        if not valid:
            return outcomes
        answers = iter(await session.node.read_many(valid, consistency=requests[0].consistency))
        return [outcome if outcome[1] is not None else next(answers) for outcome in outcomes]

    async def _digest(self, session: Session, req: ClientRequest) -> object:
        return {"digest": self.sm.digest(), "applied_index": self.sm.last_applied().index}

    def _start_watch(self, session: Session, req: ClientRequest) -> None:
        streams: _Streams = session.state
        rid = req.request_id
        args = _watch_args(req.payload, self.sm)
        if rid in streams.watches:
            raise RequestRefused(
                InvalidCommandError(f"request id {rid} is already a running watch")
            )
        if len(streams.watches) >= MAX_WATCHES:
            raise OverloadedError(f"at most {MAX_WATCHES} watches run on one connection")
        scope = streams.watches[rid] = trio.CancelScope()
        session.nursery.start_soon(self._watch, session.conn, rid, args, scope, streams.watches)

    def _start_backup(self, session: Session, req: ClientRequest) -> None:
        streams: _Streams = session.state
        if streams.backup:
            raise OverloadedError("a backup is already running on this connection")
        if self._backups >= MAX_BACKUPS:
            raise OverloadedError(f"{MAX_BACKUPS} backups are running on this node")
        streams.backup = True
        self._backups += 1
        session.nursery.start_soon(self._backup, session, req)

    async def _watch(
        self,
        conn: ClientConnection,
        rid: int,
        args: _WatchArgs,
        scope: trio.CancelScope,
        watches: dict[int, trio.CancelScope],
    ) -> None:
        try:
            with scope:
                try:
                    watcher = self.sm.watch(args.coll, args.filter, args.since_rev, **args.extra)
                except Exception as exc:
                    conn.send([error_response(rid, exc)])
                    return
                async with watcher:
                    conn.send([ClientResponse(rid, True, {"rev": self.sm.last_applied().index})])
                    try:
                        async for change in watcher:
                            # Held back while the client does not read; meanwhile
                            # the watcher's buffer fills and it falls behind.
                            await conn.wait_writable()
                            conn.send([ClientResponse(rid, True, {"change": change})])
                    except DocstoreError as exc:
                        conn.send([error_response(rid, exc)])
                        return
                conn.send([ClientResponse(rid, False, None, "closed", "the node is stopping")])
            if scope.cancelled_caught:  # by a ``cancel``: its final response
                conn.send([ClientResponse(rid, False, None, "closed", "cancelled")])
        except trio.BrokenResourceError:
            pass  # the connection is gone
        finally:
            if watches.get(rid) is scope:  # not cancelled and replaced under the same id
                del watches[rid]

    async def _backup(self, session: Session, req: ClientRequest) -> None:
        """Stream a snapshot of this node's state, current as of a read barrier."""
        rid = req.request_id
        node, conn, streams = session.node, session.conn, session.state
        name = _BACKUP_FILES.replace("*", f"{os.getpid()}-{next(self._backup_ids)}")
        tmp = os.path.join(node.config.data_dir, name)
        try:
            # A read barrier: the snapshot includes every write acknowledged before.
            await node.read({"op": "collections"}, consistency=req.consistency)
            info = await self.sm.write_snapshot(tmp)
            await _stream_file(conn, rid, tmp, info)
        except trio.BrokenResourceError:
            pass  # the connection is gone
        except Exception as exc:
            conn.send([error_response(rid, exc)])
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_unlink_quietly, tmp)
            streams.backup = False
            self._backups -= 1


class _Streams:
    """One client connection's role and running streams (``Session.state``)."""

    __slots__ = ("backup", "role", "watches")

    def __init__(self, role: Role) -> None:
        self.role = role
        self.watches: dict[int, trio.CancelScope] = {}
        self.backup = False


def _cancel(session: Session, req: ClientRequest) -> None:
    """Stop a running watch: answered ``true``; the watch ends with ``closed`` "cancelled"."""
    p = req.payload
    target = p.get("request_id") if isinstance(p, dict) else None
    found = session.state.watches.pop(target, None) if isinstance(target, int) else None
    if found is None:
        raise RequestRefused(InvalidCommandError(f"request_id: {target!r} is not a running watch"))
    found.cancel()
    session.conn.send([ClientResponse(req.request_id, True, True)])


async def _status(session: Session, req: ClientRequest) -> object:
    return node_status(session.node)


def node_status(node: Node) -> dict[str, Any]:
    """This node's entry of ``docstore status --json``: the ``status`` answer and ``/status``."""
    st = node.statistics()
    tr = st.transport
    return {
        **node.status().to_dict(),
        "address": node.config.address,
        "lag": {str(n): pr.lag for n, pr in st.peers.items()},
        "counters": {
            "persist_batches": st.persist_batches,
            "persist_entries": st.persist_entries,
            "entries_applied": st.entries_applied,
            "peer_frames_in": tr.frames_in if tr else 0,
            "peer_frames_out": tr.frames_out if tr else 0,
            "client_frames_in": tr.client_frames_in if tr else 0,
            "client_frames_out": tr.client_frames_out if tr else 0,
        },
    }


async def _members(session: Session, req: ClientRequest) -> object:
    node = session.node
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


def _args(req: ClientRequest) -> dict[Any, Any]:
    return req.payload if isinstance(req.payload, dict) else {}


async def _add_learner(session: Session, req: ClientRequest) -> object:
    p = _args(req)
    await session.node.add_learner(_node_id(p.get("id")), str(p.get("address", "")))
    return True


async def _promote(session: Session, req: ClientRequest) -> object:
    await session.node.promote(_node_id(_args(req).get("id")))
    return True


async def _remove_node(session: Session, req: ClientRequest) -> object:
    await session.node.remove_node(_node_id(_args(req).get("id")))
    return True


async def _transfer_leader(session: Session, req: ClientRequest) -> object:
    target = _args(req).get("target")
    return await session.node.transfer_leadership(None if target is None else _node_id(target))


async def _snapshot(session: Session, req: ClientRequest) -> object:
    meta = await session.node.snapshot()
    return {"index": meta.index, "term": meta.term}


def required_role(req: ClientRequest) -> Role | None:
    """The role ``req`` needs (None: an unknown kind, answered ``bad_request``).

    A ``command`` that registers extension code (``register``, or a
    ``batch`` holding one) needs ``admin``: the code runs on every replica.
    (A command sent as CBOR bytes is checked for that once decoded.)
    """
    needed = KIND_ROLES.get(req.kind)
    if req.kind == "command" and isinstance(req.payload, dict):
        return _command_role(req.payload)
    return needed


def _command_role(cmd: object) -> Role:
    """``admin`` for a command that registers code (alone or in a batch), else ``write``."""
    if not isinstance(cmd, dict) or cmd.get("op") not in ("register", "batch"):
        return "write"  # the common case, decided without looking further
    subs = cmd.get("commands") if cmd.get("op") == "batch" else [cmd]
    if isinstance(subs, list) and any(
        isinstance(c, dict) and c.get("op") == "register" for c in subs
    ):
        return "admin"
    return "write"


@dataclass(frozen=True, slots=True)
class _WatchArgs:
    coll: str
    filter: object
    since_rev: int | None
    extra: Mapping[str, int]  # ``buffer`` when given (the state machine has the default)


def _watch_args(payload: object, sm: DocstoreStateMachine) -> _WatchArgs:
    """A ``watch`` payload, checked; refused (``bad_request``) naming the field at fault."""
    try:
        w = validate_watch(payload, sm.limits)
    except DocstoreError as exc:
        raise RequestRefused(exc) from None
    extra = {} if w.get("buffer") is None else {"buffer": w["buffer"]}
    return _WatchArgs(w["coll"], w.get("filter"), w.get("since_rev"), extra)


async def _stream_file(conn: ClientConnection, rid: int, path: str, info: SnapshotInfo) -> None:
    """Send ``path`` as backup chunks, each once the client has read enough of the last."""
    digest = hashlib.sha256()
    offset = 0
    while True:
        await conn.wait_writable()
        chunk = await trio.to_thread.run_sync(_read_chunk, path, offset, digest)
        done = offset + len(chunk) >= info.size
        if not chunk and not done:
            raise RuntimeError(f"{path} ended at {offset} of {info.size} bytes")
        result: dict[str, object] = {
            "offset": offset,
            "data": chunk,
            "done": done,
            "size": info.size,
        }
        if done:
            if digest.hexdigest() != info.checksum:
                raise RuntimeError(f"{path} does not match its checksum {info.checksum[:12]}...")
            result |= {"sha256": info.checksum, "index": info.index, "term": info.term}
        conn.send([ClientResponse(rid, True, result)])
        if done:
            return
        offset += len(chunk)


def _read_chunk(path: str, offset: int, digest: Any) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        chunk = f.read(BACKUP_CHUNK)
    digest.update(chunk)
    return chunk


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
        #: The response's ``result`` (trioraft.runtime.error_response puts it there).
        self.error_result = exc.to_result()


async def serve(
    config: ServerConfig,
    *,
    handle_signals: bool = False,
    task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one docstore node until cancelled (or SIGINT/SIGTERM with ``handle_signals``)."""
    node_config = config.node_config()
    sm = DocstoreStateMachine(os.path.join(config.data, "docstore"))
    service = DocstoreService(sm, config)
    for stale in glob.glob(os.path.join(config.data, _BACKUP_FILES)):
        _unlink_quietly(stale)  # left by a process that was killed mid-backup
    async with trio.open_nursery() as nursery:
        if handle_signals:
            nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        node: Node = await nursery.start(
            functools.partial(serve_node, client_service=service.build), node_config, sm
        )
        nursery.start_soon(_leader_duties, node, service)
        http = config.http or config.http_nodes.get(config.id)
        if http:
            from docstore.monitor import serve_monitor

            await nursery.start(
                functools.partial(serve_monitor, status=node_status), node, http, config.http_nodes
            )
            log.info("docstore node %d: metrics and status page on http://%s/", node.id, http)
        # Info, not warning: `docstore serve` prints this line itself.
        log.info(
            "docstore node %d serving on %s (data %s)", node.id, node.config.address, config.data
        )
        task_status.started(node)


#: Seconds between the leader's rounds of duties (settings record, expiry).
DUTY_INTERVAL = 1.0
#: ... while no settings are recorded (client writes wait for the record).
DUTY_INTERVAL_UNRECORDED = 0.05
#: How long a write waits for the record before it is answered ``dropped``.
SETTINGS_WAIT = 5.0


async def _leader_duties(node: Node, service: DocstoreService) -> None:
    """What the leader proposes on its own, about once a second.

    * The cluster's settings, when none are recorded: the first leader records
      its own, and from that entry on every replica applies with them, whatever
      it was configured with (:meth:`DocstoreStateMachine.settings_command`).
    * ``{"op": "expire"}`` as of its own (entry) time, whenever a document's
      ``_expires`` has passed by its clock.  Each such entry also moves the
      replicated clock that reads judge expiry by.
    """
    sm = service.sm
    while True:
        await trio.sleep(DUTY_INTERVAL if sm.settings_recorded else DUTY_INTERVAL_UNRECORDED)
        if not node.is_leader:
            continue
        if not sm.settings_recorded:
            # The same proposal as a write that finds none (one at a time).
            with trio.move_on_after(DUTY_INTERVAL):
                await service._record_settings(node)
        due = sm.next_expiry()  # O(documents with _expires), once a second
        if due is not None and due <= time.time() * 1000:
            try:
                await node.propose(encode_command({"op": "expire"}))
            except Exception as exc:  # lost leadership, overloaded...: the next round retries
                log.debug("expire round not applied: %r", exc)


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.warning("docstore: %s, stopping", signal.Signals(signum).name)
            scope.cancel()
            return
