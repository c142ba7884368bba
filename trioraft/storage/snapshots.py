"""Snapshot files: bodies written by the state machine, metadata written here.

Theory of operation
-------------------
The state machine writes a snapshot body to a temp path this store hands out
(``new_path()``).  ``commit`` then syncs the body, renames it to
``snap-<seq>.body``, syncs the directory, and only then writes
``snap-<seq>.meta`` (index, term, membership, sha256, size; itself
checksummed) with tmp + sync + rename + sync dir.  The meta file's presence
is the commit point: a body without meta is a leftover and is deleted when
the store is opened, as are temp files.

Order is by log index, never by commit sequence: "latest" is the readable
snapshot with the highest index.  Two writers race here (the node's own
snapshot task and the receiver of a leader's snapshot), so ``commit`` refuses
a snapshot below the newest readable one with :class:`StaleSnapshotError`
(deleting its body); the same snapshot committed again is a no-op.  The
sequence number only keeps file names unique.

The previous snapshot survives until the new one's meta is durable; then all
but the ``keep`` (2) readable snapshots with the highest indexes are deleted,
meta first, so a half-deleted snapshot is never taken for a whole one.

``latest()`` walks committed snapshots from the highest index down and
returns the first whose meta parses and whose body has the recorded size and
sha256 over the whole file.  A damaged newest snapshot is skipped with a
warning and the older one is used, which works only if the log still holds
the entries after the older one: :meth:`SnapshotStore.fallback_index` is how
far the runtime may compact its log for that to stay true (see
``trioraft.storage.recovery``).

Snapshots a leader streams in chunks go through :class:`SnapshotReceiver`:
written to a temp file, hashed as they arrive, verified, then committed.

Every method may be called from any worker thread; one lock serializes them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from trioraft.core.types import Membership, SnapshotMeta
from trioraft.statemachine import SnapshotError
from trioraft.storage.errors import StorageCorruption, StorageFatalError
from trioraft.storage.fs import FileHandle, FileSystem, OsFileSystem, atomic_write, read_all

__all__ = [
    "SnapshotReader",
    "SnapshotReceiver",
    "SnapshotStore",
    "StaleSnapshotError",
    "StoredSnapshot",
]

log = logging.getLogger("trioraft.storage")

_HEAD = struct.Struct("<4sBI")  # magic, version, crc32 of the JSON
_MAGIC = b"TRSM"
_VERSION = 1
_META_RE = re.compile(r"^snap-(\d{10})\.meta$")
_BODY_RE = re.compile(r"^snap-(\d{10})\.body$")
_CHUNK = 1 << 20


class StaleSnapshotError(SnapshotError):
    """A snapshot below the newest one stored was refused: committing it would go backwards."""


@dataclass(frozen=True, slots=True)
class StoredSnapshot:
    """A committed snapshot as recorded in its meta file."""

    meta: SnapshotMeta
    path: str
    checksum: str  # lowercase hex sha256 of the whole body
    size: int
    seq: int


def _encode_meta(meta: SnapshotMeta, checksum: str, size: int) -> bytes:
    doc = {
        "index": meta.index,
        "term": meta.term,
        "membership": json.loads(meta.membership.encode()),
        "sha256": checksum,
        "size": size,
    }
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return _HEAD.pack(_MAGIC, _VERSION, zlib.crc32(body)) + body


def _decode_meta(data: bytes, path: str) -> tuple[SnapshotMeta, str, int]:
    if len(data) < _HEAD.size:
        raise StorageCorruption("snapshot meta too short", path, 0)
    magic, version, crc = _HEAD.unpack_from(data)
    body = data[_HEAD.size :]
    if magic != _MAGIC or version != _VERSION:
        raise StorageCorruption(f"bad snapshot meta magic/version {magic!r}/{version}", path, 0)
    if zlib.crc32(body) != crc:
        raise StorageCorruption("snapshot meta checksum mismatch", path, _HEAD.size)
    try:
        doc = json.loads(body)
        membership = Membership.decode(json.dumps(doc["membership"]).encode())
        meta = SnapshotMeta(int(doc["index"]), int(doc["term"]), membership)
        checksum = str(doc["sha256"])
        size = int(doc["size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageCorruption(f"malformed snapshot meta: {exc}", path, _HEAD.size) from None
    return meta, checksum, size


def _sha256(handle: FileHandle, size: int) -> str:
    h = hashlib.sha256()
    off = 0
    while off < size:
        chunk = handle.pread(min(_CHUNK, size - off), off)
        if not chunk:
            break
        h.update(chunk)
        off += len(chunk)
    return h.hexdigest()


class SnapshotStore:
    """Committed snapshots in one directory.

    Example::

        store = SnapshotStore(data_dir + "/snapshots")
        path = store.new_path()
        info = await state_machine.write_snapshot(path)
        store.commit(path, SnapshotMeta(info.index, info.term, members), info.checksum, info.size)
        meta, path, checksum = store.latest()
    """

    def __init__(
        self,
        directory: str,
        *,
        keep: int = 2,
        fs: FileSystem | None = None,
        randbytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if keep < 1:
            raise ValueError("keep at least one snapshot")
        self._dir = directory
        self._fs = fs or OsFileSystem()
        self._randbytes = randbytes  # temp file names (a simulator seeds it)
        self._keep = keep
        self._lock = threading.RLock()
        self._metas: dict[int, tuple[SnapshotMeta, str, int]] = {}
        self._verified: dict[int, StoredSnapshot] = {}
        self._damaged: dict[int, str] = {}
        try:
            self._fs.makedirs(directory)
            self._cleanup()
        except OSError as exc:
            raise StorageFatalError(f"cannot open snapshot store {directory}: {exc}") from exc

    def _path(self, name: str) -> str:
        return os.path.join(self._dir, name)

    def _cleanup(self) -> None:
        names = set(self._fs.listdir(self._dir))
        removed = False
        for name in sorted(names):
            m = _BODY_RE.match(name)
            orphan = m is not None and f"snap-{m.group(1)}.meta" not in names
            if name.endswith(".tmp") or orphan:
                self._fs.unlink(self._path(name))
                removed = True
        if removed:
            self._fs.sync_dir(self._dir)

    def _seqs(self) -> list[int]:
        names = self._fs.listdir(self._dir)
        return sorted(int(m.group(1)) for n in names if (m := _META_RE.match(n)))

    def new_path(self) -> str:
        """A fresh temp path in this directory for a snapshot body."""
        return self._path(f"incoming-{self._randbytes(8).hex()}.tmp")

    def commit(
        self,
        path: str,
        meta: SnapshotMeta,
        info_checksum: str,
        size: int,
        *,
        verify: bool = True,
    ) -> StoredSnapshot:
        """Durably record the body at ``path`` as a snapshot (the latest, unless refused).

        With ``verify`` (the default) the body's size and sha256 are checked
        first, so a state machine bug cannot replace a good snapshot with a
        bad one.  The snapshot already stored at the same index and term is
        returned as is (the body at ``path`` is deleted): the same log
        position is the same state.

        Raises:
            StaleSnapshotError: a readable snapshot with a higher index (or
                another term at this index) is stored; ``path`` is deleted.
            SnapshotError: the body does not match ``size``/``info_checksum``.
            StorageFatalError: an I/O error; stop the node.
        """
        if os.path.dirname(os.path.abspath(path)) != os.path.abspath(self._dir):
            raise ValueError(f"{path} is not in the snapshot directory {self._dir}")
        checksum = info_checksum.lower()
        with self._lock:
            try:
                newest = self._latest()
                if newest is not None and newest.meta.index >= meta.index:
                    self._fs.unlink(path)
                    if (newest.meta.index, newest.meta.term) == (meta.index, meta.term):
                        return newest  # the same state, whatever its bytes
                    raise StaleSnapshotError(
                        f"snapshot {meta.index} (term {meta.term}) refused: snapshot "
                        f"{newest.meta.index} (term {newest.meta.term}) is stored"
                    )
                handle = self._fs.open(path)
                try:
                    actual = handle.size()
                    if actual != size:
                        raise SnapshotError(f"{path}: size {actual}, expected {size}")
                    if verify and _sha256(handle, size) != checksum:
                        raise SnapshotError(f"{path}: sha256 does not match {checksum}")
                    handle.sync()
                finally:
                    handle.close()
                seqs = self._seqs()
                seq = (seqs[-1] + 1) if seqs else 1
                body = self._path(f"snap-{seq:010d}.body")
                self._fs.rename(path, body)
                # The body's name must be durable before the meta that points at it.
                self._fs.sync_dir(self._dir)
                meta_path = self._path(f"snap-{seq:010d}.meta")
                atomic_write(self._fs, meta_path, _encode_meta(meta, checksum, size))
                stored = StoredSnapshot(meta, body, checksum, size, seq)
                self._metas[seq] = (meta, checksum, size)
                self._verified[seq] = stored
                self._prune()
            except OSError as exc:
                raise StorageFatalError(f"committing snapshot in {self._dir}: {exc}") from exc
        return stored

    def _prune(self) -> None:
        """Keep the ``keep`` readable snapshots with the highest indexes; delete the rest."""
        kept = {s.seq for s in self._valid()[-self._keep :]}
        old = [seq for seq in self._seqs() if seq not in kept]
        for seq in old:
            if seq in self._damaged:
                log.warning("deleting damaged snapshot %d: %s", seq, self._damaged.pop(seq))
            # Meta first: without it the body is an orphan, never a snapshot.
            for suffix in ("meta", "body"):
                p = self._path(f"snap-{seq:010d}.{suffix}")
                if self._fs.exists(p):
                    self._fs.unlink(p)
            self._metas.pop(seq, None)
            self._verified.pop(seq, None)
        if old:
            self._fs.sync_dir(self._dir)

    def _meta(self, seq: int) -> tuple[SnapshotMeta, str, int]:
        got = self._metas.get(seq)
        if got is None:
            meta_path = self._path(f"snap-{seq:010d}.meta")
            got = _decode_meta(read_all(self._fs, meta_path), meta_path)
            self._metas[seq] = got
        return got

    def _load(self, seq: int) -> StoredSnapshot:
        if seq in self._verified:
            return self._verified[seq]
        meta, checksum, size = self._meta(seq)
        body = self._path(f"snap-{seq:010d}.body")
        if not self._fs.exists(body):
            raise StorageCorruption("snapshot body is missing", body)
        handle = self._fs.open(body)
        try:
            actual = handle.size()
            if actual != size:
                raise StorageCorruption(f"snapshot body is {actual} bytes, expected {size}", body)
            if _sha256(handle, size) != checksum:
                raise StorageCorruption("snapshot body fails its sha256", body)
        finally:
            handle.close()
        stored = StoredSnapshot(meta, body, checksum, size, seq)
        self._verified[seq] = stored
        return stored

    def _by_index(self) -> list[int]:
        """Committed sequence numbers, highest index first (damaged metas last)."""
        keyed: list[tuple[int, int]] = []
        for seq in self._seqs():
            try:
                keyed.append((self._meta(seq)[0].index, seq))
            except StorageCorruption as exc:
                if seq not in self._damaged:
                    log.warning("skipping damaged snapshot %d: %s", seq, exc)
                    self._damaged[seq] = str(exc)
                keyed.append((-1, seq))
        return [seq for _, seq in sorted(keyed, reverse=True)]

    def _try_load(self, seq: int) -> StoredSnapshot | None:
        if seq in self._damaged:
            return None
        try:
            return self._load(seq)
        except StorageCorruption as exc:
            log.warning("skipping damaged snapshot %d: %s", seq, exc)
            self._damaged[seq] = str(exc)
            return None

    def _latest(self) -> StoredSnapshot | None:
        for seq in self._by_index():
            stored = self._try_load(seq)
            if stored is not None:
                return stored
        return None

    def _valid(self) -> list[StoredSnapshot]:
        out = [s for seq in self._by_index() if (s := self._try_load(seq)) is not None]
        return out[::-1]

    def latest_stored(self) -> StoredSnapshot | None:
        """The readable snapshot with the highest index, or None.  Damaged ones are skipped."""
        with self._lock:
            try:
                return self._latest()
            except OSError as exc:
                raise StorageFatalError(f"reading snapshots in {self._dir}: {exc}") from exc

    def latest(self) -> tuple[SnapshotMeta, str, str] | None:
        """``(meta, body path, sha256 hex)`` of the newest valid snapshot, or None."""
        s = self.latest_stored()
        return None if s is None else (s.meta, s.path, s.checksum)

    def snapshots(self) -> list[StoredSnapshot]:
        """Every readable committed snapshot, lowest index first."""
        with self._lock:
            try:
                return self._valid()
            except OSError as exc:
                raise StorageFatalError(f"reading snapshots in {self._dir}: {exc}") from exc

    def damaged(self) -> list[str]:
        """Why each committed snapshot found unreadable so far is (file name: reason)."""
        with self._lock:
            return [f"snap-{seq:010d}: {why}" for seq, why in sorted(self._damaged.items())]

    def fallback_index(self) -> int:
        """How far the log may be compacted so that any one damaged snapshot can be done without.

        The index of the oldest snapshot kept once ``keep`` readable ones are
        stored, else 0 (with fewer, the newest has nothing older to fall back
        on but the log itself).  With ``keep=1`` it is the newest index: no
        fallback is kept.
        """
        valid = self.snapshots()
        return valid[0].meta.index if len(valid) >= self._keep else 0

    def find(self, meta: SnapshotMeta) -> StoredSnapshot | None:
        """The readable snapshot with ``meta``'s index and term, or None."""
        for s in reversed(self.snapshots()):
            if s.meta.index == meta.index and s.meta.term == meta.term:
                return s
        return None

    def open_for_read(self, meta: SnapshotMeta) -> SnapshotReader:
        """A reader over the committed snapshot with ``meta``'s index and term."""
        s = self.find(meta)
        if s is None:
            raise SnapshotError(f"no snapshot at index {meta.index} term {meta.term}")
        return SnapshotReader(self._fs.open(s.path), s)

    def receive(self, meta: SnapshotMeta, checksum: str, size: int) -> SnapshotReceiver:
        """Start receiving a snapshot streamed in chunks (see :class:`SnapshotReceiver`)."""
        return SnapshotReceiver(self, meta, checksum, size)


