"""Errors a node raises to its callers."""

from __future__ import annotations

from trioraft.core.types import NodeId


class NodeError(Exception):
    """Base class of the runtime's errors."""


class NotLeaderError(NodeError):
    """This node is not the leader; retry at ``leader_id`` / ``leader_address`` if known."""

    def __init__(self, leader_id: NodeId | None, leader_address: str | None) -> None:
        where = f"{leader_id} at {leader_address}" if leader_id is not None else "unknown"
        super().__init__(f"not the leader (leader: {where})")
        self.leader_id = leader_id
        self.leader_address = leader_address


class ProposalDroppedError(NodeError):
    """The proposal's entry was replaced by a new leader's log: it was not applied.

    Retrying with the same client id and sequence is safe.
    """


class ProposalRejectedError(NodeError):
    """The leader refused the request for now (transfer or change in progress)."""


class OverloadedError(NodeError):
    """Too many requests are pending; back off and retry."""


class NodeClosedError(NodeError):
    """The node has stopped (closed, or failed on a storage error)."""


class ReadFailedError(NodeError):
    """A linearizable read could not be confirmed (leadership lost meanwhile)."""


class NotCaughtUpError(NodeError):
    """A learner cannot be promoted yet: it lags too far behind the leader."""
