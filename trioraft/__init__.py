"""trioraft: Raft consensus for Trio applications."""

from trioraft.core.types import Entry, EntryKind, HardState, Membership, SnapshotMeta
from trioraft.statemachine import LogId, SnapshotError, SnapshotInfo, StateMachine

__all__ = [
    "Entry",
    "EntryKind",
    "HardState",
    "LogId",
    "Membership",
    "SnapshotError",
    "SnapshotInfo",
    "SnapshotMeta",
    "StateMachine",
]
