"""A simulated disk for the whole-node simulator: loses unsynced writes, tears, fails.

Theory of operation
===================

One :class:`SimFS` is one node's disk.  Every file is an inode holding its
current bytes, the bytes its last ``sync()`` made durable and the writes
issued since; every directory has its current name table and the one its
last ``sync_dir`` made durable.  It implements
:class:`trioraft.storage.fs.FileSystem`, which the Raft log, the hard state,
the snapshot store and docstore's files all go through.

A disk dies in one of two ways (:meth:`SimFS.power_off`):

* ``"power"``: the machine lost power.  The disk a reboot sees keeps the
  durable name tables (or, per directory, the current ones: the OS may have
  flushed them) and each file's durable bytes plus a prefix of the writes
  issued since (usually none), the last one kept possibly torn, sometimes
  zero-filled past the cut;
* ``"process"``: the process died (a kill, a fatal error); the OS keeps
  everything written, durable or not.

From then on every call on the dead disk raises :class:`PowerLoss` (the
process is gone: nothing more it does reaches the disk), and
:attr:`SimFS.image` is the disk the next incarnation of the node opens.

Faults, drawn from the disk's own seeded random stream: ``crash_after(n)``
loses power at the n-th mutating call from now (between any two storage
operations: a rename done and its directory sync not); ``error_rate`` makes
a mutating call fail with ``EIO`` or ``ENOSPC`` (a failed ``sync`` with
``EIO``; its writes are then as good as lost, which the node must treat as
fatal).  ``unsynced`` names directories whose files' ``sync`` is skipped (a
test-only defect: storage that acknowledges before its data is durable).

Not modelled: reordered writes within a file (the log store reports them as
corruption, loudly), bit flips, a directory's own creation being lost
(``makedirs`` is durable at once), free space (``ENOSPC`` is random).
"""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["PowerLoss", "SimFS"]


class PowerLoss(Exception):
    """The simulated node's disk is gone (power lost or process dead); not an OSError."""


Op = tuple[int, bytes | None, int]  # (offset, data, 0) write or (0, None, size) truncate


@dataclass(eq=False, slots=True)
class _Inode:
    data: bytearray = field(default_factory=bytearray)
    durable: bytearray = field(default_factory=bytearray)
    pending: list[Op] = field(default_factory=list)


def _apply(buf: bytearray, op: Op) -> None:
    off, data, size = op
    if data is None:
        del buf[size:]
        buf.extend(bytes(size - len(buf)))
        return
    if len(buf) < off:
        buf.extend(bytes(off - len(buf)))
    buf[off : off + len(data)] = data


class _Handle:
    __slots__ = ("_fs", "_inode", "_path")

    def __init__(self, fs: SimFS, inode: _Inode, path: str) -> None:
        self._fs = fs
        self._inode = inode
        self._path = path

    def pread(self, size: int, offset: int) -> bytes:
        self._fs._alive()
        return bytes(self._inode.data[offset : offset + size])

    def pwrite(self, data: bytes, offset: int) -> None:
        self._fs._tick("write", self._path)
        op = (offset, bytes(data), 0)
        _apply(self._inode.data, op)
        self._inode.pending.append(op)

    def truncate(self, size: int) -> None:
        self._fs._tick("write", self._path)
        op: Op = (0, None, size)
        _apply(self._inode.data, op)
        self._inode.pending.append(op)

    def sync(self) -> None:
        fs = self._fs
        fs._tick("sync", self._path)
        if fs.unsynced and os.path.dirname(self._path) in fs.unsynced:
            return  # the injected defect: acknowledged, not durable
        ino = self._inode
        for op in ino.pending:
            _apply(ino.durable, op)
        ino.pending.clear()

    def size(self) -> int:
        self._fs._alive()
        return len(self._inode.data)

    def close(self) -> None:
        pass


