"""Errors the core raises at its API edge (never for a peer's message)."""

from __future__ import annotations

from trioraft.core.types import NodeId


class RaftError(Exception):
    """Base class of everything the core raises on purpose."""


class NotLeader(RaftError):
    """The request needs the leader; ``leader`` is the best known one (or None)."""

    def __init__(self, leader: NodeId | None) -> None:
        super().__init__(f"not the leader (leader is {leader})")
        self.leader = leader


class ProposalRejected(RaftError):
    """The leader refused a proposal for now (transfer in progress, change pending, ...).

    Nothing was appended: the caller may retry later.
    """


class InvariantViolated(RaftError):
    """The core found its own state or a peer's claim impossible under Raft's rules.

    Raised instead of silently corrupting the log (for example when a leader
    asks to overwrite a committed entry).  The node must stop.
    """

    code = "internal"  # the wire code a service answers with (docs/protocol.md)
