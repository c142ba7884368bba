"""Durable storage: the Raft log, the hard state and snapshot files.

Everything here is synchronous, blocking file I/O; the Trio runtime calls it
from a worker thread (one call at a time per store).  The contract every log
store keeps is :class:`LogStore`; ``trioraft.testing.storage_suite`` checks it.

An :class:`StorageFatalError` from any call means the node's durable state
is unknown: the runtime must stop the node, not retry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from trioraft.core.types import Entry, HardState, SnapshotMeta
from trioraft.storage.errors import (
    LogCompacted,
    LogUnavailable,
    StorageCorruption,
    StorageError,
    StorageFatalError,
)
from trioraft.storage.log import FileLogStore
from trioraft.storage.memory import MemoryLogStore
from trioraft.storage.snapshots import SnapshotReceiver, SnapshotStore


class LogStore(Protocol):
    """What the runtime and the simulator need from a log store."""

    def first_index(self) -> int: ...
    def last_index(self) -> int: ...
    def boundary(self) -> tuple[int, int]: ...
    def term(self, index: int) -> int: ...
    def entries(self, lo: int, hi: int, *, max_bytes: int | None = None) -> list[Entry]: ...
    def append(self, entries: Sequence[Entry]) -> None: ...
    def truncate_suffix(self, index: int) -> None: ...
    def compact(self, index: int, term: int) -> None: ...
    def incarnation(self) -> str: ...
    def hard_state(self) -> HardState: ...
    def save_hard_state(self, hs: HardState) -> None: ...
    def persist(
        self, hard_state: HardState | None, entries: Sequence[Entry], snapshot: SnapshotMeta | None
    ) -> None:
        """One Ready's write (snapshot boundary, entries, hard state); durable on return."""
        ...

    def close(self) -> None: ...


__all__ = [
    "FileLogStore",
    "LogCompacted",
    "LogStore",
    "LogUnavailable",
    "MemoryLogStore",
    "SnapshotReceiver",
    "SnapshotStore",
    "StorageCorruption",
    "StorageError",
    "StorageFatalError",
]
