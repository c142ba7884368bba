"""Errors a node raises to its callers.

Each class carries its wire code (``code``, the ``error_code`` of a
ClientResponse, docs/protocol.md "Error codes"), so a subclass answers with
its parent's code unless it names its own; ``trioraft.runtime.error_code``
reads it.
"""

from __future__ import annotations

from typing import ClassVar

from trioraft.core.types import NodeId


class NodeError(Exception):
    """Base class of the runtime's errors."""

    code: ClassVar[str] = "error"


class NotLeaderError(NodeError):
    """This node is not the leader; retry at ``leader_id`` / ``leader_address`` if known."""

    code = "not_leader"

    def __init__(self, leader_id: NodeId | None, leader_address: str | None) -> None:
        where = f"{leader_id} at {leader_address}" if leader_id is not None else "unknown"
        super().__init__(f"not the leader (leader: {where})")
        self.leader_id = leader_id
        self.leader_address = leader_address


class ProposalDroppedError(NodeError):
    """The proposal's entry was replaced by a new leader's log: it was not applied.

    Retrying with the same client id and sequence is safe.
    """

    code = "dropped"


class ProposalRejectedError(NodeError):
    """The leader refused the request for now (transfer or change in progress)."""

    code = "rejected"


class OverloadedError(NodeError):
    """Too many requests are pending; back off and retry."""

    code = "overloaded"


class EntryTooLargeError(NodeError, ValueError):
    """A command is larger than one log entry may be (``MAX_ENTRY_DATA``); send less.

    A ValueError too: the request itself is at fault, and retrying it cannot help.
    """

    code = "too_large"


class NodeClosedError(NodeError):
    """The node has stopped (closed, or failed on a storage error)."""

    code = "closed"


class ReadFailedError(NodeError):
    """A linearizable read could not be confirmed (leadership lost meanwhile)."""

    code = "read_failed"


class NotCaughtUpError(NodeError):
    """A learner cannot be promoted yet: it lags too far behind the leader."""

    code = "not_caught_up"