class SnapshotReader:
    """Sequential chunked reads of a committed snapshot body (for streaming it)."""

    def __init__(self, handle: FileHandle, stored: StoredSnapshot) -> None:
        self._handle = handle
        self.stored = stored
        self.offset = 0

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes from the current offset; ``b""`` at the end."""
        size = max(0, min(size, self.stored.size - self.offset))
        data = self._handle.pread(size, self.offset) if size else b""
        self.offset += len(data)
        return data

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> SnapshotReader:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class SnapshotReceiver:
    """Collects a streamed snapshot, verifies it and commits it.

    Example::

        rx = store.receive(meta, checksum, size)
        for chunk in chunks:
            rx.write(chunk)
        stored = rx.commit()   # or rx.abort() on any failure
    """

    def __init__(self, store: SnapshotStore, meta: SnapshotMeta, checksum: str, size: int) -> None:
        self._store = store
        self.meta = meta
        self.checksum = checksum.lower()
        self.size = size
        self.path = store.new_path()
        self._hash = hashlib.sha256()
        self._written = 0
        self._done = False
        try:
            self._handle: FileHandle = store._fs.open(self.path, create=True)
        except OSError as exc:
            raise StorageFatalError(f"creating {self.path}: {exc}") from exc

    def write(self, chunk: bytes) -> None:
        """Append the next chunk.  Raises SnapshotError if it overflows ``size``."""
        if self._done:
            raise SnapshotError("receiver already finished")
        if self._written + len(chunk) > self.size:
            self.abort()
            raise SnapshotError(f"snapshot larger than announced {self.size} bytes")
        try:
            self._handle.pwrite(chunk, self._written)
        except OSError as exc:
            raise StorageFatalError(f"writing {self.path}: {exc}") from exc
        self._hash.update(chunk)
        self._written += len(chunk)

    def commit(self) -> StoredSnapshot:
        """Verify size and sha256, then commit durably.  Aborts on a mismatch."""
        if self._done:
            raise SnapshotError("receiver already finished")
        if self._written != self.size or self._hash.hexdigest() != self.checksum:
            self.abort()
            raise SnapshotError("received snapshot fails its size or sha256 check")
        self._done = True
        self._handle.close()
        return self._store.commit(self.path, self.meta, self.checksum, self.size, verify=False)

    def abort(self) -> None:
        """Discard what was received."""
        if self._done:
            return
        self._done = True
        try:
            self._handle.close()
            self._store._fs.unlink(self.path)
        except OSError:
            log.warning("could not remove %s", self.path, exc_info=True)
