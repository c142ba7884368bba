"""The Trio runtime: ``open_node``, ``serve_node`` and ``Node``."""

from trioraft.runtime.config import NodeConfig
from trioraft.runtime.errors import (
    EntryTooLargeError,
    NodeClosedError,
    NodeError,
    NotCaughtUpError,
    NotLeaderError,
    OverloadedError,
    ProposalDroppedError,
    ProposalRejectedError,
    ReadFailedError,
)
from trioraft.runtime.node import (
    Node,
    NodeStatistics,
    NodeStatus,
    PeerProgress,
    TransportFactory,
    error_code,
    error_response,
    open_node,
    serve_node,
)

__all__ = [
    "EntryTooLargeError",
    "Node",
    "NodeClosedError",
    "NodeConfig",
    "NodeError",
    "NodeStatistics",
    "NodeStatus",
    "NotCaughtUpError",
    "NotLeaderError",
    "OverloadedError",
    "PeerProgress",
    "ProposalDroppedError",
    "ProposalRejectedError",
    "ReadFailedError",
    "TransportFactory",
    "error_code",
    "error_response",
    "open_node",
    "serve_node",
]
