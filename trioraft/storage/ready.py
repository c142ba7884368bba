"""The order of one Ready's write, and the hard state check, for every log store.

A Ready may carry a snapshot boundary, entries and a hard state.  They are
separate durable writes, so a crash can fall between any two; the order
below is the one that leaves no state Raft forbids:

1. the snapshot's boundary (the log is then compacted or discarded to it);
2. a new term and its vote, if the Ready has both entries and a term/vote
   change: entries of a term the node has not durably entered would make it
   restart in a lower term, accept a deposed leader's appends over committed
   entries and forget a vote;
3. the entries (one sync: group commit);
4. the rest of the hard state (the commit index may cover the entries just
   written, so it goes last).

Both log stores (files and memory) subclass :class:`ReadyStore`, which
writes a Ready in that order and answers the hard state and incarnation
they hold in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from trioraft.core.types import Entry, HardState, SnapshotMeta


class ReadyStore(Protocol):
    """What every log store does alike; subclass it and provide the writes.

    A subclass keeps ``_hard`` (the last saved hard state) and
    ``_incarnation`` up to date and implements :meth:`compact`,
    :meth:`append` and :meth:`save_hard_state`.
    """

    _hard: HardState
    _incarnation: str

    def compact(self, index: int, term: int) -> None: ...

    def append(self, entries: Sequence[Entry]) -> None: ...

    def save_hard_state(self, hs: HardState) -> None: ...

    def hard_state(self) -> HardState:
        """The last saved hard state (``HardState()`` for a fresh log)."""
        return self._hard

    def incarnation(self) -> str:
        """This store's incarnation id: 32 hex digits, fixed when its data was created."""
        return self._incarnation

    def persist(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: SnapshotMeta | None = None,
    ) -> None:
        """One Ready's write: ``snapshot``'s boundary, then ``entries`` and ``hard_state``.

        The call the runtime makes for every Ready that has something to
        write, in the order above; when it returns, all of it is durable.

        Raises:
            ValueError: the entries do not fit the log.
            StorageFatalError: an I/O error; stop the node.
        """
        persist_ready(self, hard_state, entries, snapshot)


def check_hard_state(hs: HardState) -> None:
    """Refuse a hard state no store may save: a vote that is not a node id."""
    if hs.vote is not None and hs.vote <= 0:
        raise ValueError(f"vote must be a positive node id, got {hs.vote}")


def persist_ready(
    store: ReadyStore,
    hard_state: HardState | None,
    entries: Sequence[Entry],
    snapshot: SnapshotMeta | None,
) -> None:
    """Write one Ready's parts to ``store`` in the order above."""
    if snapshot is not None:
        store.compact(snapshot.index, snapshot.term)
    hs, old = hard_state, store.hard_state()
    if entries and hs is not None and (hs.term, hs.vote) != (old.term, old.vote):
        store.save_hard_state(HardState(hs.term, hs.vote, min(old.commit, hs.commit)))
    if entries:
        store.append(entries)
    if hs is not None and hs != store.hard_state():
        store.save_hard_state(hs)
