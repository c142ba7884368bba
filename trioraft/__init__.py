"""trioraft: Raft consensus for Trio applications."""

from typing import TYPE_CHECKING, Any

from trioraft.core.types import Entry, EntryKind, HardState, Membership, SnapshotMeta
from trioraft.statemachine import LogId, SnapshotError, SnapshotInfo, StateMachine

if TYPE_CHECKING:
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

# The runtime (nodes, transport, storage) loads on first use of one of its
# names, so a module that needs only the types or the StateMachine protocol
# (a state machine, the docstore client) does not pull it in: the names of
# __all__ not imported above.
_RUNTIME = frozenset(name for name in __all__ if name not in globals())


def __getattr__(name: str) -> Any:
    if name in _RUNTIME:
        from trioraft import runtime

        value = getattr(runtime, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'trioraft' has no attribute {name!r}")
