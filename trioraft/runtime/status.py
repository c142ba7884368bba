"""What a node reports about itself: ``Node.status()`` and ``Node.statistics()``.

Owns the report types (:class:`NodeStatus`, :class:`NodeStatistics`,
:class:`PeerProgress`) and how they are read off a running node
(:func:`node_status`, :func:`node_statistics`); the figures themselves are
counted where the work happens (the node's loops, ``Pending``, the
transport).  trioraft/runtime/metrics.py writes them as Prometheus text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict

from trioraft.core.types import NodeId
from trioraft.runtime.metrics import Histogram, HistogramSnapshot
from trioraft.transport.base import TransportStatistics

if TYPE_CHECKING:
    from trioraft.core.raft import RaftCore
    from trioraft.runtime.node import Node

__all__ = ["NodeStatistics", "NodeStatus", "PeerProgress", "node_statistics", "node_status"]


@dataclass(frozen=True, slots=True)
class PeerProgress:
    """What the leader knows of one follower's log (``NodeStatistics.peers``)."""

    #: The follower's last index known to match the leader's log.
    match_index: int
    #: Entries it lacks: the leader's last index minus ``match_index``.
    lag: int
    #: How the leader sends to it: ``probe``, ``replicate`` or ``snapshot``.
    state: str


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """Where the node stands (``Node.status()``)."""

    node_id: NodeId
    role: str
    term: int
    leader_id: NodeId | None
    leader_address: str | None
    commit_index: int
    applied_index: int
    last_index: int
    snapshot_index: int
    voters: tuple[NodeId, ...]
    learners: tuple[NodeId, ...]
    joint: bool

    def to_dict(self) -> dict[str, object]:
        """Plain values (lists, not tuples) for a CBOR or JSON answer."""
        return {
            "node_id": self.node_id,
            "role": self.role,
            "term": self.term,
            "leader_id": self.leader_id,
            "leader_address": self.leader_address,
            "commit_index": self.commit_index,
            "applied_index": self.applied_index,
            "last_index": self.last_index,
            "snapshot_index": self.snapshot_index,
            "voters": list(self.voters),
            "learners": list(self.learners),
            "joint": self.joint,
        }


@dataclass(frozen=True, slots=True)
class NodeStatistics:
    """Counters and latencies (``Node.statistics()``)."""

    node_id: NodeId
    role: str
    term: int
    commit_index: int
    applied_index: int
    peers: dict[NodeId, PeerProgress] = field(default_factory=dict)
    proposals_pending: int = 0
    proposals_committed: int = 0
    proposal_latency_ms: dict[str, float] = field(default_factory=dict)
    entries_applied: int = 0
    persist_batches: int = 0
    persist_entries: int = 0
    snapshots_taken: int = 0
    snapshots_installed: int = 0
    snapshots_sent: int = 0
    inbox_dropped: int = 0
    transport: TransportStatistics | None = None
    leader_id: NodeId | None = None
    last_index: int = 0
    #: Proposals that failed after their append, by reason: ``replaced``
    #: (another entry took the index), ``timeout``, ``stopped``.
    proposals_failed: dict[str, int] = field(default_factory=dict)
    proposal_seconds: HistogramSnapshot = field(default_factory=lambda: Histogram().snapshot())
    #: Answered reads by consistency.
    read_seconds: dict[str, HistogramSnapshot] = field(default_factory=dict)
    #: One durable log write (append, hard state, fsync).
    persist_seconds: HistogramSnapshot = field(default_factory=lambda: Histogram().snapshot())
    elections_started: int = 0
    elections_won: int = 0
    leader_changes: int = 0
    snapshot_index: int = 0
    snapshot_bytes: int = 0


class _Standing(TypedDict):
    """What both reports say of where the node stands, read once (:func:`_standing`)."""

    node_id: NodeId
    role: str
    term: int
    leader_id: NodeId | None
    commit_index: int
    applied_index: int
    last_index: int
    snapshot_index: int


def _standing(node: Node, core: RaftCore) -> _Standing:
    return _Standing(
        node_id=node.id,
        role=core.role.value,
        term=core.term,
        leader_id=core.leader,
        commit_index=core.commit,
        applied_index=node._applied,
        last_index=core.last_index(),
        snapshot_index=core.offset,
    )


def node_status(node: Node) -> NodeStatus:
    """Where ``node`` stands now (raises NodeClosedError once it stopped)."""
    core = node._check_open()
    m = core.membership
    return NodeStatus(
        **_standing(node, core),
        leader_address=node._address_of(core.leader),
        voters=tuple(sorted(m.all_voters)),
        learners=tuple(sorted(m.learners - m.all_voters)),
        joint=m.joint,
    )


def node_statistics(node: Node) -> NodeStatistics:
    """``node``'s counters and latencies now (raises NodeClosedError once it stopped)."""
    core = node._check_open()
    last = core.last_index()
    peers = {
        n: PeerProgress(match_index=p.match, lag=last - p.match, state=p.state.value)
        for n, p in core.progress.items()
    }
    pending = node._pending
    lat = sorted(pending.latencies)

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 3) if lat else 0.0

    stats = node._stats
    current = node._current_snapshot
    return NodeStatistics(
        **_standing(node, core),
        peers=peers,
        proposals_pending=len(pending),
        proposals_committed=pending.committed,
        proposal_latency_ms={"p50": pct(0.5), "p99": pct(0.99), "p999": pct(0.999)},
        entries_applied=stats["entries_applied"],
        persist_batches=stats["persist_batches"],
        persist_entries=stats["persist_entries"],
        snapshots_taken=stats["snapshots_taken"],
        snapshots_installed=stats["snapshots_installed"],
        snapshots_sent=stats["snapshots_sent"],
        inbox_dropped=stats["inbox_dropped"],
        transport=node.transport.statistics() if node.transport is not None else None,
        proposals_failed={
            "replaced": pending.replaced,
            "timeout": pending.timed_out,
            "stopped": pending.stopped,
        },
        proposal_seconds=pending.proposal_seconds.snapshot(),
        read_seconds={c: h.snapshot() for c, h in node._read_seconds.items()},
        persist_seconds=node._persist_seconds.snapshot(),
        elections_started=stats["elections_started"],
        elections_won=stats["elections_won"],
        leader_changes=stats["leader_changes"],
        snapshot_bytes=current.size if current is not None else 0,
    )
