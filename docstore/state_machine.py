"""docstore as a trioraft state machine.

Theory of operation.  Committed entries carry CBOR command maps (see
docs/docstore.md).  Each NORMAL entry is applied by the engine at revision
``entry.index`` and time ``entry.timestamp_ms``; a bad command or a failed
condition is an *error result*, the same on every replica.  Entries with a
``client_id`` go through the session table first: a sequence already applied
returns the recorded result without applying again (Raft dissertation 6.3),
an older one gets a ``stale_sequence`` error.  The table is bounded (least
recently used client evicted first, deterministic because apply order is)
and travels in snapshots.

Settings.  The limits and the session cap change apply results, so every
replica must apply an entry with the same ones, whatever each was
configured with.  The cluster's settings are an entry: the first leader
proposes its own (:meth:`settings_command`; ``docstore serve`` does it and
takes no client write before it is applied), and from that entry on every
replica applies with them.  Entries before any record are applied with the
built-in defaults (``DEFAULT_LIMITS``, ``DEFAULT_MAX_SESSIONS``): with each
replica's own settings, replicas configured differently diverged (one
evicted a session another kept; found by the whole-node simulator).  A
library user who configures the machine and drives it with
``trioraft.open_node`` proposes :meth:`settings_command` once for the
configured values to take effect.

Durability.  The Raft log is the write-ahead log; locally the machine keeps

* ``base.snap`` (and ``base.snap.prev``, the previous good one): a snapshot
  in the same format as :meth:`write_snapshot`, carrying a generation number;
* ``apply.dslog``: one record per applied chunk (its effects, last log id and
  session updates), written at apply and fsynced by :meth:`flush`.  Its first
  record names the generation of the base it extends; a log of another
  generation is stale and ignored.

A chunk is one record, so a crash loses whole chunks, never half of one, and
``last_applied()`` always matches the data.  When the log outgrows
``compact_bytes`` a flush folds it into a new base.  Restoring a snapshot
verifies it, writes it as the new base (temp file, fsync, rename, fsync
directory; the old base becomes ``.prev``), then starts a new log.

Embedded use.  ``docstore.open`` drives this same machine with a local
sequencer instead of Raft (:meth:`apply_local`): it assigns each command the
next index, applies it and group-commits the apply log with :meth:`flush`,
so an embedded directory and a node's ``docstore`` directory have one
format.  Its records carry term 0 (no Raft term), and a command that changes
nothing takes no index.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import cbor2
import trio

from docstore.engine.errors import (
    CorruptionError,
    DocstoreError,
    DuplicateRequestError,
    InvalidCommandError,
    SessionExpiredError,
)
from docstore.engine.queries import run_query
from docstore.engine.registry import Registry
from docstore.engine.state import Change, Engine
from docstore.engine.validate import sizes_bounded, validate_query
from docstore.engine.values import DEFAULT_LIMITS, Limits, clone
from docstore.protocol import OPEN_SESSION, SESSION_TTL_MS
from docstore.storage import snapshot as snap
from docstore.storage.datafile import DataFile, encode_record
from docstore.storage.records import fsync_dir, read_file, write_atomic
from docstore.watch import Hub, Watcher
from trioraft.core.types import Entry, EntryKind
from trioraft.statemachine import LogId, SnapshotError, SnapshotInfo
from trioraft.storage.fs import FileSystem, OsFileSystem

#: The session cap applied before the cluster records its settings.
DEFAULT_MAX_SESSIONS = 10_000

__all__ = [
    "OPEN_SESSION",
    "SESSION_TTL_MS",
    "DocstoreStateMachine",
    "decode_command",
    "encode_command",
]


#: Every byte that can open a CBOR tag (major type 6: 0xc0 to 0xdf) as a non-ASCII
#: byte, every other as NUL: ``data.translate(_TAG_HEADS).isascii()`` is True only
#: when ``data`` holds no tag (the converse need not hold: such a byte may be
#: inside a string or a number).
_TAG_HEADS = bytes(0x80 if 0xC0 <= b <= 0xDF else 0 for b in range(256))

_BASE = "base.snap"
_LOG = "apply.dslog"


def encode_command(cmd: dict[str, Any]) -> bytes:
    """The ``Entry.data`` (and ``propose`` payload) of a command map.

    Maps keep their key order (not canonical CBOR, which sorts keys): a
    document is stored with its fields in the order it was written.  Replicas
    apply the same bytes, so they still agree.
    """
    return bytes(cbor2.dumps(cmd))


def decode_command(data: bytes) -> Any:
    """Inverse of :func:`encode_command`; raises InvalidCommandError."""
    try:
        return cbor2.loads(data)
    except Exception as exc:  # cbor2 raises a variety of errors on garbage
        raise InvalidCommandError(f"command is not valid CBOR: {exc}") from None


class DocstoreStateMachine:
    """The trioraft :class:`~trioraft.StateMachine` for docstore.

    Example:
        sm = DocstoreStateMachine("data/node1/docstore")
        async with trioraft.open_node(config, sm) as node:
            await node.propose(encode_command({"op": "put", "coll": "c", "key": "k",
                                               "doc": {"v": 1}}))
    """

    def __init__(
        self,
        path: str,
        *,
        registry: Registry | None = None,
        limits: Limits = DEFAULT_LIMITS,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        compact_bytes: int = 64 << 20,
        watch_history: int = 10_000,
        fs: FileSystem | None = None,
        sync: bool = True,
    ) -> None:
        self.path = path
        #: Every file of the machine goes through it (the whole-node simulator
        #: passes a model that loses unsynced writes at a crash).
        self.fs: FileSystem = fs or OsFileSystem()
        self.registry = registry
        self.limits = limits
        self.max_sessions = max_sessions
        self.compact_bytes = compact_bytes
        #: False skips the apply log's fsync (scratch data and tests only).
        self.sync = sync
        self.engine = Engine(registry, limits)
        self.hub = Hub(watch_history)
        #: session -> (last sequence, its result, leader time of its last use in ms)
        self._sessions: OrderedDict[str, tuple[int, Any, int]] = OrderedDict()
        self._applied = LogId(0, 0)
        #: Replicated time: the highest leader timestamp applied.  Reads judge
        #: expiry by it, as writes do, never by this replica's clock.
        self._time_ms = 0
        #: The settings the cluster recorded (the first leader's), or None before.
        self._settings: dict[str, Any] | None = None
        self._gen = 0
        self._log: DataFile | None = None
        self._dirty = False
        self._since_base = 0  # records in the log since the base
        #: Records of apply_local not yet handed to the OS: the flush writes
        #: them in its thread, so the sequencer's loop makes no system call.
        self._unwritten: list[bytes] = []
        self._unwritten_bytes = 0

    # ------------------------------------------------------------------
    # lifecycle
    # ------------------------------------------------------------------

    async def start(self) -> None:
        await trio.to_thread.run_sync(self._open)

    def _open(self) -> None:
        fs = self.fs
        fs.makedirs(self.path)
        base = os.path.join(self.path, _BASE)
        for name in sorted(fs.listdir(self.path)):
            if name.endswith((".tmp", ".new")):
                fs.unlink(os.path.join(self.path, name))
        loaded: snap.Snapshot | None = None
        errors = []
        for candidate in (base, base + ".prev"):
            if not fs.exists(candidate):
                continue
            try:
                data = read_file(candidate, fs)
                loaded = snap.decode(data, candidate, self.registry, self.limits)
                break
            except SnapshotError as exc:
                errors.append(str(exc))
        if loaded is None and errors:
            raise CorruptionError("no usable base snapshot: " + "; ".join(errors))
        if loaded is not None:
            self._install(loaded)
        log = DataFile(os.path.join(self.path, _LOG), fs=fs, sync=self.sync)
        records = log.load()
        self._log = log
        if not records or records[0].get("gen") != self._gen:
            self._reset_log()
            return
        for rec in records[1:]:
            if rec["r"] <= self._applied.index:
                continue
            self._replay_record(rec)
            self._since_base += 1
        # Changes replayed from the log are not in the watch history either.
        self.hub.reset(self._applied.index)

    def _install(self, s: snap.Snapshot) -> None:
        self.engine = s.engine
        # Sessions: [cid, seq, result, last used ms]; older snapshots lack the time.
        self._sessions = OrderedDict(
            (rec[0], (rec[1], rec[2], rec[3] if len(rec) > 3 else 0)) for rec in s.sessions
        )
        self._applied = LogId(s.index, s.term)
        self._time_ms = s.time_ms
        self._adopt_settings(s.settings)
        self._gen = max(self._gen, s.gen)  # never reuse a generation a stale log may carry
        self.hub.reset(s.index)

    def _replay_record(self, rec: dict[str, Any]) -> None:
        fx = [e for e in rec["fx"] if e[0] not in ("sess", "sess-", "settings")]
        self.engine.replay(fx)
        for e in rec["fx"]:
            if e[0] == "sess":  # [sess, cid, seq, result, last used ms]; older logs lack the time
                self._sessions[e[1]] = (e[2], e[3], e[4] if len(e) > 4 else 0)
                self._sessions.move_to_end(e[1])
            elif e[0] == "sess-":
                self._sessions.pop(e[1], None)
            elif e[0] == "settings":
                self._adopt_settings(e[1])
        self._applied = LogId(rec["r"], rec["t"])
        self._time_ms = max(self._time_ms, rec.get("ms", 0))

    def _reset_log(self) -> None:
        assert self._log is not None
        self._log.rewrite([encode_record(0, [], gen=self._gen)])

    @property
    def compaction_due(self) -> bool:
        """Whether the next :meth:`flush` folds the log into a new base.

        While that runs nothing may be applied (the log is replaced under it).
        """
        log = self._log
        if log is None or not self._since_base:
            return False
        return log.size + self._unwritten_bytes > self.compact_bytes

    async def flush(self) -> None:
        """Fsync the apply log; fold it into a new base when it has grown large."""
        log = self._log
        if log is None:
            return
        if self.compaction_due:
            await self._write_base()
        elif self._dirty:
            self._dirty = False
            buf = b"".join(self._unwritten)
            self._unwritten, self._unwritten_bytes = [], 0
            await trio.to_thread.run_sync(_write_and_flush, log, buf)

    async def compact(self) -> None:
        """Fold the apply log into a new base now (nothing may be applied meanwhile)."""
        if self._log is not None:
            await self._write_base()

    async def close(self, *, flush: bool = True) -> None:
        """Flush (unless ``flush`` is False: after a failed fsync), then close the files."""
        if self._log is None:
            return
        try:
            if flush:
                await self.flush()
        finally:
            self._log.close()
            self._log = None
            self.hub.close()

    # ------------------------------------------------------------------
    # apply
    # ------------------------------------------------------------------

    async def apply(self, entries: Sequence[Entry]) -> list[object]:
        results: list[object] = []
        fx: list[list[Any]] = []
        changes: list[Any] = []
        before = self._applied
        if self._settings is None:
            # Until the cluster records its settings, every replica applies with
            # the built-in ones (see "Settings" above), not its own.
            self.engine.limits = DEFAULT_LIMITS
        done: Entry | None = None  # the last entry applied: _applied once the loop ends
        try:
            for e in entries:
                if e.index <= before.index or (done is not None and e.index <= done.index):
                    results.append(None)
                    continue
                result: object = None
                if e.kind == EntryKind.NORMAL:
                    if e.timestamp_ms > self._time_ms:
                        self._time_ms = e.timestamp_ms
                    result = self._apply_one(e, fx, changes)
                done = e
                results.append(result)
        finally:
            if done is not None:
                self._applied = LogId(done.index, done.term)
        if self._applied != before and self._log is not None:
            last = self._applied
            self._log.write(encode_record(last.index, fx, t=last.term, ms=self._time_ms))
            self._dirty = True
            self._since_base += 1
        self.hub.publish(changes)
        return results

    def apply_local(self, cmd: object, timestamp_ms: int) -> tuple[dict[str, Any], list[Change]]:
        """Apply ``cmd`` as the next entry of a log only this process writes (embedded use).

        The local sequencer's form of :meth:`apply`: the command takes index
        ``last_applied + 1`` (term 0) and its record, in the apply log's
        format, is queued; :meth:`flush` writes the queue and makes it
        durable.  A command that
        changes nothing takes no index and writes nothing (its result names
        the current revision).  The changes are returned, not published: the
        caller publishes them once they are durable.  Total: never raises for
        any ``cmd``.
        """
        assert self._log is not None, "start() first"
        self.engine.limits = self.limits  # embedded: no record, this process's own settings
        index = self._applied.index + 1
        applied = self.engine.apply(cmd, index, timestamp_ms)
        if not applied.effects:
            if applied.ok:
                applied.result["rev"] = self._applied.index
            return applied.result, []
        self._applied = LogId(index, 0)
        self._time_ms = max(self._time_ms, timestamp_ms)
        record = encode_record(index, applied.effects, t=0, ms=self._time_ms)
        self._unwritten.append(record)
        self._unwritten_bytes += len(record)
        self._dirty = True
        self._since_base += 1
        return applied.result, applied.changes

    def _apply_one(self, e: Entry, fx: list[list[Any]], changes: list[Any]) -> object:
        cid = e.client_id
        if cid:
            if e.sequence == 0:
                return self._open_session(e, fx)
            seen = self._sessions.get(cid)
            if seen is not None and e.timestamp_ms - seen[2] > SESSION_TTL_MS:
                self._drop_session(cid, fx)
                seen = None
            if seen is None:
                # Never registered, evicted or expired: the retry of a write that
                # may have applied must not apply again (Raft dissertation 6.3).
                return SessionExpiredError(
                    f"session {cid!r} is not open (expired, evicted or never opened): "
                    "the outcome of this write is unknown; open a new session",
                    rev=e.index,
                ).to_result()
            if e.sequence <= seen[0]:
                if e.sequence == seen[0]:
                    return clone(seen[1])
                return DuplicateRequestError(
                    f"client {cid!r} already sent sequence {seen[0]} (got {e.sequence})",
                    rev=e.index,
                ).to_result()
        try:
            cmd = decode_command(e.data)
            if not cid and isinstance(cmd, dict) and cmd.get("op") == "settings":
                return self._record_settings(cmd, e, fx)
            size = _bounding_size(e.data, self.engine.limits)
            result, effects, made = self.engine.apply_parts(
                cmd, e.index, e.timestamp_ms, encoded_size=size
            )  # total: never raises
            fx.extend(effects)
            changes.extend(made)
        except InvalidCommandError as exc:
            result = exc.to_result()
        if cid:
            self._set_session(cid, (e.sequence, result, e.timestamp_ms), fx)
        return result

    # ------------------------------------------------------------------
    # settings that change apply results: replicated, the same everywhere
    # ------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """The settings that change apply results, as this replica uses them."""
        return {"limits": dataclasses.asdict(self.limits), "max_sessions": self.max_sessions}

    def settings_command(self) -> dict[str, Any]:
        """The command that records this replica's settings as the cluster's (the
        docstore server's leader proposes it when none is recorded yet)."""
        return {"op": "settings", **self.settings()}

    @property
    def settings_recorded(self) -> bool:
        return self._settings is not None

    def _record_settings(self, cmd: dict[str, Any], e: Entry, fx: list[list[Any]]) -> object:
        proposed = {k: v for k, v in cmd.items() if k != "op"}
        try:
            _check_settings(proposed)
        except InvalidCommandError as exc:
            return exc.to_result()
        changed = proposed != self._settings
        if changed:
            self._adopt_settings(proposed)
            fx.append(["settings", proposed])
        return {"ok": True, "rev": e.index, "changed": changed}

    def _adopt_settings(self, record: dict[str, Any] | None) -> None:
        """From this entry on, apply with the recorded settings, whatever this replica
        was configured with: every replica switches at the same log index."""
        self._settings = record
        if record is None:
            return
        self.limits = Limits(**record["limits"])
        self.engine.limits = self.limits
        self.max_sessions = record["max_sessions"]

    def _open_session(self, e: Entry, fx: list[list[Any]]) -> object:
        """Sequence 0 of a session: register it (idempotent), expiring idle ones first."""
        try:
            cmd = decode_command(e.data)
        except InvalidCommandError as exc:
            return exc.to_result()
        if cmd != OPEN_SESSION:
            return InvalidCommandError(
                f"sequence 0 of a session is its registration, {OPEN_SESSION}"
            ).to_result()
        cid, now = e.client_id, e.timestamp_ms
        # Sessions are in order of last use: the idle ones are at the front.
        while self._sessions:
            oldest, rec = next(iter(self._sessions.items()))
            if now - rec[2] <= SESSION_TTL_MS or oldest == cid:
                break
            self._drop_session(oldest, fx)
        seen = self._sessions.get(cid)
        if seen is None:
            cap = self.max_sessions if self._settings is not None else DEFAULT_MAX_SESSIONS
            while len(self._sessions) >= cap:
                self._drop_session(next(iter(self._sessions)), fx)
            self._set_session(cid, (0, None, now), fx)
        return {"ok": True, "session": cid, "rev": e.index, "opened": seen is None}

    def _set_session(self, cid: str, rec: tuple[int, Any, int], fx: list[list[Any]]) -> None:
        self._sessions[cid] = rec
        self._sessions.move_to_end(cid)
        fx.append(["sess", cid, *rec])

    def _drop_session(self, cid: str, fx: list[list[Any]]) -> None:
        del self._sessions[cid]
        fx.append(["sess-", cid])

    def next_expiry(self) -> int | None:
        """The earliest ``_expires`` (ms) of any document, or None."""
        due = [
            c.docs[k]["_expires"] for c in self.engine.colls.values() for k in c.expiring
        ]
        return min(due) if due else None

    def last_applied(self) -> LogId:
        return self._applied

    # ------------------------------------------------------------------
    # reads
    # ------------------------------------------------------------------

    async def query(self, query: object) -> object:
        """Answer a query map (or its CBOR bytes): ``{"ok": True, "value": ...}`` or an
        error result.  Besides the queries of :mod:`docstore.engine.queries`:
        ``{"op": "get_multi", "coll": c, "keys": [...]}`` reads several keys at once."""
        try:
            q = decode_command(bytes(query)) if isinstance(query, (bytes, bytearray)) else query
            op = q.get("op") if isinstance(q, dict) else None
            if op in ("get_multi", "sessions"):  # the state machine's own queries
                m = validate_query(q, self.limits)
                now = self._time_ms
                value: Any = (
                    [clone(self.engine.get(m["coll"], k, now_ms=now)) for k in m["keys"]]
                    if op == "get_multi"
                    else len(self._sessions)
                )
            else:
                value = clone(run_query(self.engine, q, self._time_ms))  # validates
        except DocstoreError as exc:
            return exc.to_result()
        except RecursionError:
            return InvalidCommandError("query nested too deeply").to_result()
        return {"ok": True, "value": value}

    def watch(
        self, coll: str, flt: object = None, since_rev: int | None = None, buffer: int = 1024
    ) -> Watcher:
        """Changes applied on this replica (see :class:`docstore.Watcher`)."""
        return self.hub.watch(coll, flt, since_rev, self._applied.index, buffer)

    def digest(self) -> str:
        """Hash of the replicated state: documents, extensions and the session table."""
        h = hashlib.sha256(self.engine.digest().encode())
        h.update(snap._dumps(self._session_list()).encode())
        return h.hexdigest()

    def _session_list(self) -> list[list[Any]]:
        return [[cid, *rec] for cid, rec in self._sessions.items()]

    # ------------------------------------------------------------------
    # snapshots
    # ------------------------------------------------------------------

    async def write_snapshot(self, path: str) -> SnapshotInfo:
        a = self._applied
        chunks, checksum, size = snap.encode(
            self.engine, a.index, a.term, 0, self._session_list(), self._time_ms, self._settings
        )
        await trio.to_thread.run_sync(write_atomic, path, chunks, self.fs)
        return SnapshotInfo(a.index, a.term, checksum, size)

    async def restore_snapshot(self, path: str, info: SnapshotInfo) -> None:
        def read() -> bytes:
            try:
                return read_file(path, self.fs)
            except OSError as exc:
                raise SnapshotError(f"cannot read snapshot {path}: {exc}") from None

        data = await trio.to_thread.run_sync(read)
        if hashlib.sha256(data).hexdigest() != info.checksum:
            raise SnapshotError(f"{path}: checksum does not match {info.checksum[:12]}...")
        loaded = snap.decode(data, path, self.registry, self.limits)
        if (loaded.index, loaded.term) != (info.index, info.term):
            raise SnapshotError(
                f"{path}: holds ({loaded.index}, {loaded.term}), expected "
                f"({info.index}, {info.term})"
            )
        self._install(loaded)
        await self._write_base()

    async def _write_base(self) -> None:
        """Make the in-memory state the new base (a new generation), then reset the log."""
        self._gen += 1
        a = self._applied
        self._unwritten, self._unwritten_bytes = [], 0  # in the base now
        chunks, _, _ = snap.encode(
            self.engine,
            a.index,
            a.term,
            self._gen,
            self._session_list(),
            self._time_ms,
            self._settings,
        )
        base = os.path.join(self.path, _BASE)

        def write() -> None:
            fs = self.fs
            tmp = base + ".new"
            write_atomic(tmp, chunks, fs)
            if fs.exists(base):
                fs.rename(base, base + ".prev")
            fs.rename(tmp, base)
            fsync_dir(self.path, fs)
            self._reset_log()

        await trio.to_thread.run_sync(write)
        self._dirty = False
        self._since_base = 0


def _bounding_size(data: bytes, limits: Limits) -> int | None:
    """``len(data)`` when it bounds the JSON size of every document in ``data``
    (:func:`sizes_bounded`), else None: the engine's ``encoded_size``.

    The node checked the command for tags before proposing it, but a log entry
    is not trusted: a tag (a shared value, a string reference) makes a few
    bytes decode to a large document, so an entry that may hold one is measured.
    """
    if (
        sizes_bounded(len(data), limits)
        and type(data) is bytes
        and data.translate(_TAG_HEADS).isascii()
    ):
        return len(data)
    return None


def _write_and_flush(log: DataFile, buf: bytes) -> None:
    if buf:
        log.write(buf)
    log.flush()


def _check_settings(record: dict[str, Any]) -> None:
    """A settings record: ``limits`` (every field of :class:`Limits`, positive
    integers) and ``max_sessions`` (a positive integer)."""
    if set(record) != {"limits", "max_sessions"}:
        raise InvalidCommandError("settings: limits and max_sessions, nothing else")
    limits, sessions = record["limits"], record["max_sessions"]
    names = {f.name for f in dataclasses.fields(Limits)}
    if not isinstance(limits, dict) or set(limits) != names:
        raise InvalidCommandError(f"settings.limits: the fields {sorted(names)}")
    for name, value in [*limits.items(), ("max_sessions", sessions)]:
        if type(value) is not int or not 1 <= value <= 2**31:
            raise InvalidCommandError(f"settings: {name} is a positive integer")
