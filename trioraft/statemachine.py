"""The contract between trioraft and the application's replicated state.

A state machine receives committed entries in log order, in chunks, and must
apply each chunk atomically and idempotently: an entry whose index is at or
below ``last_applied()`` is skipped (its result is ``None``).  Apply must be
deterministic: the same entries give the same state and results on every
replica, so no clock reads (use ``Entry.timestamp_ms``), no randomness.

Snapshots: ``write_snapshot(path)`` writes the whole state as of
``last_applied()`` to a new file at ``path`` (the state machine writes a temp
file, fsyncs it and renames it into place) and returns its ``SnapshotInfo``.
``restore_snapshot(path, info)`` verifies the file's checksum first and
refuses a bad one with :class:`SnapshotError`, keeping the old state; a good
one replaces the state atomically and durably.

See docs/state-machine.md for the method-by-method mapping to d-engine's
``StateMachine`` trait.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from trioraft.core.types import Entry


class SnapshotError(Exception):
    """A snapshot file is unreadable, truncated or fails its checksum."""


@dataclass(frozen=True, slots=True, order=True)
class LogId:
    """A position in the log: (index, term).  (0, 0) is "nothing applied"."""

    index: int = 0
    term: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """What ``write_snapshot`` produced.

    ``checksum`` is the lowercase hex SHA-256 of the whole file's bytes.
    """

    index: int
    term: int
    checksum: str
    size: int


@runtime_checkable
class StateMachine(Protocol):
    """The replicated application state.  All methods run in the node's Trio task."""

    async def start(self) -> None:
        """Open resources; after it returns ``last_applied()`` is valid."""

    async def apply(self, entries: Sequence[Entry]) -> list[object]:
        """Apply committed entries (atomic per call, idempotent).

        Returns one result per entry, in order: what ``propose`` resolves
        with.  NOOP and CONFIG entries reach the state machine too (so it can
        advance ``last_applied``); their result is ``None``.  A command the
        state machine rejects (bad input, failed condition) yields an error
        *result*, identical on every replica: raising stops the node.
        """
        ...

    async def query(self, query: object) -> object:
        """Answer a read against the current state (no log entry)."""

    def last_applied(self) -> LogId:
        """The id of the last entry whose effects are in the state."""
        ...

    async def write_snapshot(self, path: str) -> SnapshotInfo:
        """Write the whole state (as of ``last_applied()``) to ``path``, durably."""
        ...

    async def restore_snapshot(self, path: str, info: SnapshotInfo) -> None:
        """Verify ``path`` against ``info.checksum``, then replace the state with it."""

    async def flush(self) -> None:
        """Make everything applied so far durable."""

    async def close(self) -> None:
        """Flush and release resources.  The object is not used afterwards."""
