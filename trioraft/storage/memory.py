"""An in-memory log store with the same contract as :class:`FileLogStore`.

Theory of operation: a Python list of entries after the snapshot boundary,
plus the boundary and the hard state.  It validates exactly what the file
store validates and raises the same errors, so the conformance suite and the
simulator can treat the two as interchangeable.  Every call is "durable" the
moment it returns: the object itself plays the disk, so a simulated crash is
modelled by keeping the object and rebuilding everything else around it
(``crash()`` is a no-op kept for symmetry with fault-injecting stores).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from trioraft.core.types import Entry, HardState
from trioraft.storage.errors import LogCompacted, LogUnavailable, StorageError
from trioraft.storage.ready import ReadyStore, check_hard_state

__all__ = ["MemoryLogStore"]


class MemoryLogStore(ReadyStore):
    """A volatile log store for tests and the simulator.

    Example::

        store = MemoryLogStore()
        store.append([Entry(1, 1)])
        assert store.term(1) == 1
    """

    def __init__(self) -> None:
        self._entries: list[Entry] = []
        self._b_index = 0
        self._b_term = 0
        self._hard = HardState()
        self._incarnation = secrets.token_hex(16)
        self._closed = False

    @classmethod
    def open(cls, directory: str = "", **_ignored: object) -> MemoryLogStore:
        """A fresh, empty store (``directory`` is accepted and ignored)."""
        return cls()

    def reopen(self) -> MemoryLogStore:
        """The store as a restarted process would find it: same contents, open again."""
        self._closed = False
        return self

    def crash(self) -> None:
        """Nothing is ever unsynced here, so a crash loses nothing."""

    def _check(self) -> None:
        if self._closed:
            raise StorageError("log store is closed")

    # ----------------------------------------------------------------- reads

    def first_index(self) -> int:
        return self._b_index + 1

    def last_index(self) -> int:
        return self._b_index + len(self._entries)

    def boundary(self) -> tuple[int, int]:
        return self._b_index, self._b_term

    def term(self, index: int) -> int:
        self._check()
        if index == self._b_index:
            return self._b_term
        if index < self._b_index:
            raise LogCompacted(f"index {index} is compacted (boundary {self._b_index})")
        if index > self.last_index():
            raise LogUnavailable(f"index {index} is beyond the last index {self.last_index()}")
        return self._entries[index - self._b_index - 1].term

    def entries(self, lo: int, hi: int, *, max_bytes: int | None = None) -> list[Entry]:
        self._check()
        if lo > hi:
            raise ValueError(f"empty range [{lo}, {hi})")
        if lo <= self._b_index:
            raise LogCompacted(f"index {lo} is compacted (boundary {self._b_index})")
        if hi > self.last_index() + 1:
            raise LogUnavailable(f"index {hi - 1} is beyond the last index {self.last_index()}")
        out = self._entries[lo - self._b_index - 1 : hi - self._b_index - 1]
        if max_bytes is None:
            return out
        total = 0
        for n, e in enumerate(out):
            total += e.size()
            if total > max_bytes and n:
                return out[:n]
        return out

    # ---------------------------------------------------------------- writes

    def append(self, entries: Sequence[Entry]) -> None:
        self._check()
        if not entries:
            return
        start = entries[0].index
        if start <= self._b_index:
            raise ValueError(f"cannot overwrite index {start}: boundary is {self._b_index}")
        if start > self.last_index() + 1:
            raise ValueError(f"gap: appending index {start} after last index {self.last_index()}")
        prev = self.term(start - 1)
        for expect, e in enumerate(entries, start):
            if e.index != expect:
                raise ValueError(f"indexes not contiguous: expected {expect}, got {e.index}")
            if e.term < prev:
                raise ValueError(f"term goes backwards at index {expect}: {e.term} < {prev}")
            prev = e.term
        del self._entries[start - self._b_index - 1 :]
        self._entries.extend(entries)

    def truncate_suffix(self, index: int) -> None:
        self._check()
        if index <= self._b_index:
            raise ValueError(f"cannot truncate at {index}: compacted (boundary {self._b_index})")
        del self._entries[index - self._b_index - 1 :]

    def compact(self, index: int, term: int) -> None:
        self._check()
        if index <= self._b_index:
            return
        if index <= self.last_index() and self.term(index) == term:
            del self._entries[: index - self._b_index]
        else:
            self._entries.clear()
        self._b_index, self._b_term = index, term

    def save_hard_state(self, hs: HardState) -> None:
        self._check()
        check_hard_state(hs)
        self._hard = hs

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> MemoryLogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
