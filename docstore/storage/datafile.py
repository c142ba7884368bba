"""The embedded data file: an append-only log of effect records, group-committed.

Each record is one applied command's effects as JSON,
``{"r": rev, "fx": [["put", coll, key, doc], ["del", coll, key], ...]}``.  The
documents themselves live in memory (the key directory holds the documents,
so gets never touch the disk); the file is replayed on open.  A torn tail is
truncated on open; :meth:`DataFile.rewrite` compacts by writing the live
state to ``NAME.tmp`` and renaming it over the file (then fsyncing the
directory), so a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from docstore.engine.errors import CorruptionError
from docstore.storage.records import frame, fsync_dir, parse, write_atomic

MAGIC = b"DOCSTOR1"
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def encode_record(rev: int, effects: list[list[Any]], **extra: Any) -> bytes:
    return frame(_dumps({"r": rev, "fx": effects, **extra}).encode())


class DataFile:
    """Blocking file operations; :class:`docstore.Database` calls them from a thread."""

    def __init__(self, path: str, *, sync: bool = True) -> None:
        self.path = path
        self.sync = sync
        self._fd = -1
        self.size = 0

    def load(self) -> list[dict[str, Any]]:
        """Open (creating if needed), truncate a torn tail, return the records."""
        tmp = self.path + ".tmp"
        if os.path.exists(tmp):  # a compaction that did not finish
            os.unlink(tmp)
        if not os.path.exists(self.path):
            write_atomic(self.path, [MAGIC])
        with open(self.path, "rb") as f:
            data = f.read()
        res = parse(data, MAGIC, self.path)
        records: list[dict[str, Any]] = []
        for i, payload in enumerate(res.records):
            try:
                obj = json.loads(payload)
                if not isinstance(obj, dict) or not isinstance(obj["r"], int):
                    raise TypeError("not a record")
                if not isinstance(obj["fx"], list):
                    raise TypeError("not a record")
                records.append(obj)
            except (ValueError, KeyError, TypeError) as exc:
                raise CorruptionError(f"{self.path}: undecodable record #{i}: {exc}") from None
        self._fd = os.open(self.path, os.O_RDWR)
        if res.good_end < len(MAGIC):
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, MAGIC, 0)
            self.size = len(MAGIC)
            os.fsync(self._fd)
        elif res.torn or res.good_end != len(data):
            os.ftruncate(self._fd, res.good_end)
            os.fsync(self._fd)
            self.size = res.good_end
        else:
            self.size = len(data)
        return records

    def append(self, data: bytes) -> None:
        """Write ``data`` at the end and make it durable (raises OSError on failure)."""
        self.write(data)
        self.flush()

    def write(self, data: bytes) -> None:
        """Write ``data`` at the end (to the OS; :meth:`flush` makes it durable)."""
        view = memoryview(data)
        off = self.size
        while view:
            n = os.pwrite(self._fd, view, off)
            off += n
            view = view[n:]
        self.size = off

    def flush(self) -> None:
        if self.sync:
            os.fdatasync(self._fd)

    def rewrite(self, records: Iterable[bytes]) -> None:
        """Replace the file with ``records`` atomically (compaction)."""
        write_atomic(self.path, _with_magic(records))
        old = self._fd
        self._fd = os.open(self.path, os.O_RDWR)
        self.size = os.fstat(self._fd).st_size
        os.close(old)
        fsync_dir(os.path.dirname(os.path.abspath(self.path)))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _with_magic(records: Iterable[bytes]) -> Iterable[bytes]:
    yield MAGIC
    yield from records
