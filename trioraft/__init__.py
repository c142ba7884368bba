"""trioraft: Raft consensus for Trio applications."""

from trioraft.core.types import Entry, EntryKind, HardState, Membership, SnapshotMeta
from trioraft.runtime import (
    EntryTooLargeError,
    Node,
    NodeClosedError,
    NodeConfig,
    NodeError,
    NotLeaderError,
    OverloadedError,
    ProposalDroppedError,
    ProposalRejectedError,
    ReadFailedError,
    open_node,
    serve_node,
)
from trioraft.statemachine import LogId, SnapshotError, SnapshotInfo, StateMachine

__all__ = [
    "Entry",
    "EntryKind",
    "EntryTooLargeError",
    "HardState",
    "LogId",
    "Membership",
    "Node",
    "NodeClosedError",
    "NodeConfig",
    "NodeError",
    "NotLeaderError",
    "OverloadedError",
    "ProposalDroppedError",
    "ProposalRejectedError",
    "ReadFailedError",
    "SnapshotError",
    "SnapshotInfo",
    "SnapshotMeta",
    "StateMachine",
    "open_node",
    "serve_node",
]
