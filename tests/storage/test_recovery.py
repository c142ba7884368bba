"""Recovery's reconciliation of the log with the newest readable snapshot.

``reconcile`` runs before the core is built: a snapshot above the log's
boundary applies the Raft discard rule to the log, durably; a log that was
compacted past every readable snapshot is refused with advice.
"""

from __future__ import annotations

import logging

import pytest

from tests.storage.faultfs import FaultFS, power_cut
from tests.storage.snapshot_files import commit_snapshot
from trioraft.core.types import Membership, SnapshotMeta
from trioraft.storage import FileLogStore, SnapshotStore, StorageCorruption
from trioraft.storage.recovery import reconcile
from trioraft.testing.storage_suite import entries

LOG = "/log"
SNAP = "/snap"
SEG = 200
MEMBERS = Membership(frozenset({1, 2, 3}))


def put_snapshot(fs: FaultFS, store: SnapshotStore, index: int, term: int) -> None:
    commit_snapshot(fs, store, SnapshotMeta(index, term, MEMBERS), b"body %d" % index * 7)


def open_both(fs: FaultFS) -> tuple[FileLogStore, SnapshotStore]:
    return FileLogStore.open(LOG, segment_bytes=SEG, fs=fs), SnapshotStore(SNAP, fs=fs)


def state(log: FileLogStore) -> tuple[tuple[int, int], int, list[tuple[int, int]]]:
    first, last = log.first_index(), log.last_index()
    return log.boundary(), last, [(e.index, e.term) for e in log.entries(first, last + 1)]


def test_no_snapshot_leaves_the_log_alone() -> None:
    log, snaps = open_both(FaultFS())
    log.append(entries(1, 4))
    assert reconcile(log, snaps) is None
    assert state(log) == ((0, 0), 3, [(1, 1), (2, 1), (3, 1)])


def test_snapshot_newer_than_the_log_end_drops_the_log() -> None:
    fs = FaultFS()
    log, snaps = open_both(fs)
    log.append(entries(1, 4))
    put_snapshot(fs, snaps, 10, 2)
    stored = reconcile(log, snaps)
    assert stored is not None and stored.meta.index == 10
    assert state(log) == ((10, 2), 10, [])
    again, _ = open_both(fs.crash())  # durable before the core is built
    assert state(again) == ((10, 2), 10, [])


def test_matching_entry_at_the_snapshot_keeps_the_log() -> None:
    fs = FaultFS()
    log, snaps = open_both(fs)
    log.append(entries(1, 9, term=2))
    put_snapshot(fs, snaps, 5, 2)
    before = state(log)
    assert reconcile(log, snaps) is not None
    assert state(log) == before


def test_conflicting_entry_at_the_snapshot_drops_the_log() -> None:
    fs = FaultFS()
    log, snaps = open_both(fs)
    log.append(entries(1, 9, term=2))  # uncommitted entries of an old leader
    put_snapshot(fs, snaps, 5, 3)
    reconcile(log, snaps)
    assert state(log) == ((5, 3), 5, [])
    log.append(entries(6, 7, term=3))
    again, _ = open_both(fs.crash())
    assert state(again) == ((5, 3), 6, [(6, 3)])


def test_log_compacted_past_every_readable_snapshot_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR)
    fs = FaultFS()
    log, snaps = open_both(fs)
    log.append(entries(1, 30))
    put_snapshot(fs, snaps, 10, 1)
    put_snapshot(fs, snaps, 25, 1)
    log.compact(20, 1)  # older code compacted past the older snapshot
    newest = snaps.latest_stored()
    assert newest is not None
    inode = fs.dirs[SNAP][newest.path.rsplit("/", 1)[1]]
    inode.data[3] ^= 1
    log, snaps = open_both(fs)
    with pytest.raises(StorageCorruption, match=r"compacted up to 20.*wipe") as err:
        reconcile(log, snaps)
    assert "snap-0000000002" in str(err.value)


def test_compacted_log_without_any_snapshot_is_refused() -> None:
    fs = FaultFS()
    log, snaps = open_both(fs)
    log.append(entries(1, 10))
    log.compact(5, 1)
    with pytest.raises(StorageCorruption, match=r"no readable snapshot.*wipe"):
        reconcile(log, snaps)


