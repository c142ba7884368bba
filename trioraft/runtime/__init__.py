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
from trioraft.runtime.gcsettings import GC_THRESHOLDS, tune_gc
from trioraft.runtime.node import (
    Node,
    NodeStatistics,
    NodeStatus,
    PeerProgress,
    ServiceFactory,
    TransportFactory,
    open_node,
    serve_node,
)
from trioraft.runtime.service import (
    BadRequestError,
    ClientService,
    Session,
    error_code,
    error_response,
    generic_service,
)

__all__ = [
    "GC_THRESHOLDS",
    "BadRequestError",
    "ClientService",
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
    "ServiceFactory",
    "Session",
    "TransportFactory",
    "error_code",
    "error_response",
    "generic_service",
    "open_node",
    "serve_node",
    "tune_gc",
]
