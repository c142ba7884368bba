"""Recovery: make the log agree with the newest readable snapshot before the core is built.

Theory of operation
-------------------
Two stores change at different moments, so a crash can leave them out of
step.  The snapshot store commits a received snapshot before the Ready that
compacts the log behind it (and the core may even refuse that snapshot: its
term moved); the node's own snapshot task commits a snapshot before it
compacts the log.  So at a restart the newest readable snapshot may lie
above the log's boundary, even above the log's last entry.

A committed snapshot is committed state: a leader only snapshots what it has
applied.  :func:`reconcile` therefore adopts the newest readable snapshot
and applies Raft's InstallSnapshot rule to the log (Figure 13, steps 6-7):

* the log holds an entry at the snapshot's index with the snapshot's term:
  it is a prefix of the same history; keep the log as it is;
* otherwise (the log ends before that index, or holds another term there):
  discard the whole log, durably, by compacting the log store to the
  snapshot (``compact`` writes the boundary first, then drops the entries).

Compaction is idempotent and the boundary never moves backwards, so a crash
inside ``reconcile`` is repaired by running it again on the next start.

The other direction has no repair.  If the log was compacted past every
readable snapshot (the newest one damaged, and the log no longer reaching
back to the older), the entries between are gone from this node: recovery
raises :class:`StorageCorruption` saying what to do.  The runtime avoids
that for its own snapshots by never compacting the log past
:meth:`SnapshotStore.fallback_index`, the oldest snapshot kept; a snapshot
installed from a leader replaces the log and has no such fallback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trioraft.storage.errors import StorageCorruption
from trioraft.storage.snapshots import SnapshotStore, StoredSnapshot

if TYPE_CHECKING:
    from trioraft.storage import LogStore

__all__ = ["reconcile"]

_ADVICE = (
    "restore this node's data directory from a backup, or wipe it and add the node back "
    "as a new member (remove_node, then add_learner)"
)


def reconcile(log: LogStore, snaps: SnapshotStore) -> StoredSnapshot | None:
    """Adopt the newest readable snapshot and make the log agree with it, durably.

    Returns that snapshot (None if there is none).  Blocking: call it from a
    worker thread.

    Raises:
        StorageCorruption: the log was compacted past every readable snapshot.
        StorageFatalError: an I/O error while compacting the log.
    """
    stored = snaps.latest_stored()
    b_index, b_term = log.boundary()
    if stored is None:
        if b_index > 0:
            raise StorageCorruption(
                f"the log was compacted up to {b_index} but no readable snapshot is stored"
                f"{_damaged(snaps)}; {_ADVICE}"
            )
        return None
    meta = stored.meta
    if meta.index < b_index:
        raise StorageCorruption(
            f"the log was compacted up to {b_index} but the newest readable snapshot is at "
            f"{meta.index}{_damaged(snaps)}; {_ADVICE}"
        )
    if meta.index == b_index:
        if meta.term != b_term:
            raise StorageCorruption(
                f"snapshot {meta.index} has term {meta.term} but the log's boundary has term "
                f"{b_term}; {_ADVICE}"
            )
        return stored
    holds = meta.index <= log.last_index() and log.term(meta.index) == meta.term
    if not holds:
        log.compact(meta.index, meta.term)
    return stored


def _damaged(snaps: SnapshotStore) -> str:
    bad = snaps.damaged()
    return f" (damaged: {'; '.join(bad)})" if bad else ""
