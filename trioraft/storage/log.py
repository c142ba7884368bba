"""The durable Raft log: append-only segment files of checksummed frames.

Theory of operation
-------------------
The log directory holds numbered segment files ``00000000000000000001.log``,
``...2.log``, a ``hardstate`` file, a ``boundary`` file (the snapshot
boundary: index and term of the last compacted entry) and an ``identity``
file: the directory's *incarnation*, 16 random bytes written once (atomically,
synced) when the log is created, never changed.  A node presents it to its
peers, and the cluster refuses a voter speaking from another incarnation
than the one it recorded: a node whose directory was lost comes back as a
new member, never as the old voter with an empty log.

Segments are only ever appended to.  Each ``append`` call writes its entries
as one frame (several if the batch is over ``FRAME_SOFT_BYTES``) with a single
``pwrite`` and a single ``fdatasync``: group commit.  A frame is::

    version u8 | payload length u32 | payload crc32 u32 | header crc32 u32
    payload | footer (4 constant bytes)
    payload: first index u64 | count u32 | first term u64 | last term u64
             then per entry: term u64 | kind u8 | sequence i64 |
             timestamp_ms i64 | client_id length u16 | data length u32 |
             client_id (utf-8) | data

The header has its own checksum so a damaged length is caught before it is
trusted.  Nothing is ever overwritten in place.  A conflicting suffix is
replaced by appending a frame whose first index is at or below the current
last index: on replay a frame *supersedes* every entry at or after its first
index (the rule etcd's WAL uses).  ``truncate_suffix`` appends an empty frame.
So every mutation is one append plus one sync, and a crash at any point
leaves either the state before the call or a prefix of the call's frames.

Opening replays every segment in order.  In the last segment, a frame that
runs past the end of the file, a partial header, or an all-zero remainder is
a torn tail (an unacknowledged write), and so is a frame whose footer and
everything after it is zero (a file system that extended the file but lost
the data zero-fills it): it is truncated and the truncation synced.
Anything else that fails validation -- a complete frame with a bad checksum,
a bad frame followed by more data, any damage in an earlier segment -- raises
:class:`StorageCorruption` naming the file and offset.
Single bit flips can never look like a torn tail: the header checksum covers
the length, a flip cannot make bytes vanish or zero a header, and every
footer byte has four bits set so a flipped footer never looks zero-filled.
Writes that the file system persists out of order (a later page durable, an
earlier one not) are reported as corruption: loud, never silent.

``compact(index, term)`` writes the ``boundary`` file first (atomically),
then deletes segments that hold no live entry above the boundary.  A
segment's entries are live unless a later frame superseded them, and a later
frame always supersedes at or below the first entry it kills, so deleting
dead segments never changes the outcome of a replay.

In memory the store keeps, per live frame, its first index, live count,
segment and offset (arrays, so a million frames cost tens of megabytes, not
hundreds), the runs of equal terms, and a small cache of decoded frames that
``append`` fills with the entries it just wrote (the leader reads them back
at once to replicate).

Failure is loud: any ``OSError`` while writing poisons the store and raises
:class:`StorageFatalError`.  The runtime must stop the node; never retry an
fsync.

The checksum is ``zlib.crc32``: for the frame sizes Raft writes it costs the
same as ``crc32c`` per call (see docs/storage.md), it is in the standard
library, and every frame also carries its index so misplaced data is caught.

Why this is one file past 600 lines: the frame format, the replay that
validates it and the writes that produce it must agree byte for byte, and
the in-memory index (frames, term runs, the cache) is updated by both; apart
they would be three files that only make sense together.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from trioraft.core.types import Entry, EntryKind, HardState
from trioraft.storage.errors import (
    LogCompacted,
    LogUnavailable,
    StorageCorruption,
    StorageError,
    StorageFatalError,
)
from trioraft.storage.fs import FileHandle, FileSystem, OsFileSystem, atomic_write, read_all
from trioraft.storage.ready import ReadyStore, check_hard_state

__all__ = ["DEFAULT_SEGMENT_BYTES", "FileLogStore"]

log = logging.getLogger("trioraft.storage")

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
FRAME_SOFT_BYTES = 1024 * 1024  # a batch larger than this is split into several frames
FRAME_MAX_BYTES = 1 << 31  # no valid frame is larger; a bigger length is damage
FORMAT_VERSION = 1

_HDR = struct.Struct("<BIII")  # version, payload length, payload crc, header crc
_HDR_CHECKED = 9  # the header crc covers version, length and payload crc
# Every byte has four bits set, so no single bit flip of the footer looks
# like a footer cut short and zero-filled (which a torn write can leave).
_FOOTER = b"\xc3\x5a\xa5\x3c"
_FOOTER_SIZE = len(_FOOTER)
_CUT_FOOTERS = frozenset(_FOOTER[:k] + b"\0" * (_FOOTER_SIZE - k) for k in range(_FOOTER_SIZE))
_FRAME = struct.Struct("<QIQQ")  # first index, count, first term, last term
_ENT = struct.Struct("<QBqqHI")  # term, kind, sequence, timestamp, cid len, data len
_SMALL = struct.Struct("<4sBI")  # magic, version, crc of the rest
_HARD = struct.Struct("<QQQ")  # term, vote (0 = none), commit
_BOUND = struct.Struct("<QQ")  # index, term
_INCARNATION_BYTES = 16

_SEGMENT_RE = re.compile(r"^(\d{20})\.log$")
HARD_STATE_FILE = "hardstate"
BOUNDARY_FILE = "boundary"
IDENTITY_FILE = "identity"
_CACHE_FRAMES = 32

_crc = zlib.crc32


def _seal(magic: bytes, payload: bytes) -> bytes:
    return _SMALL.pack(magic, FORMAT_VERSION, _crc(payload)) + payload


def _unseal(magic: bytes, data: bytes, path: str, size: int) -> bytes:
    if len(data) != _SMALL.size + size:
        raise StorageCorruption(f"expected {_SMALL.size + size} bytes, found {len(data)}", path, 0)
    got_magic, version, crc = _SMALL.unpack_from(data)
    if got_magic != magic or version != FORMAT_VERSION:
        raise StorageCorruption(f"bad magic/version {got_magic!r}/{version}", path, 0)
    payload = data[_SMALL.size :]
    if _crc(payload) != crc:
        raise StorageCorruption("checksum mismatch", path, _SMALL.size)
    return payload


@dataclass(slots=True)
class _Segment:
    seq: int
    path: str
    handle: FileHandle
    size: int


@dataclass(slots=True)
class _ScannedFrame:
    offset: int
    first: int
    count: int
    first_term: int
    last_term: int
    runs: list[tuple[int, int]]


def _decode_frame(buf: bytes | memoryview, start: int, end: int) -> list[Entry]:
    """Decode the payload ``buf[start:end]`` (already checksummed)."""
    first, count, _, _ = _FRAME.unpack_from(buf, start)
    p = start + _FRAME.size
    out: list[Entry] = []
    unpack = _ENT.unpack_from
    esize = _ENT.size
    for i in range(count):
        term, kind, seq, ts, cl, dl = unpack(buf, p)
        p += esize
        cid = bytes(buf[p : p + cl]).decode() if cl else ""
        p += cl
        data = bytes(buf[p : p + dl])
        p += dl
        out.append(Entry(first + i, term, EntryKind(kind), data, cid, seq, ts))
    if p != end:
        raise ValueError(f"payload has {end - p} stray bytes")
    return out


class FileLogStore(ReadyStore):
    """A durable Raft log in a directory.  Use :meth:`open`; call ``close()`` when done.

    All methods are blocking; the runtime calls them from a worker thread,
    one at a time.

    Example::

        store = FileLogStore.open("/var/lib/node1/log")
        store.append([Entry(1, 1, EntryKind.NOOP)])
        assert store.last_index() == 1
        store.close()
    """

    def __init__(
        self,
        directory: str,
        fs: FileSystem,
        segment_bytes: int,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._dir = directory
        self._fs = fs
        self._randbytes = randbytes
        self._segment_bytes = segment_bytes
        self._segments: dict[int, _Segment] = {}
        self._active: _Segment | None = None
        self._next_seq = 1
        # Live frames, in log order (which is also file order).
        self._fidx = array("Q")
        self._fcnt = array("Q")
        self._foff = array("Q")
        self._fseg = array("Q")
        # Runs of equal terms covering (boundary, last]: run k starts at _run_idx[k].
        self._run_idx = array("Q")
        self._run_term = array("Q")
        self._b_index = 0
        self._b_term = 0
        self._last = 0
        self._hard = HardState()
        self._incarnation = ""
        self._cache: OrderedDict[tuple[int, int], Sequence[Entry]] = OrderedDict()
        self._broken: str | None = None
        self._closed = False

    # ------------------------------------------------------------------ open

    @classmethod
    def open(
        cls,
        directory: str,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fs: FileSystem | None = None,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> FileLogStore:
        """Open (creating if needed) the log in ``directory`` and recover it.

        ``randbytes`` makes a new directory's incarnation (a simulator seeds it).

        Raises:
            StorageCorruption: durable data is damaged (names file and offset).
            StorageFatalError: an I/O error while recovering.
        """
        if segment_bytes <= 0:
            raise ValueError("segment_bytes must be positive")
        store = cls(directory, fs or OsFileSystem(), segment_bytes, randbytes)
        try:
            store._recover()
        except OSError as exc:
            store._close_handles()
            raise StorageFatalError(f"cannot open log in {directory}: {exc}") from exc
        except BaseException:
            store._close_handles()
            raise
        return store

    def _path(self, name: str) -> str:
        return os.path.join(self._dir, name)

    def _recover(self) -> None:
        fs = self._fs
        fs.makedirs(self._dir)
        names = fs.listdir(self._dir)
        for name in names:
            if name.endswith(".tmp"):
                # An atomic_write that never reached its rename.
                fs.unlink(self._path(name))
        if BOUNDARY_FILE in names:
            path = self._path(BOUNDARY_FILE)
            payload = _unseal(b"TRBD", read_all(fs, path), path, _BOUND.size)
            self._b_index, self._b_term = _BOUND.unpack(payload)
        if HARD_STATE_FILE in names:
            path = self._path(HARD_STATE_FILE)
            payload = _unseal(b"TRHS", read_all(fs, path), path, _HARD.size)
            term, vote, commit = _HARD.unpack(payload)
            self._hard = HardState(term, vote or None, commit)
        path = self._path(IDENTITY_FILE)
        if IDENTITY_FILE in names:
            self._incarnation = _unseal(b"TRID", read_all(fs, path), path, _INCARNATION_BYTES).hex()
        else:
            # A new directory (or one written before incarnations existed).
            ident = self._randbytes(_INCARNATION_BYTES)
            atomic_write(fs, path, _seal(b"TRID", ident))
            self._incarnation = ident.hex()

        seqs = sorted(int(m.group(1)) for n in names if (m := _SEGMENT_RE.match(n)))
        started = False
        for i, seq in enumerate(seqs):
            path = self._path(f"{seq:020d}.log")
            handle = fs.open(path)
            seg = _Segment(seq, path, handle, 0)
            self._segments[seq] = seg
            data = handle.pread(handle.size(), 0)
            frames, valid_end = self._scan(data, path, last=i == len(seqs) - 1)
            if valid_end != len(data):
                log.warning(
                    "%s: truncating torn tail at byte %d (%d bytes)",
                    path,
                    valid_end,
                    len(data) - valid_end,
                )
                handle.truncate(valid_end)
                handle.sync()
            seg.size = valid_end
            for fr in frames:
                if not started:
                    started = True
                    self._last = fr.first - 1
                elif fr.first > self._last + 1:
                    if fr.first > self._b_index + 1:
                        raise StorageCorruption(
                            f"gap: frame starts at index {fr.first}, log ends at {self._last}",
                            path,
                            fr.offset,
                        )
                    # Entries below the boundary were in segments compaction deleted.
                    self._cut(0)
                    self._last = fr.first - 1
                self._add_frame(fr.first, fr.count, fr.runs, seq, fr.offset)
            self._next_seq = seq + 1
        if seqs:
            self._active = self._segments[seqs[-1]]

        b = self._b_index
        discard = (
            self._fidx and self._fidx[0] <= b <= self._last and self._term_at(b) != self._b_term
        )
        if discard:
            # compact() on a log whose entry at the boundary has another term
            # discards the whole log; it crashed before that was durable.
            log.warning("%s: log conflicts with snapshot boundary %d; discarding it", self._dir, b)
            self._write_frames([], b)  # durably, as compact() does
        self._trim_prefix()
        if self._fidx and self._fidx[0] > b + 1:
            seg = self._segments[self._fseg[0]]
            raise StorageCorruption(
                f"log starts at index {self._fidx[0]} but the snapshot boundary is {b}",
                seg.path,
                self._foff[0],
            )
        self._delete_dead_segments()

    def _scan(self, data: bytes, path: str, *, last: bool) -> tuple[list[_ScannedFrame], int]:
        """Validate every frame in one segment's bytes; return them and where valid data ends."""
        frames: list[_ScannedFrame] = []
        mv = memoryview(data)
        n = len(data)
        off = 0
        hsize = _HDR.size
        while off < n:
            rem = n - off
            if rem < hsize or _crc(mv[off : off + _HDR_CHECKED]) != _HDR.unpack_from(data, off)[3]:
                # A real payload starts with a non-zero index, so zeros after the
                # header's slot mean the header itself was cut (then zero-filled).
                if last and (rem < hsize or data.count(0, off + hsize) == n - off - hsize):
                    return frames, off
                raise StorageCorruption("damaged frame header", path, off)
            version, length, pcrc, _ = _HDR.unpack_from(data, off)
            if version != FORMAT_VERSION:
                raise StorageCorruption(f"unknown frame format version {version}", path, off)
            if length < _FRAME.size or length > FRAME_MAX_BYTES:
                raise StorageCorruption(f"impossible frame length {length}", path, off)
            end = off + hsize + length + _FOOTER_SIZE
            if end > n:
                if last:
                    return frames, off
                raise StorageCorruption("frame runs past the end of the file", path, off)
            footer = data[end - _FOOTER_SIZE : end]
            if footer != _FOOTER or _crc(mv[off + hsize : end - _FOOTER_SIZE]) != pcrc:
                if last and footer in _CUT_FOOTERS and data.count(0, end) == n - end:
                    return frames, off  # zero-filled after a cut inside this frame
                raise StorageCorruption("frame checksum mismatch", path, off)
            first, count, ft, lt = _FRAME.unpack_from(data, off + hsize)
            if first == 0 or ft > lt or count * _ENT.size > length - _FRAME.size:
                raise StorageCorruption("inconsistent frame header", path, off)
            runs = [(first, ft)] if count else []
            if ft != lt:
                # Only a frame that spans a term change needs decoding to learn
                # its terms; the others are decoded lazily when read.
                try:
                    ents = _decode_frame(data, off + hsize, end - _FOOTER_SIZE)
                except (ValueError, struct.error) as exc:
                    raise StorageCorruption(f"undecodable frame: {exc}", path, off) from None
                runs = [(e.index, e.term) for e in ents]
            frames.append(_ScannedFrame(off, first, count, ft, lt, runs))
            off = end
        return frames, off

    # ------------------------------------------------------------ in memory

    def _term_at(self, index: int) -> int:
        return self._run_term[bisect_right(self._run_idx, index) - 1]

    def _add_frame(
        self, first: int, count: int, runs: Sequence[tuple[int, int]], seq: int, offset: int
    ) -> None:
        if first <= self._last:
            self._cut(first)
        self._last = first - 1
        if not count:
            return
        self._fidx.append(first)
        self._fcnt.append(count)
        self._foff.append(offset)
        self._fseg.append(seq)
        for start, term in runs:
            if not self._run_term or self._run_term[-1] != term:
                self._run_idx.append(start)
                self._run_term.append(term)
        self._last = first + count - 1

    def _cut(self, index: int) -> None:
        """Forget live entries at and after ``index`` (in memory only)."""
        k = bisect_right(self._fidx, index - 1)
        del self._fidx[k:], self._fcnt[k:], self._foff[k:], self._fseg[k:]
        if k:
            self._fcnt[k - 1] = min(self._fcnt[k - 1], index - self._fidx[k - 1])
        r = bisect_right(self._run_idx, index - 1)
        del self._run_idx[r:], self._run_term[r:]
        self._last = max(index - 1, 0)

    def _trim_prefix(self) -> None:
        """Forget frames and term runs entirely at or below the boundary."""
        b = self._b_index
        k = 0
        n = len(self._fidx)
        while k < n and self._fidx[k] + self._fcnt[k] - 1 <= b:
            k += 1
        del self._fidx[:k], self._fcnt[:k], self._foff[:k], self._fseg[:k]
        if self._last <= b or not self._fidx:
            del self._run_idx[:], self._run_term[:]
            self._last = b
            return
        r = bisect_right(self._run_idx, b + 1) - 1
        if r > 0:
            del self._run_idx[:r], self._run_term[:r]
        if self._run_idx[0] < b + 1:
            self._run_idx[0] = b + 1

    def _delete_dead_segments(self) -> None:
        """Remove segments (other than the active one) that hold no live entry."""
        keep_from = self._fseg[0] if self._fidx else None
        dead = [
            s
            for s in sorted(self._segments)
            if (keep_from is None or s < keep_from)
            and (self._active is None or s != self._active.seq)
        ]
        for s in dead:
            seg = self._segments.pop(s)
            seg.handle.close()
            self._fs.unlink(seg.path)
            self._cache_drop(s)
        if dead:
            self._fs.sync_dir(self._dir)

    def _cache_drop(self, seq: int) -> None:
        for key in [k for k in self._cache if k[0] == seq]:
            del self._cache[key]

    # --------------------------------------------------------------- guards

    @contextmanager
    def _io(self, what: str) -> Iterator[None]:
        if self._closed:
            raise StorageError("log store is closed")
        if self._broken is not None:
            raise StorageFatalError(
                f"log store unusable after an earlier I/O error: {self._broken}"
            )
        try:
            yield
        except OSError as exc:
            self._broken = f"{what}: {exc}"
            raise StorageFatalError(f"{what} failed in {self._dir}: {exc}") from exc

    # ----------------------------------------------------------------- reads

    def first_index(self) -> int:
        """Index of the first entry held (``boundary + 1``; 1 for a fresh log)."""
        return self._b_index + 1

    def last_index(self) -> int:
        """Index of the last entry held, or the boundary index when none is."""
        return self._last

    def boundary(self) -> tuple[int, int]:
        """``(index, term)`` of the last compacted entry; ``(0, 0)`` if none."""
        return self._b_index, self._b_term

    def term(self, index: int) -> int:
        """Term of the entry at ``index``, or of the boundary index.

        Raises:
            LogCompacted: ``index`` is below the boundary.
            LogUnavailable: ``index`` is beyond ``last_index()``.
        """
        if index == self._b_index:
            return self._b_term
        if index < self._b_index:
            raise LogCompacted(f"index {index} is compacted (boundary {self._b_index})")
        if index > self._last:
            raise LogUnavailable(f"index {index} is beyond the last index {self._last}")
        return self._term_at(index)

    def entries(self, lo: int, hi: int, *, max_bytes: int | None = None) -> list[Entry]:
        """Entries with ``lo <= index < hi``.

        With ``max_bytes``, stops once the entries' ``size()`` sum would pass
        it (always returning at least one entry when the range is non-empty).

        Raises:
            LogCompacted: ``lo`` is at or below the boundary.
            LogUnavailable: ``hi`` is beyond ``last_index() + 1``.
        """
        if lo > hi:
            raise ValueError(f"empty range [{lo}, {hi})")
        if lo <= self._b_index:
            raise LogCompacted(f"index {lo} is compacted (boundary {self._b_index})")
        if hi > self._last + 1:
            raise LogUnavailable(f"index {hi - 1} is beyond the last index {self._last}")
        out: list[Entry] = []
        if lo == hi:
            return out
        budget = max_bytes
        k = bisect_right(self._fidx, lo) - 1
        idx = lo
        with self._io("read"):
            while idx < hi:
                first = self._fidx[k]
                stop = min(hi, first + self._fcnt[k])
                frame = self._frame_entries(k)
                for e in frame[idx - first : stop - first]:
                    if budget is not None:
                        budget -= e.size()
                        if budget < 0 and out:
                            return out
                    out.append(e)
                idx = stop
                k += 1
        return out

    def _frame_entries(self, k: int) -> Sequence[Entry]:
        key = (self._fseg[k], self._foff[k])
        got = self._cache.get(key)
        if got is not None:
            self._cache.move_to_end(key)
            return got
        seg = self._segments[key[0]]
        off = key[1]
        head = seg.handle.pread(_HDR.size, off)
        _, length, pcrc, hcrc = _HDR.unpack(head)
        if _crc(head[:_HDR_CHECKED]) != hcrc:
            raise StorageCorruption("damaged frame header", seg.path, off)
        payload = seg.handle.pread(length, off + _HDR.size)
        if _crc(payload) != pcrc:
            raise StorageCorruption("frame checksum mismatch", seg.path, off)
        try:
            ents = _decode_frame(payload, 0, len(payload))
        except (ValueError, struct.error) as exc:
            raise StorageCorruption(f"undecodable frame: {exc}", seg.path, off) from None
        self._cache_put(key, ents)
        return ents

    def _cache_put(self, key: tuple[int, int], ents: Sequence[Entry]) -> None:
        self._cache[key] = ents
        if len(self._cache) > _CACHE_FRAMES:
            self._cache.popitem(last=False)

    # ---------------------------------------------------------------- writes

    def append(self, entries: Sequence[Entry]) -> None:
        """Durably append ``entries``, first replacing any suffix they conflict with.

        ``entries`` must have contiguous indexes and non-decreasing terms; the
        first index must lie in ``[first_index(), last_index() + 1]``.  One
        fdatasync per call (plus a directory sync when a new segment starts).

        Raises:
            ValueError: the batch is malformed or does not fit the log.
            StorageFatalError: an I/O error; stop the node.
        """
        if not entries:
            return
        start = entries[0].index
        if start <= self._b_index:
            raise ValueError(
                f"cannot overwrite index {start}: compacted (boundary {self._b_index})"
            )
        if start > self._last + 1:
            raise ValueError(f"gap: appending index {start} after last index {self._last}")
        with self._io("append"):
            self._write_frames(entries, start)

    def truncate_suffix(self, index: int) -> None:
        """Durably drop every entry with index >= ``index``.

        Raises:
            ValueError: ``index`` is at or below the boundary.
        """
        if index <= self._b_index:
            raise ValueError(f"cannot truncate at {index}: compacted (boundary {self._b_index})")
        if index > self._last:
            return
        with self._io("truncate"):
            self._write_frames([], index)

    def _write_frames(self, entries: Sequence[Entry], start: int) -> None:
        """Encode, write with one pwrite, sync once, then update memory."""
        # An empty frame at the boundary itself (compact's discard) follows
        # nothing readable: the boundary's term stands in.
        prev_term = self._b_term if start - 1 < self._b_index else self.term(start - 1)
        pack = _ENT.pack
        frames: list[tuple[int, int, list[tuple[int, int]], bytes, Sequence[Entry]]] = []
        parts: list[bytes] = []
        runs: list[tuple[int, int]] = []
        frame_first = start
        frame_pos = 0
        frame_bytes = 0
        idx = start
        n = len(entries)
        for pos, e in enumerate(entries):
            if e.index != idx:
                raise ValueError(f"indexes not contiguous: expected {idx}, got {e.index}")
            term = e.term
            if term != prev_term:
                if term < prev_term:
                    raise ValueError(f"term goes backwards at index {idx}: {term} < {prev_term}")
                runs.append((idx, term))
                prev_term = term
            elif not runs:
                runs.append((idx, term))
            cid = e.client_id.encode() if e.client_id else b""
            data = e.data
            parts.append(pack(term, e.kind, e.sequence, e.timestamp_ms, len(cid), len(data)))
            if cid:
                parts.append(cid)
            parts.append(data)
            frame_bytes += _ENT.size + len(cid) + len(data)
            idx += 1
            if frame_bytes >= FRAME_SOFT_BYTES and pos + 1 < n:
                frames.append(
                    self._seal_frame(frame_first, entries, frame_pos, pos + 1, runs, parts)
                )
                frame_first, frame_pos, frame_bytes = idx, pos + 1, 0
                parts, runs = [], []
        frames.append(self._seal_frame(frame_first, entries, frame_pos, n, runs, parts))

        seg = self._active
        new_segment = seg is None or seg.size >= self._segment_bytes
        if new_segment:
            seq = self._next_seq
            path = self._path(f"{seq:020d}.log")
            seg = _Segment(seq, path, self._fs.open(path, create=True), 0)
            seg.handle.truncate(0)
            self._segments[seq] = seg
            self._active = seg
            self._next_seq = seq + 1
        assert seg is not None
        blob = b"".join(f[3] for f in frames) if len(frames) > 1 else frames[0][3]
        seg.handle.pwrite(blob, seg.size)
        seg.handle.sync()
        if new_segment:
            self._fs.sync_dir(self._dir)
        off = seg.size
        for first, count, fruns, data, ents in frames:
            self._add_frame(first, count, fruns, seg.seq, off)
            if count:
                self._cache_put((seg.seq, off), ents)
            off += len(data)
        seg.size = off

    @staticmethod
    def _seal_frame(
        first: int,
        entries: Sequence[Entry],
        lo: int,
        hi: int,
        runs: list[tuple[int, int]],
        parts: list[bytes],
    ) -> tuple[int, int, list[tuple[int, int]], bytes, Sequence[Entry]]:
        count = hi - lo
        ft = runs[0][1] if runs else 0
        lt = runs[-1][1] if runs else 0
        payload = _FRAME.pack(first, count, ft, lt) + b"".join(parts)
        head = struct.pack("<BII", FORMAT_VERSION, len(payload), _crc(payload))
        frame = head + _crc(head).to_bytes(4, "little") + payload + _FOOTER
        return first, count, runs, frame, entries[lo:hi]

    def compact(self, index: int, term: int) -> None:
        """Drop entries up to and including ``index``, the snapshot boundary.

        The boundary (``index``, ``term``) is made durable first; segments
        that hold nothing above it are deleted after.  If the log holds an
        entry at ``index`` with a different term, or ends before ``index``,
        every entry is discarded (Raft's InstallSnapshot rule); otherwise the
        entries after ``index`` are kept.  A boundary at or below the current
        one is ignored: the boundary never moves backwards.
        """
        if index <= self._b_index:
            return
        with self._io("compact"):
            # ``<=``: an entry at the boundary with another term must go from
            # the file even when it is the last one, or recovery takes it for
            # a discard that never became durable (seeds 8114 and 20482).
            discard = index <= self._last and self.term(index) != term
            atomic_write(
                self._fs, self._path(BOUNDARY_FILE), _seal(b"TRBD", _BOUND.pack(index, term))
            )
            self._b_index, self._b_term = index, term
            if discard:
                # The empty frame starts at the boundary, not after it: the
                # old entry at ``index`` must not survive in the file, or
                # recovery takes it for a discard that never became durable
                # and drops the entries appended after the boundary since.
                self._write_frames([], index)
            self._trim_prefix()
            self._delete_dead_segments()

    # ------------------------------------------------------------ hard state
    # ``persist`` (ReadyStore) writes a Ready's parts in ready.py's order.
    # Entries take one fdatasync (group commit).  The hard state is its own
    # file, rewritten atomically with its own sync: it changes only with the
    # term or the vote (the core leaves a commit-only change out), so that
    # sync is paid once per election, not per write.  When a Ready carries
    # both (a follower's first append from a new leader), the new term and
    # vote are made durable before the entries and the commit index after
    # them, so no crash leaves entries of a term above the stored one.  A hard
    # state inside the log's frames would save those syncs but must then
    # survive segment deletion (copied forward into every new segment): a
    # format change not worth one or two fsyncs per term.  A snapshot's
    # boundary likewise has its own file.

    def save_hard_state(self, hs: HardState) -> None:
        """Durably replace the hard state (tmp, sync, rename, sync dir)."""
        check_hard_state(hs)
        with self._io("save hard state"):
            payload = _HARD.pack(hs.term, hs.vote or 0, hs.commit)
            atomic_write(self._fs, self._path(HARD_STATE_FILE), _seal(b"TRHS", payload))
            self._hard = hs

    # ----------------------------------------------------------------- close

    def _close_handles(self) -> None:
        for seg in self._segments.values():
            try:
                seg.handle.close()
            except OSError:
                log.exception("closing %s", seg.path)
        self._segments.clear()
        self._active = None

    def close(self) -> None:
        """Release file handles.  Everything appended is already durable."""
        if not self._closed:
            self._closed = True
            self._close_handles()
            self._cache.clear()

    def __enter__(self) -> FileLogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
