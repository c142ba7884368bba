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
from typing import Any, cast

from docstore.engine.errors import CorruptionError
from docstore.engine.values import compact_json
from docstore.storage.records import frame, fsync_dir, parse, read_file, write_atomic
from trioraft.storage.fs import FileHandle, FileSystem, OsFileSystem

MAGIC = b"DOCSTOR1"
_dumps = compact_json(allow_nan=False)


def encode_record(rev: int, effects: list[list[Any]], **extra: Any) -> bytes:
    return frame(_dumps({"r": rev, "fx": effects, **extra}).encode())


class DataFile:
    """Blocking file operations; :class:`docstore.Database` calls them from a thread."""

    def __init__(self, path: str, *, sync: bool = True, fs: FileSystem | None = None) -> None:
        self.path = path
        self.sync = sync
        self.fs = fs or OsFileSystem()
        self._handle: FileHandle | None = None
        self.size = 0

    def load(self) -> list[dict[str, Any]]:
        """Open (creating if needed), truncate a torn tail, return the records."""
        fs = self.fs
        tmp = self.path + ".tmp"
        if fs.exists(tmp):  # a compaction that did not finish
            fs.unlink(tmp)
        if not fs.exists(self.path):
            write_atomic(self.path, [MAGIC], fs)
        data = read_file(self.path, fs)
        res = parse(data, MAGIC, self.path)
        records = _decode_records(res.records, self.path)
        self._handle = handle = fs.open(self.path)
        if res.good_end < len(MAGIC):
            handle.truncate(0)
            handle.pwrite(MAGIC, 0)
            self.size = len(MAGIC)
            handle.sync()
        elif res.torn or res.good_end != len(data):
            handle.truncate(res.good_end)
            handle.sync()
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
        assert self._handle is not None, "load() first"
        self._handle.pwrite(data, self.size)
        self.size += len(data)

    def flush(self) -> None:
        if self.sync:
            assert self._handle is not None, "load() first"
            self._handle.sync()

    def rewrite(self, records: Iterable[bytes]) -> None:
        """Replace the file with ``records`` atomically (compaction)."""
        write_atomic(self.path, _with_magic(records), self.fs)
        old = self._handle
        self._handle = self.fs.open(self.path)
        self.size = self._handle.size()
        if old is not None:
            old.close()
        fsync_dir(os.path.dirname(os.path.abspath(self.path)), self.fs)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _decode_records(payloads: list[bytes], path: str) -> list[dict[str, Any]]:
    """The records' JSON, each checked to be ``{"r": int, "fx": list, ...}``.

    Parsed as one JSON array first (a restart replays the whole log, and one
    parse of the lot costs less than half of one per record); when that
    fails, or gives another count, record by record, which names the bad one.
    """
    records: Any = None
    if payloads:
        try:
            records = json.loads(b"[" + b",".join(payloads) + b"]")
        except ValueError:
            records = None
    if type(records) is not list or len(records) != len(payloads):
        records = []
        for i, payload in enumerate(payloads):
            try:
                records.append(json.loads(payload))
            except ValueError as exc:
                raise CorruptionError(f"{path}: undecodable record #{i}: {exc}") from None
    for i, obj in enumerate(records):
        if (
            type(obj) is not dict
            or type(obj.get("r")) is not int
            or type(obj.get("fx")) is not list
        ):
            raise CorruptionError(f"{path}: undecodable record #{i}: not a record")
    return cast("list[dict[str, Any]]", records)


def _with_magic(records: Iterable[bytes]) -> Iterable[bytes]:
    yield MAGIC
    yield from records
