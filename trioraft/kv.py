"""A small replicated key-value store: the reference :class:`~trioraft.StateMachine`.

Public: the README's example, the chaos harness and the benchmarks run it, and it
is the model to copy for a state machine of your own.

Theory of operation
-------------------
The whole map lives in memory.  Durability comes from two files in the
machine's directory:

``kv.base``
    The state at some applied log id, as one CBOR map
    ``{"format": 1, "index": i, "term": t, "data": {key: value}}``.  It is only
    ever replaced atomically (temp file, fsync, rename, fsync directory).
``kv.log``
    An 8-byte header ``b"KVL1" | u32 generation``, then one record per applied
    chunk: ``u32 length | u32 crc32 | payload`` where the payload is CBOR
    ``[index, term, [[op, key, value?], ...]]``: the chunk's last log id and
    the writes it made.  The last applied id and the data it
    describes travel in the same record, so a crash can lose a whole tail of
    chunks but never split one: on reopen ``last_applied()`` always matches the
    data.  A record is written (to the OS) when its chunk is applied and
    fsynced by :meth:`KVStateMachine.flush`.

The base carries a ``gen`` number too.  A log whose header names another
generation is stale (left over from before a compaction or a snapshot restore
that crashed half-way) and is ignored: this is what makes "write the new
base, then reset the log" safe even when the new base is *older* than the
log's records, as after restoring an old snapshot.

Opening loads the base, then replays log records newer than it; a torn last
record (short or failing its CRC) is cut off.  A bad record *followed by more
data* is corruption, not a torn write, and opening fails with
:class:`KVCorruptError`.  When the log outgrows ``compact_bytes`` a flush
folds it into a new base.

Commands (``Entry.data``, CBOR maps):

* ``{"op": "put", "key": k, "value": v}`` -> ``{"ok": True, "rev": index}``
* ``{"op": "delete", "key": k}`` -> ``{"ok": True, "deleted": bool, "rev": index}``
* ``{"op": "cas", "key": k, "expected": v_or_None, "value": v}`` ->
  ``{"ok": swapped, "value": current_value_after, "rev": index}``; ``expected``
  None means "only if absent".

A malformed command yields ``{"ok": False, "error": "bad_command", "message": ...}``:
the same on every replica, and the entry still counts as applied.

Queries (:meth:`KVStateMachine.query`, plain dicts or their CBOR bytes):
``{"op": "get", "key": k}`` -> value or None; ``{"op": "get_multi", "keys": [...]}``
-> list of values/None in the order asked; ``{"op": "len"}`` -> int;
``{"op": "digest"}`` -> ``{"index": last applied, "sha256": hex}`` over the
canonical sorted state and the last applied index (equal on replicas that
applied the same log prefix).
Keys are strings; values any CBOR value (bytes in the tests).

Example::

    kv = KVStateMachine("/tmp/kv")
    await kv.start()
    await kv.apply([Entry(1, 1, data=cbor2.dumps({"op": "put", "key": "a", "value": b"1"}))])
    assert await kv.query({"op": "get", "key": "a"}) == b"1"
    await kv.close()
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import cbor2
import trio

from trioraft.core.types import Entry, EntryKind
from trioraft.statemachine import LogId, SnapshotError, SnapshotInfo

__all__ = ["KVCorruptError", "KVQueryError", "KVStateMachine", "encode_command"]

_BASE = "kv.base"
_LOG = "kv.log"
_FORMAT = 1
_SNAPSHOT_FORMAT = "trioraft-kv/1"
_HEADER = struct.Struct(">II")
_LOG_HEADER = struct.Struct(">4sI")
_LOG_MAGIC = b"KVL1"
_MAX_RECORD = 1 << 30

_Write = tuple[str, str, Any]  # ("p", key, value) or ("d", key, None)


class KVCorruptError(Exception):
    """The KV directory holds data that is damaged (not merely a torn last write)."""


class KVQueryError(ValueError):
    """A query the KV machine does not understand."""


def encode_command(op: str, key: str, **fields: Any) -> bytes:
    """Build command bytes, e.g. ``encode_command("put", "a", value=b"1")``."""
    return cbor2.dumps({"op": op, "key": key, **fields})


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync directory."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _bad(message: str) -> dict[str, object]:
    return {"ok": False, "error": "bad_command", "message": message}


class KVStateMachine:
    """A durable in-memory key-value map implementing :class:`trioraft.StateMachine`.

    Args:
        path: directory holding the files (created if missing).
        compact_bytes: fold the log into a new base on flush once it is this big.
    """

    def __init__(self, path: str, *, compact_bytes: int = 4 << 20) -> None:
        self._dir = os.fspath(path)
        self._compact_bytes = compact_bytes
        self._data: dict[str, Any] = {}
        self._applied = LogId()
        self._gen = 0
        self._log_fd: int | None = None
        self._log_size = 0
        self._dirty = False
        self._lock = trio.Lock()
        self._running = False

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        if self._running:
            return
        await trio.to_thread.run_sync(self._open)
        self._running = True

    def _open(self) -> None:
        os.makedirs(self._dir, exist_ok=True)
        base = os.path.join(self._dir, _BASE)
        if os.path.exists(base):
            try:
                obj = cbor2.loads(_read_file(base))
                if obj["format"] != _FORMAT:
                    raise ValueError(f"unknown format {obj['format']!r}")
                data, applied = dict(obj["data"]), LogId(obj["index"], obj["term"])
                gen = int(obj["gen"])
            except (cbor2.CBORError, KeyError, TypeError, ValueError) as exc:
                raise KVCorruptError(f"{base}: unreadable base file: {exc}") from None
        else:
            data, applied, gen = {}, LogId(), 0
        log = os.path.join(self._dir, _LOG)
        fd = os.open(log, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._data, self._applied, self._gen = data, applied, gen
            self._log_size = self._replay(fd, log)
        except BaseException:
            os.close(fd)
            raise
        self._log_fd = fd

    def _reset_log(self, fd: int) -> int:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, _LOG_HEADER.pack(_LOG_MAGIC, self._gen))
        os.fsync(fd)
        return _LOG_HEADER.size

    def _replay(self, fd: int, log: str) -> int:
        raw = b""
        while chunk := os.read(fd, 1 << 20):
            raw += chunk
        if len(raw) < _LOG_HEADER.size:
            return self._reset_log(fd)  # new, or torn while being created
        magic, gen = _LOG_HEADER.unpack_from(raw, 0)
        if magic != _LOG_MAGIC:
            raise KVCorruptError(f"{log}: not a KV log (magic {magic!r})")
        if gen != self._gen:
            return self._reset_log(fd)  # stale: the base already covers or replaces it
        data = self._data
        pos, end = _LOG_HEADER.size, len(raw)
        while pos < end:
            torn = pos + _HEADER.size > end
            if not torn:
                length, crc = _HEADER.unpack_from(raw, pos)
                stop = pos + _HEADER.size + length
                torn = stop > end or length > _MAX_RECORD
            if not torn:
                payload = raw[pos + _HEADER.size : stop]
                if zlib.crc32(payload) != crc:
                    if stop == end:
                        torn = True
                    else:
                        raise KVCorruptError(f"{log}: bad record checksum at offset {pos}")
            if torn:
                # A crash mid-append: drop the partial record and everything after.
                os.ftruncate(fd, pos)
                os.fsync(fd)
                break
            index, term, writes = cbor2.loads(payload)
            if index > self._applied.index:
                self._apply_writes(data, writes)
                self._applied = LogId(index, term)
            pos = stop
        os.lseek(fd, pos, os.SEEK_SET)
        return pos

    @staticmethod
    def _apply_writes(data: dict[str, Any], writes: Sequence[Sequence[Any]]) -> None:
        for w in writes:
            if w[0] == "p":
                data[w[1]] = w[2]
            else:
                data.pop(w[1], None)

    async def flush(self) -> None:
        async with self._lock:
            await trio.to_thread.run_sync(self._flush_sync)

    def _flush_sync(self) -> None:
        if self._log_fd is None:
            return
        if self._dirty:
            os.fsync(self._log_fd)
            self._dirty = False
        if self._log_size > self._compact_bytes:
            self._compact()

    def _compact(self) -> None:
        """Write the state as a new base of the next generation, then reset the log.

        Once the base is renamed into place the old log is stale by its
        generation, so a crash between the two steps loses nothing.
        """
        assert self._log_fd is not None
        self._gen += 1
        _write_atomic(os.path.join(self._dir, _BASE), self._encode_base())
        self._log_size = self._reset_log(self._log_fd)
        self._dirty = False

    def _encode_base(self) -> bytes:
        return cbor2.dumps(
            {
                "format": _FORMAT,
                "gen": self._gen,
                "index": self._applied.index,
                "term": self._applied.term,
                "data": self._data,
            }
        )

    async def close(self) -> None:
        if self._log_fd is None:
            return
        await self.flush()
        os.close(self._log_fd)
        self._log_fd = None
        self._running = False

    def __del__(self) -> None:
        # Dropped without close (a simulated crash): release the descriptor, but
        # do not fsync -- what the OS already has is what a killed process leaves.
        fd = getattr(self, "_log_fd", None)
        if fd is not None:
            os.close(fd)

    # -- apply -------------------------------------------------------------

    def last_applied(self) -> LogId:
        return self._applied

    async def apply(self, entries: Sequence[Entry]) -> list[object]:
        async with self._lock:
            return self._apply_sync(entries)

    def _apply_sync(self, entries: Sequence[Entry]) -> list[object]:
        if self._log_fd is None:
            raise RuntimeError("KVStateMachine is not started")
        results: list[object] = []
        overlay: dict[str, Any] = {}
        deleted: set[str] = set()
        writes: list[_Write] = []
        last = self._applied

        def current(key: str) -> Any:
            if key in overlay:
                return overlay[key]
            if key in deleted:
                return None
            return self._data.get(key)

        for entry in entries:
            if entry.index <= last.index:
                results.append(None)
                continue
            last = LogId(entry.index, entry.term)
            if entry.kind != EntryKind.NORMAL:
                results.append(None)
                continue
            results.append(self._execute(entry, current, overlay, deleted, writes))
        if last == self._applied:
            return results
        payload = cbor2.dumps([last.index, last.term, [list(w) for w in writes]])
        record = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        view = memoryview(record)
        while view:
            view = view[os.write(self._log_fd, view) :]
        self._log_size += len(record)
        self._dirty = True
        # Only now, with the record handed to the OS, does memory change: a
        # failed write leaves the chunk unapplied everywhere.
        self._apply_writes(self._data, writes)
        self._applied = last
        return results

    @staticmethod
    def _execute(
        entry: Entry,
        current: Any,
        overlay: dict[str, Any],
        deleted: set[str],
        writes: list[_Write],
    ) -> object:
        try:
            cmd = cbor2.loads(entry.data)
        except Exception as exc:  # any malformed bytes: a result, never a crash
            return _bad(f"not CBOR: {exc}")
        if not isinstance(cmd, dict) or not isinstance(cmd.get("key"), str):
            return _bad("a command is a map with a string 'key'")
        op, key = cmd.get("op"), cmd["key"]
        if op == "put":
            if "value" not in cmd:
                return _bad("put needs 'value'")
            overlay[key] = cmd["value"]
            deleted.discard(key)
            writes.append(("p", key, cmd["value"]))
            return {"ok": True, "rev": entry.index}
        if op == "delete":
            existed = current(key) is not None
            overlay.pop(key, None)
            deleted.add(key)
            writes.append(("d", key, None))
            return {"ok": True, "deleted": existed, "rev": entry.index}
        if op == "cas":
            if "value" not in cmd or "expected" not in cmd:
                return _bad("cas needs 'expected' and 'value'")
            now = current(key)
            if now != cmd["expected"]:
                return {"ok": False, "value": now, "rev": entry.index}
            overlay[key] = cmd["value"]
            deleted.discard(key)
            writes.append(("p", key, cmd["value"]))
            return {"ok": True, "value": cmd["value"], "rev": entry.index}
        return _bad(f"unknown op {op!r}")

    # -- queries -----------------------------------------------------------

    async def query(self, query: object) -> object:
        # No await between reading keys: a query sees one state, never half a chunk.
        if isinstance(query, bytes | bytearray):
            try:
                query = cbor2.loads(query)
            except Exception as exc:
                raise KVQueryError(f"query is not CBOR: {exc}") from None
        if not isinstance(query, dict):
            raise KVQueryError("a query is a map with an 'op'")
        op = query.get("op")
        if op == "get":
            key = query.get("key")
            if not isinstance(key, str):
                raise KVQueryError("get needs a string 'key'")
            return self._data.get(key)
        if op == "get_multi":
            keys = query.get("keys")
            if not isinstance(keys, list | tuple) or not all(isinstance(k, str) for k in keys):
                raise KVQueryError("get_multi needs 'keys', a list of strings")
            return [self._data.get(k) for k in keys]
        if op == "len":
            return len(self._data)
        if op == "digest":
            # Replicas that applied the same prefix of the log agree on this.
            state = cbor2.dumps([self._applied.index, sorted(self._data.items())], canonical=True)
            return {"index": self._applied.index, "sha256": hashlib.sha256(state).hexdigest()}
        raise KVQueryError(f"unknown query op {op!r}")

    # -- snapshots ---------------------------------------------------------

    async def write_snapshot(self, path: str) -> SnapshotInfo:
        async with self._lock:
            # Encode while holding the lock: the file is exactly last_applied's state.
            applied = self._applied
            blob = cbor2.dumps(
                {
                    "format": _SNAPSHOT_FORMAT,
                    "index": applied.index,
                    "term": applied.term,
                    "data": self._data,
                }
            )
            await trio.to_thread.run_sync(_write_atomic, os.fspath(path), blob)
        return SnapshotInfo(
            index=applied.index,
            term=applied.term,
            checksum=hashlib.sha256(blob).hexdigest(),
            size=len(blob),
        )

    async def restore_snapshot(self, path: str, info: SnapshotInfo) -> None:
        async with self._lock:
            if self._log_fd is None:
                raise RuntimeError("KVStateMachine is not started")
            try:
                blob = await trio.to_thread.run_sync(_read_file, os.fspath(path))
            except OSError as exc:
                raise SnapshotError(f"{path}: cannot read snapshot: {exc}") from None
            digest = hashlib.sha256(blob).hexdigest()
            if digest != info.checksum.lower():
                raise SnapshotError(
                    f"{path}: checksum mismatch (file {digest}, expected {info.checksum})"
                )
            if len(blob) != info.size:
                raise SnapshotError(f"{path}: size {len(blob)} != expected {info.size}")
            try:
                obj = cbor2.loads(blob)
                if obj["format"] != _SNAPSHOT_FORMAT:
                    raise ValueError(f"unknown snapshot format {obj['format']!r}")
                data, applied = dict(obj["data"]), LogId(obj["index"], obj["term"])
            except (cbor2.CBORError, KeyError, TypeError, ValueError) as exc:
                raise SnapshotError(f"{path}: malformed snapshot: {exc}") from None
            if (applied.index, applied.term) != (info.index, info.term):
                raise SnapshotError(
                    f"{path}: snapshot is at {applied}, expected ({info.index}, {info.term})"
                )
            self._data, self._applied = data, applied
            try:
                # Durable swap: the new base is renamed into place (atomic), which
                # makes the old log stale; only then is the log reset.
                await trio.to_thread.run_sync(self._compact)
            except BaseException:
                # Memory and disk may now disagree: refuse further use; reopening
                # recovers whichever base won the rename.
                fd, self._log_fd = self._log_fd, None
                os.close(fd)
                raise
