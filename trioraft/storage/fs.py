"""The few file-system operations storage needs, behind a small interface.

Theory of operation: every durable structure in this package is built from
five primitives -- positional write, truncate, data sync, rename and
directory sync -- and nothing else.  Routing them through :class:`FileSystem`
lets the crash tests substitute a model file system that remembers exactly
which bytes each sync made durable, then "loses power" and tears the writes
that were still in flight.  :class:`OsFileSystem` is the real one.

Durability rules the callers follow (and the model enforces):

* file contents are durable after ``FileHandle.sync()`` of that file;
* a created, renamed or unlinked name is durable after ``sync_dir`` of its
  directory (ext4 usually does it sooner; nothing here relies on that).
"""

from __future__ import annotations

import os
from typing import Protocol


class FileHandle(Protocol):
    def pread(self, size: int, offset: int) -> bytes: ...

    def pwrite(self, data: bytes, offset: int) -> None: ...

    def truncate(self, size: int) -> None: ...

    def sync(self) -> None: ...

    def size(self) -> int: ...

    def close(self) -> None: ...


class FileSystem(Protocol):
    def open(self, path: str, *, create: bool = False) -> FileHandle:
        """Open read-write; ``create`` makes an empty file if it is missing."""
        ...

    def listdir(self, path: str) -> list[str]: ...

    def makedirs(self, path: str) -> None: ...

    def exists(self, path: str) -> bool: ...

    def rename(self, src: str, dst: str) -> None: ...

    def unlink(self, path: str) -> None: ...

    def sync_dir(self, path: str) -> None: ...


class OsFileHandle:
    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def pread(self, size: int, offset: int) -> bytes:
        chunks: list[bytes] = []
        while size > 0:
            got = os.pread(self._fd, size, offset)
            if not got:
                break
            chunks.append(got)
            size -= len(got)
            offset += len(got)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def pwrite(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            view = view[n:]
            offset += n

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)

    def sync(self) -> None:
        # fdatasync also flushes the size change an append makes, which is all
        # the metadata a reader needs.  Looked up at each call, so a test can
        # make it fail.
        getattr(os, "fdatasync", os.fsync)(self._fd)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class OsFileSystem:
    """The real file system."""

    def open(self, path: str, *, create: bool = False) -> FileHandle:
        flags = os.O_RDWR | (os.O_CREAT if create else 0) | getattr(os, "O_CLOEXEC", 0)
        return OsFileHandle(os.open(path, flags, 0o644))

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def makedirs(self, path: str) -> None:
        if os.path.isdir(path):
            return
        os.makedirs(path, exist_ok=True)
        # Make the new directory's own name durable in its parent.
        self.sync_dir(os.path.dirname(os.path.abspath(path)))

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def sync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(fs: FileSystem, path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file.

    tmp + write + sync + rename + sync dir: the rename is only issued once
    the new bytes are durable, and the call returns only once the rename is.
    """
    tmp = path + ".tmp"
    handle = fs.open(tmp, create=True)
    try:
        handle.truncate(0)
        handle.pwrite(data, 0)
        handle.sync()
    finally:
        handle.close()
    fs.rename(tmp, path)
    fs.sync_dir(os.path.dirname(path) or ".")


def read_all(fs: FileSystem, path: str) -> bytes:
    handle = fs.open(path)
    try:
        return handle.pread(handle.size(), 0)
    finally:
        handle.close()
