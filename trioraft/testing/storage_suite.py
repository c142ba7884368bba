"""Conformance tests every Raft log store must pass.

Theory of operation: the suite is a plain class whose ``test_*`` methods
pytest collects once a subclass named ``Test...`` provides two hooks:

* ``make_store(self, path) -> LogStore``: a fresh store in directory ``path``;
* ``reopen(self, store, path) -> LogStore``: close ``store`` and return what a
  restarted process would find (for an in-memory store, the same object).

Each case states one rule of the contract in its name.  Example::

    class TestMyStore(LogStoreSuite):
        def make_store(self, path: str) -> LogStore:
            return MyStore.open(path)

        def reopen(self, store: LogStore, path: str) -> LogStore:
            store.close()
            return MyStore.open(path)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trioraft.core.types import Entry, EntryKind, HardState, Membership, SnapshotMeta
from trioraft.storage import LogStore

__all__ = ["LogStoreSuite", "entries"]


def entries(lo: int, hi: int, term: int = 1, *, size: int = 10) -> list[Entry]:
    """Entries ``lo..hi-1`` in ``term`` with distinguishable payloads."""
    return [
        Entry(i, term, EntryKind.NORMAL, f"{i}:{term}".encode().ljust(size, b"."), "c", i, 1000 + i)
        for i in range(lo, hi)
    ]


class LogStoreSuite:
    """Subclass and implement :meth:`make_store` and :meth:`reopen`."""

    def make_store(self, path: str) -> LogStore:
        raise NotImplementedError

    def reopen(self, store: LogStore, path: str) -> LogStore:
        raise NotImplementedError

    def _store(self, tmp_path: Path) -> tuple[LogStore, str]:
        path = str(tmp_path / "log")
        return self.make_store(path), path

    # ------------------------------------------------------------------ empty

    def test_empty_store(self, tmp_path: Path) -> None:
        s, _ = self._store(tmp_path)
        assert s.first_index() == 1
        assert s.last_index() == 0
        assert s.term(0) == 0
        assert s.entries(1, 1) == []
        assert s.hard_state() == HardState()
        with pytest.raises(IndexError):
            s.term(1)
        with pytest.raises(IndexError):
            s.entries(1, 2)
        s.close()

    def test_empty_store_reopens_empty(self, tmp_path: Path) -> None:
        s, path = self._store(tmp_path)
        s = self.reopen(s, path)
        assert (s.first_index(), s.last_index()) == (1, 0)
        s.close()

    # ----------------------------------------------------------------- append

    def test_append_and_read_back(self, tmp_path: Path) -> None:
        s, _ = self._store(tmp_path)
        batch = entries(1, 6)
        batch[2] = Entry(3, 1, EntryKind.CONFIG, Membership(frozenset({1, 2})).encode())
        s.append(batch)
        assert s.last_index() == 5
        assert s.entries(1, 6) == batch
        assert [s.term(i) for i in range(0, 6)] == [0, 1, 1, 1, 1, 1]
        s.close()

    def test_read_ranges(self, tmp_path: Path) -> None:
        s, _ = self._store(tmp_path)
        want = entries(1, 4) + entries(4, 8, 2) + entries(8, 20, 3)
        for i in range(0, len(want), 3):
            s.append(want[i : i + 3])
        for lo in range(1, 20):
            for hi in range(lo, 21):
                assert s.entries(lo, hi) == want[lo - 1 : hi - 1]
        with pytest.raises(IndexError):
            s.entries(5, 21)
        with pytest.raises(ValueError):
            s.entries(5, 4)
        s.close()

    def test_entries_max_bytes_returns_at_least_one(self, tmp_path: Path) -> None:
        s, _ = self._store(tmp_path)
        s.append(entries(1, 11, size=100))
        assert len(s.entries(1, 11, max_bytes=1)) == 1
        got = s.entries(1, 11, max_bytes=3 * entries(1, 2, size=100)[0].size())
        assert [e.index for e in got] == [1, 2, 3]
        s.close()

    def test_append_rejects_gaps_and_disorder(self, tmp_path: Path) -> None:
        s, _ = self._store(tmp_path)
        with pytest.raises(ValueError):
            s.append(entries(2, 3))
        s.append(entries(1, 3, term=2))
        with pytest.raises(ValueError):
            s.append(entries(5, 6, term=2))
        with pytest.raises(ValueError):
            s.append([Entry(3, 2), Entry(5, 2)])
        with pytest.raises(ValueError):
            s.append(entries(3, 4, term=1))  # term goes backwards
        assert s.entries(1, 3) == entries(1, 3, term=2)
        s.append([])
        assert s.last_index() == 2
        s.close()

    def test_append_conflict_truncates_suffix(self, tmp_path: Path) -> None:
        s, path = self._store(tmp_path)
        s.append(entries(1, 10))
        s.append(entries(5, 7, term=2))
        want = entries(1, 5) + entries(5, 7, term=2)
        assert s.last_index() == 6
        assert s.entries(1, 7) == want
        assert s.term(6) == 2
        with pytest.raises(IndexError):
            s.term(7)
        s = self.reopen(s, path)
        assert s.entries(1, 7) == want
        s.append(entries(7, 9, term=2))
        assert s.last_index() == 8
        s.close()

    def test_conflict_at_first_index_replaces_everything(self, tmp_path: Path) -> None:
        s, path = self._store(tmp_path)
        s.append(entries(1, 5))
        s.append(entries(1, 3, term=2))
        s = self.reopen(s, path)
        assert s.entries(1, 3) == entries(1, 3, term=2)
        assert s.last_index() == 2
        s.close()

    # --------------------------------------------------------------- truncate

    def test_truncate_suffix(self, tmp_path: Path) -> None:
        s, path = self._store(tmp_path)
        s.append(entries(1, 10))
        s.truncate_suffix(6)
        assert s.last_index() == 5
        s.truncate_suffix(100)  # beyond the end: nothing to do
        assert s.last_index() == 5
        s = self.reopen(s, path)
        assert s.last_index() == 5
        assert s.entries(1, 6) == entries(1, 6)
        s.truncate_suffix(1)
        assert s.last_index() == 0
        s = self.reopen(s, path)
        assert (s.first_index(), s.last_index()) == (1, 0)
        s.append(entries(1, 3, term=4))
        assert s.term(2) == 4
        s.close()

    # ---------------------------------------------------------------- compact

    def test_compact_keeps_suffix_and_boundary_term(self, tmp_path: Path) -> None:
        s, path = self._store(tmp_path)
        s.append(entries(1, 5) + entries(5, 10, term=2))
        s.compact(6, 2)
        assert s.first_index() == 7
        assert s.last_index() == 9
        assert s.term(6) == 2
        assert s.entries(7, 10) == entries(7, 10, term=2)
        for bad in (1, 5):
            with pytest.raises(IndexError):
                s.term(bad)
        with pytest.raises(IndexError):
            s.entries(6, 8)
        with pytest.raises(ValueError):
            s.append(entries(6, 7, term=2))
        with pytest.raises(ValueError):
            s.truncate_suffix(5)
        s = self.reopen(s, path)
        assert (s.first_index(), s.last_index(), s.term(6)) == (7, 9, 2)
        assert s.entries(7, 10) == entries(7, 10, term=2)
        s.close()

    def test_compact_everything_then_append(self, tmp_path: Path) -> None:
        s, path = self._store(tmp_path)
        s.append(entries(1, 5))
        s.compact(4, 1)
        assert (s.first_index(), s.last_index(), s.term(4)) == (5, 4, 1)
        s.append(entries(5, 6, term=3))
        s = self.reopen(s, path)
        assert (s.first_index(), s.last_index()) == (5, 5)
        assert s.entries(5, 6) == entries(5, 6, term=3)
        s.close()

    def test_compact_beyond_last_index_empties_log(self, tmp_path: Path) -> None:
        s, path = self._store(tmp_path)
        s.append(entries(1, 3))
        s.compact(10, 4)  # a snapshot installed from the leader
        assert (s.first_index(), s.last_index(), s.term(10)) == (11, 10, 4)
        s = self.reopen(s, path)
        assert (s.first_index(), s.last_index(), s.term(10)) == (11, 10, 4)
        s.append(entries(11, 12, term=4))
        assert s.last_index() == 11
        s.close()

    def test_compact_with_conflicting_term_discards_log(self, tmp_path: Path) -> None:
        s, path = self._store(tmp_path)
        s.append(entries(1, 10))
        s.compact(5, 3)
        assert (s.first_index(), s.last_index(), s.term(5)) == (6, 5, 3)
        s = self.reopen(s, path)
        assert (s.first_index(), s.last_index(), s.term(5)) == (6, 5, 3)
        s.close()

    def test_compact_never_moves_backwards(self, tmp_path: Path) -> None:
        s, _ = self._store(tmp_path)
        s.append(entries(1, 10))
        s.compact(5, 1)
        s.compact(3, 1)
        assert s.first_index() == 6
        s.close()

    # ------------------------------------------------------------- hard state

    def test_hard_state_round_trip_and_reopen(self, tmp_path: Path) -> None:
        s, path = self._store(tmp_path)
        s.save_hard_state(HardState(term=3, vote=2, commit=7))
        assert s.hard_state() == HardState(3, 2, 7)
        s = self.reopen(s, path)
        assert s.hard_state() == HardState(3, 2, 7)
        s.save_hard_state(HardState(term=4, vote=None, commit=7))
        s = self.reopen(s, path)
        assert s.hard_state() == HardState(4, None, 7)
        s.close()

    # ---------------------------------------------------------------- persist

    def test_persist_writes_snapshot_boundary_entries_and_hard_state(self, tmp_path: Path) -> None:
        s, path = self._store(tmp_path)
        s.persist(HardState(1, 1, 0), entries(1, 10), None)
        # A snapshot at 12 above the log's end: the log restarts after it,
        # and the entries that follow in the same call land after it.
        meta = SnapshotMeta(12, 2, Membership.of([1]))
        s.persist(HardState(2, None, 12), entries(13, 15, term=2), meta)
        s = self.reopen(s, path)
        assert s.boundary() == (12, 2)
        assert (s.first_index(), s.last_index()) == (13, 14)
        assert s.entries(13, 15) == entries(13, 15, term=2)
        assert s.hard_state() == HardState(2, None, 12)
        s.persist(None, (), None)  # nothing to write is no write
        assert s.hard_state() == HardState(2, None, 12)
        s.close()

    # ----------------------------------------------------------------- reopen

    def test_reopen_keeps_everything(self, tmp_path: Path) -> None:
        s, path = self._store(tmp_path)
        want = entries(1, 50, size=300) + entries(50, 120, term=2, size=30)
        for i in range(0, len(want), 7):
            s.append(want[i : i + 7])
        s.save_hard_state(HardState(2, 1, 100))
        s.compact(20, 1)
        s = self.reopen(s, path)
        assert (s.first_index(), s.last_index()) == (21, 119)
        assert s.entries(21, 120) == want[20:]
        assert s.hard_state() == HardState(2, 1, 100)
        assert s.term(20) == 1
        assert s.term(119) == 2
        s.close()