@pytest.mark.parametrize("snap_index, snap_term", [(12, 2), (5, 3)], ids=["beyond", "conflict"])
def test_crash_at_every_step_of_reconcile(snap_index: int, snap_term: int) -> None:
    # Enumerate the storage operations reconcile performs, lose power at each
    # (every crash image the model allows), reopen and reconcile again.
    def setup() -> FaultFS:
        fs = FaultFS()
        log, snaps = open_both(fs)
        for i in range(1, 9, 2):  # several frames and segments to delete
            log.append(entries(i, i + 2, term=2))
        put_snapshot(fs, snaps, snap_index, snap_term)
        return fs.crash()

    no_entries: list[tuple[int, int]] = []
    want = ((snap_index, snap_term), snap_index, no_entries)
    points = 0
    for cut in range(1, 100):
        fs = setup()
        log, snaps = open_both(fs)
        with power_cut(fs, cut) as outage:
            reconcile(log, snaps)
        if not outage.happened:
            assert state(log) == want
            break
        points += 1
        for crashed in fs.crash_variants(step=5):
            log, snaps = open_both(crashed)
            reconcile(log, snaps)
            assert state(log) == want, f"cut {cut}"
            log, snaps = open_both(crashed.crash())
            assert state(log) == want, f"cut {cut}: not durable"
    assert points >= 5  # the boundary write, the discard frame, the segment deletions


AFTER_DISCARD = ((5, 3), 8, [(6, 3), (7, 3), (8, 3)])


def reopened_after_a_discard(old_log_end: int, crash: bool) -> tuple[FaultFS, FileLogStore]:
    """Reopen a log whose compaction at (5, term 3) discarded its own entries.

    The log held the term-2 entries below ``old_log_end`` (an old leader's,
    never committed); after the compaction the new leader's 6-8 of term 3 were
    appended.  Reopened after a crash if ``crash``; returns the file system
    it was reopened on and the log.
    """
    fs = FaultFS()
    log = FileLogStore.open(LOG, segment_bytes=1 << 20, fs=fs)
    log.append(entries(1, old_log_end, term=2))
    log.compact(5, 3)
    log.append(entries(6, 9, term=3))
    assert state(log) == AFTER_DISCARD
    fs = fs.crash() if crash else fs
    return fs, FileLogStore.open(LOG, segment_bytes=1 << 20, fs=fs)


@pytest.mark.parametrize("crash", [False, True])
def test_entries_appended_after_a_discarding_compaction_survive_a_restart(crash: bool) -> None:
    # A follower installs a snapshot whose entry conflicts with its log: the
    # log is discarded, then the new leader's entries are appended after the
    # boundary.  Reopening must keep them.  The old-term entry at the boundary
    # stayed in the segment, so recovery took the log for one whose discard
    # had not been made durable and dropped the new entries too (found by the
    # whole-node simulator, seed 8114: the state machine had applied them).
    fs, again = reopened_after_a_discard(old_log_end=9, crash=crash)
    assert state(again) == AFTER_DISCARD
    again.append(entries(9, 10, term=3))
    third = FileLogStore.open(LOG, segment_bytes=1 << 20, fs=fs.crash())
    assert state(third) == ((5, 3), 9, [(6, 3), (7, 3), (8, 3), (9, 3)])


@pytest.mark.parametrize("crash", [False, True])
def test_entries_appended_after_a_snapshot_conflicting_with_the_last_entry_survive(
    crash: bool,
) -> None:
    # As above, but the conflicting entry is the log's last one: a deposed
    # leader's log ends at 5 (term 2) and it installs snapshot (5, term 3).
    # compact() dropped the entry in memory but left it in the file, so a
    # restart after the new leader's entries 6-8 had been appended (and
    # acknowledged) took the log for an undurable discard and dropped them:
    # committed entries lost (the whole-node simulator, seed 20482).
    _, again = reopened_after_a_discard(old_log_end=6, crash=crash)
    assert state(again) == AFTER_DISCARD
