"""Framed, checksummed records and atomic file replacement (blocking; run in a thread).

A file is an 8-byte magic followed by records: ``u32 length | u32 crc32 |
payload`` (little endian, CRC over the payload).  Reading stops at the first
bad record: if nothing but zeros or a partial record follows, that is a torn
tail (a write the crash interrupted, never acknowledged) and the caller may
truncate it; anything else is corruption, reported with file and offset.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from docstore.engine.errors import CorruptionError
from trioraft.storage.fs import FileSystem, OsFileSystem, read_all

_OS = OsFileSystem()

HEADER = struct.Struct("<II")
MAX_RECORD = 1 << 30


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass(frozen=True, slots=True)
class ReadResult:
    records: list[bytes]
    good_end: int  # offset just past the last good record
    torn: bool  # bytes after good_end are a torn tail


def parse(data: bytes, magic: bytes, name: str) -> ReadResult:
    """Split ``data`` into records; raises CorruptionError for damage before the tail."""
    if data[: len(magic)] != magic:
        if len(data) < len(magic) and magic.startswith(data):
            return ReadResult([], 0, True)
        raise CorruptionError(f"{name}: bad file header (not a docstore file?)")
    pos = len(magic)
    out: list[bytes] = []
    n = len(data)
    while pos < n:
        if pos + HEADER.size > n:
            return ReadResult(out, pos, True)
        length, crc = HEADER.unpack_from(data, pos)
        end = pos + HEADER.size + length
        if length == 0 or length > MAX_RECORD or end > n:
            if end > n or not any(data[pos:]):
                return ReadResult(out, pos, True)
            raise CorruptionError(f"{name}: bad record length at offset {pos}")
        payload = data[pos + HEADER.size : end]
        if zlib.crc32(payload) != crc:
            if end == n or not any(data[end:]):
                return ReadResult(out, pos, True)
            raise CorruptionError(f"{name}: checksum mismatch in record at offset {pos}")
        out.append(payload)
        pos = end
    return ReadResult(out, pos, False)


def fsync_dir(path: str, fs: FileSystem | None = None) -> None:
    (fs or _OS).sync_dir(path or ".")


def write_atomic(path: str, chunks: Iterable[bytes], fs: FileSystem | None = None) -> None:
    """Write ``chunks`` to ``path`` via tmp file, fsync, rename, fsync directory.

    ``fs`` is the file system to use (default: the real one; the whole-node
    simulator passes a model that loses unsynced writes).
    """
    fs = fs or _OS
    tmp = path + ".tmp"
    handle = fs.open(tmp, create=True)
    try:
        handle.truncate(0)
        buf: list[bytes] = []
        size = offset = 0
        for c in chunks:
            buf.append(c)
            size += len(c)
            if size >= 1 << 20:
                handle.pwrite(b"".join(buf), offset)
                offset += size
                buf, size = [], 0
        handle.pwrite(b"".join(buf), offset)
        handle.sync()
    finally:
        handle.close()
    fs.rename(tmp, path)
    fs.sync_dir(os.path.dirname(os.path.abspath(path)))


def read_file(path: str, fs: FileSystem | None = None) -> bytes:
    """The whole content of ``path``."""
    return read_all(fs or _OS, path)
