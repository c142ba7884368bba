"""A model file system that loses power on demand.

Theory of operation: every file is an inode holding its current bytes, the
bytes its last ``sync()`` made durable, and the writes issued since.  Every
directory has a current name table and the table its last ``sync_dir`` made
durable.  ``crash()`` builds the file system a rebooted machine would see:
durable name tables, durable contents, and optionally one inode's pending
writes replayed up to a cut point (a torn write), possibly zero-filled past
the cut (what XFS shows after a crash that extended a file).  ``fail_after``
raises :class:`PowerLoss` at the n-th mutating call, so a test can stop an
operation between any two of its system calls.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


class PowerLoss(Exception):
    """The simulated machine lost power (deliberately not an OSError)."""


@dataclass
class Outage:
    """Whether the block run under :func:`power_cut` lost power."""

    happened: bool = False


@contextmanager
def power_cut(fs: FaultFS, at: int) -> Iterator[Outage]:
    """Lose power at the ``at``-th mutating call made in the block, which ends there.

    Power is back on (``fail_at`` cleared) after the block, so the test can
    reboot from ``fs.crash_variants()``; ``Outage.happened`` is False when
    the block finished first, i.e. every cut point of it has been covered.
    """
    outage = Outage()
    fs.fail_after(at)
    try:
        yield outage
    except PowerLoss:
        outage.happened = True
    finally:
        fs.fail_at = None


@dataclass(eq=False)
class Inode:
    data: bytearray = field(default_factory=bytearray)
    durable: bytes = b""
    pending: list[tuple[int, bytes | None, int]] = field(default_factory=list)
    # pending ops: (offset, bytes, 0) for a write or (0, None, size) for a truncate


def _apply(buf: bytearray, op: tuple[int, bytes | None, int]) -> None:
    off, data, size = op
    if data is None:
        del buf[size:]
        buf.extend(b"\0" * (size - len(buf)))
        return
    if len(buf) < off:
        buf.extend(b"\0" * (off - len(buf)))
    buf[off : off + len(data)] = data


class FaultHandle:
    def __init__(self, fs: FaultFS, inode: Inode) -> None:
        self._fs = fs
        self._inode = inode

    def pread(self, size: int, offset: int) -> bytes:
        return bytes(self._inode.data[offset : offset + size])

    def pwrite(self, data: bytes, offset: int) -> None:
        self._fs.tick()
        op = (offset, bytes(data), 0)
        _apply(self._inode.data, op)
        self._inode.pending.append(op)

    def truncate(self, size: int) -> None:
        self._fs.tick()
        op = (0, None, size)
        _apply(self._inode.data, op)
        self._inode.pending.append(op)

    def sync(self) -> None:
        self._fs.tick()
        self._inode.durable = bytes(self._inode.data)
        self._inode.pending.clear()

    def size(self) -> int:
        return len(self._inode.data)

    def close(self) -> None:
        pass


class FaultFS:
    def __init__(self) -> None:
        self.dirs: dict[str, dict[str, Inode]] = {}
        self.durable_dirs: dict[str, dict[str, Inode]] = {}
        self.ops = 0
        self.fail_at: int | None = None

    def tick(self) -> None:
        self.ops += 1
        if self.fail_at is not None and self.ops >= self.fail_at:
            raise PowerLoss(f"power lost at mutation {self.ops}")

    def fail_after(self, n: int) -> None:
        """Lose power at the n-th mutating call from now (n >= 1)."""
        self.fail_at = self.ops + n

    def _split(self, path: str) -> tuple[dict[str, Inode], str]:
        d, name = os.path.split(path)
        if d not in self.dirs:
            raise FileNotFoundError(path)
        return self.dirs[d], name

    # FileSystem protocol -------------------------------------------------

    def open(self, path: str, *, create: bool = False) -> FaultHandle:
        table, name = self._split(path)
        if name not in table:
            if not create:
                raise FileNotFoundError(path)
            self.tick()
            table[name] = Inode()
        return FaultHandle(self, table[name])

    def listdir(self, path: str) -> list[str]:
        return list(self.dirs[path])

    def makedirs(self, path: str) -> None:
        if path not in self.dirs:
            self.dirs[path] = {}
            self.durable_dirs[path] = {}

    def exists(self, path: str) -> bool:
        d, name = os.path.split(path)
        return path in self.dirs or name in self.dirs.get(d, {})

    def rename(self, src: str, dst: str) -> None:
        self.tick()
        table, s = self._split(src)
        _, d = self._split(dst)
        table[d] = table.pop(s)

    def unlink(self, path: str) -> None:
        self.tick()
        table, name = self._split(path)
        del table[name]

    def sync_dir(self, path: str) -> None:
        self.tick()
        self.durable_dirs[path] = dict(self.dirs[path])

    # crashes ---------------------------------------------------------------

    def crash(
        self,
        tear: tuple[Inode, int, int] | None = None,
        *,
        zero_fill: bool = False,
        current_dirs: bool = False,
        flush_all: bool = False,
    ) -> FaultFS:
        """The file system after a power cut.

        ``tear=(inode, k, cut)`` keeps that inode's first ``k`` pending ops
        and the first ``cut`` bytes of op ``k``.  ``current_dirs`` keeps the
        unsynced name tables (the OS happened to flush them); ``flush_all``
        keeps every pending write.
        """
        new = FaultFS()
        made: dict[int, Inode] = {}
        src = self.dirs if current_dirs else self.durable_dirs
        for d, table in src.items():
            new.dirs[d] = {}
            for name, inode in table.items():
                if id(inode) not in made:
                    if flush_all:
                        content = bytearray(inode.data)
                    else:
                        content = bytearray(inode.durable)
                        if tear is not None and tear[0] is inode:
                            _, k, cut = tear
                            for op in inode.pending[:k]:
                                _apply(content, op)
                            off, data, _size = inode.pending[k]
                            if data is not None:
                                part = data[:cut] + (
                                    b"\0" * (len(data) - cut) if zero_fill else b""
                                )
                                _apply(content, (off, part, 0))
                    made[id(inode)] = Inode(content, bytes(content))
                new.dirs[d][name] = made[id(inode)]
            new.durable_dirs[d] = dict(new.dirs[d])
        return new

    def crash_variants(self, *, step: int = 1) -> Iterator[FaultFS]:
        """Every crash outcome this model allows for the writes now in flight."""
        yield self.crash()
        yield self.crash(current_dirs=True)
        yield self.crash(current_dirs=True, flush_all=True)
        seen: set[int] = set()
        for table in list(self.durable_dirs.values()) + list(self.dirs.values()):
            for inode in table.values():
                if id(inode) in seen:
                    continue
                seen.add(id(inode))
                for k, (_, data, _) in enumerate(inode.pending):
                    if data is None:
                        for cur in (False, True):
                            yield self.crash((inode, k, 0), current_dirs=cur)
                        continue
                    for cut in range(0, len(data) + 1, step):
                        for cur in (False, True):
                            yield self.crash((inode, k, cut), current_dirs=cur)
                        yield self.crash((inode, k, cut), zero_fill=True, current_dirs=True)

    def files(self) -> Iterator[tuple[str, Inode]]:
        for d, table in self.dirs.items():
            for name, inode in table.items():
                yield os.path.join(d, name), inode