class SimFS:
    """One node's simulated disk (a :class:`~trioraft.storage.fs.FileSystem`)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.dirs: dict[str, dict[str, _Inode]] = {}
        self.durable_dirs: dict[str, dict[str, _Inode]] = {}
        self.ops = 0
        self.error_rate = 0.0
        self.unsynced: frozenset[str] = frozenset()
        self._crash_at: int | None = None
        self.dead = False
        #: The disk after the death (None while alive).
        self.image: SimFS | None = None
        #: Errors injected so far (``"EIO sync /n1/log/..."``), and when a sync first failed.
        self.injected: list[str] = []
        self.sync_failed = False
        #: Called (with this disk) when a crash point loses power.
        self.on_power_loss: Callable[[SimFS], None] | None = None
        #: Called (with this disk) when an injected error fails a sync.
        self.on_sync_failed: Callable[[SimFS], None] | None = None

    # ----------------------------------------------------------- faults

    def crash_after(self, n: int) -> None:
        """Lose power at the n-th mutating call from now (n >= 1)."""
        self._crash_at = self.ops + n

    def _alive(self) -> None:
        if self.dead:
            raise PowerLoss("the disk is gone")

    def _tick(self, what: str, path: str) -> None:
        self._alive()
        self.ops += 1
        if self._crash_at is not None and self.ops >= self._crash_at:
            self.power_off("power")
            if self.on_power_loss is not None:
                self.on_power_loss(self)
            raise PowerLoss(f"power lost at storage operation {self.ops} ({what} {path})")
        if self.error_rate and self.rng.random() < self.error_rate:
            code = errno.EIO if what == "sync" or self.rng.random() < 0.5 else errno.ENOSPC
            self.injected.append(f"{errno.errorcode[code]} {what} {path}")
            if what == "sync":
                self.sync_failed = True
                if self.on_sync_failed is not None:
                    self.on_sync_failed(self)
            raise OSError(code, os.strerror(code), path)

    def power_off(self, kind: str) -> SimFS:
        """Kill the disk now (``"power"`` or ``"process"``); returns :attr:`image`."""
        if self.image is None:
            self.dead = True
            self.image = self._reboot(flush_all=kind == "process")
        return self.image

    def _reboot(self, *, flush_all: bool) -> SimFS:
        r = self.rng
        new = SimFS(random.Random(r.random()))
        made: dict[int, _Inode] = {}
        for d in self.dirs:
            table = self.dirs[d] if flush_all or r.random() < 0.3 else self.durable_dirs[d]
            new.dirs[d] = {}
            for name in table:
                inode = table[name]
                if id(inode) not in made:
                    made[id(inode)] = self._survivor(inode, flush_all)
                new.dirs[d][name] = made[id(inode)]
            new.durable_dirs[d] = dict(new.dirs[d])
        return new

    def _survivor(self, inode: _Inode, flush_all: bool) -> _Inode:
        if flush_all:
            content = bytearray(inode.data)
        else:
            r = self.rng
            content = bytearray(inode.durable)
            n = len(inode.pending)
            keep = r.randint(0, n) if n and r.random() < 0.4 else 0
            for op in inode.pending[:keep]:
                _apply(content, op)
            if keep < n and r.random() < 0.3:
                off, data, _ = inode.pending[keep]
                if data is not None and data:
                    cut = r.randrange(len(data))
                    part = data[:cut]
                    if r.random() < 0.3:
                        part += bytes(len(data) - cut)  # extended, not yet written: zeros
                    _apply(content, (off, part, 0))
        return _Inode(content, bytearray(content))

    # ------------------------------------------------------- FileSystem

    def _split(self, path: str) -> tuple[dict[str, _Inode], str]:
        d, name = os.path.split(path)
        table = self.dirs.get(d)
        if table is None:
            raise FileNotFoundError(errno.ENOENT, "no such directory", path)
        return table, name

    def open(self, path: str, *, create: bool = False) -> _Handle:
        self._alive()
        table, name = self._split(path)
        inode = table.get(name)
        if inode is None:
            if not create:
                raise FileNotFoundError(errno.ENOENT, "no such file", path)
            self._tick("create", path)
            inode = table[name] = _Inode()
        return _Handle(self, inode, path)

    def listdir(self, path: str) -> list[str]:
        self._alive()
        table = self.dirs.get(path)
        if table is None:
            raise FileNotFoundError(errno.ENOENT, "no such directory", path)
        return sorted(table)

    def makedirs(self, path: str) -> None:
        self._alive()
        path = os.path.normpath(path)
        while path not in self.dirs:
            self.dirs[path] = {}
            self.durable_dirs[path] = {}
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent

    def exists(self, path: str) -> bool:
        self._alive()
        d, name = os.path.split(path)
        return path in self.dirs or name in self.dirs.get(d, {})

    def rename(self, src: str, dst: str) -> None:
        self._tick("rename", dst)
        table, s = self._split(src)
        target, d = self._split(dst)
        if s not in table:
            raise FileNotFoundError(errno.ENOENT, "no such file", src)
        target[d] = table.pop(s)

    def unlink(self, path: str) -> None:
        self._tick("unlink", path)
        table, name = self._split(path)
        if name not in table:
            raise FileNotFoundError(errno.ENOENT, "no such file", path)
        del table[name]

    def sync_dir(self, path: str) -> None:
        self._tick("sync", path + "/")
        self.durable_dirs[path] = dict(self.dirs[path])

    def files(self) -> int:
        return sum(len(t) for t in self.dirs.values())
