"""Histograms for the node's latencies, and the Prometheus text format.

What this module owns
---------------------
* :class:`Histogram`: fixed buckets chosen up front, so ``observe`` is one
  bisect and three additions (cheap enough for every proposal and every
  durable write), and a snapshot is a frozen :class:`HistogramSnapshot`
  that ``Node.statistics()`` can hand out.
* :class:`Exposition`: writes metric families in the Prometheus text
  exposition format, version 0.0.4 (``# HELP``, ``# TYPE``, one sample a
  line, label values escaped, histograms as cumulative ``_bucket{le=...}``
  with ``_sum`` and ``_count``).  The format is small and stable; writing it
  here keeps the process free of a global registry.
* :func:`node_metrics`: every figure of a :class:`~trioraft.runtime.node.NodeStatistics`
  as families named ``trioraft_*``; an application adds its own after it.

A histogram is written by one task (or by the storage worker thread while
the Raft loop waits for it) and read by whoever asks for statistics; a
reader may see ``count`` one observation ahead of a bucket, never a torn
number.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from trioraft.runtime.node import NodeStatistics

__all__ = [
    "LATENCY_BUCKETS",
    "Exposition",
    "Histogram",
    "HistogramSnapshot",
    "node_metrics",
]

#: Upper bounds in seconds: from a fast fsync (0.1 ms) to a proposal timeout.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """A histogram's state: ``counts[i]`` observations in ``(bounds[i-1], bounds[i]]``.

    ``counts`` has one more element than ``bounds``: the observations above
    the last bound (Prometheus's ``+Inf`` bucket holds them and all others).
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float
    count: int

    def quantile(self, q: float) -> float:
        """The upper bound of the bucket holding the ``q`` quantile (0.0 when empty)."""
        if self.count == 0:
            return 0.0
        rank = q * self.count
        seen = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            seen += n
            if seen >= rank:
                return bound
        return math.inf


class Histogram:
    """Counts of observations in fixed buckets (seconds, bytes, ...).

    Example:
        >>> h = Histogram((0.001, 0.01))
        >>> h.observe(0.004)
        >>> h.snapshot().counts
        (0, 1, 0)
    """

    __slots__ = ("_bounds", "_counts", "_sum", "count")

    def __init__(self, bounds: Iterable[float] = LATENCY_BUCKETS) -> None:
        self._bounds = tuple(sorted(bounds))
        if not self._bounds or any(not math.isfinite(b) for b in self._bounds):
            raise ValueError("a histogram needs finite bucket bounds")
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Record one value; ``value <= bound`` puts it in that bound's bucket."""
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value
        self.count += 1

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self._bounds, tuple(self._counts), self._sum, self.count)


# ------------------------------------------------------------- exposition


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}"


Labels = Mapping[str, str]


class Exposition:
    """Builds one scrape in the Prometheus text format.

    Each family is written once, with all its samples, in the order added.

    Example:
        >>> e = Exposition()
        >>> e.gauge("up", "1 when the node runs.", [({}, 1)])
        >>> print(e.text(), end="")
        # HELP up 1 when the node runs.
        # TYPE up gauge
        up 1
    """

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._names: set[str] = set()

    def _family(self, name: str, kind: str, help: str) -> None:
        if name in self._names:
            raise ValueError(f"metric family {name} written twice")
        self._names.add(name)
        self._lines.append(f"# HELP {name} {_escape_help(help)}")
        self._lines.append(f"# TYPE {name} {kind}")

    def gauge(self, name: str, help: str, samples: Iterable[tuple[Labels, float]]) -> None:
        self._family(name, "gauge", help)
        for labels, value in samples:
            self._lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def counter(self, name: str, help: str, samples: Iterable[tuple[Labels, float]]) -> None:
        """A counter family; ``name`` ends in ``_total`` (the format's convention)."""
        if not name.endswith("_total"):
            raise ValueError(f"counter {name} must end in _total")
        self._family(name, "counter", help)
        for labels, value in samples:
            self._lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def histogram(
        self, name: str, help: str, samples: Iterable[tuple[Labels, HistogramSnapshot]]
    ) -> None:
        self._family(name, "histogram", help)
        for labels, h in samples:
            cumulative = 0
            for bound, n in zip(h.bounds, h.counts, strict=False):
                cumulative += n
                le = {**labels, "le": _number(float(bound))}
                self._lines.append(f"{name}_bucket{_labels(le)} {cumulative}")
            total = {**labels, "le": "+Inf"}
            self._lines.append(f"{name}_bucket{_labels(total)} {h.count}")
            self._lines.append(f"{name}_sum{_labels(labels)} {_number(h.sum)}")
            self._lines.append(f"{name}_count{_labels(labels)} {h.count}")

    def text(self) -> str:
        return "\n".join(self._lines) + "\n" if self._lines else ""


#: ``role`` gauge values, in this order (also written as labelled 0/1 samples).
ROLES = ("follower", "pre-candidate", "candidate", "leader")


def node_metrics(st: NodeStatistics, out: Exposition | None = None) -> Exposition:
    """Write a node's statistics as ``trioraft_*`` families (see docs/operations.md)."""
    e = out if out is not None else Exposition()
    node = {"node": str(st.node_id)}
    e.gauge(
        "trioraft_role",
        "1 for the role this node has now (label role), 0 for the others.",
        [({**node, "role": r}, int(st.role == r)) for r in ROLES],
    )
    e.gauge("trioraft_term", "The node's current Raft term.", [(node, st.term)])
    e.gauge(
        "trioraft_leader_id",
        "The id of the leader this node knows, 0 when it knows none.",
        [(node, st.leader_id or 0)],
    )
    e.gauge(
        "trioraft_commit_index", "Highest log index known committed.", [(node, st.commit_index)]
    )
    e.gauge(
        "trioraft_applied_index",
        "Highest log index applied to the state machine.",
        [(node, st.applied_index)],
    )
    e.gauge(
        "trioraft_last_index",
        "Index of the last entry in this node's log.",
        [(node, st.last_index)],
    )
    e.gauge(
        "trioraft_follower_match_index",
        "Leader only: the highest index known replicated on each follower (label peer).",
        [({**node, "peer": str(n)}, p.match_index) for n, p in sorted(st.peers.items())],
    )
    e.gauge(
        "trioraft_follower_lag_entries",
        "Leader only: entries each follower is behind the leader's last index (label peer).",
        [({**node, "peer": str(n)}, p.lag) for n, p in sorted(st.peers.items())],
    )
    e.gauge(
        "trioraft_proposals_pending",
        "Proposals appended here and waiting to be applied.",
        [(node, st.proposals_pending)],
    )
    e.counter(
        "trioraft_proposals_committed_total",
        "Proposals made on this node that were applied and answered.",
        [(node, st.proposals_committed)],
    )
    e.counter(
        "trioraft_proposals_dropped_total",
        "Proposals made on this node that failed after being appended (label reason: "
        "replaced by another entry, timed out, or the node stopped).",
        [({**node, "reason": r}, n) for r, n in sorted(st.proposals_failed.items())],
    )
    e.histogram(
        "trioraft_proposal_duration_seconds",
        "From append to applied, for proposals made on this node.",
        [(node, st.proposal_seconds)],
    )
    e.histogram(
        "trioraft_read_duration_seconds",
        "Answered reads, by consistency (linearizable, lease, local).",
        [({**node, "consistency": c}, h) for c, h in sorted(st.read_seconds.items())],
    )
    e.histogram(
        "trioraft_log_fsync_duration_seconds",
        "One durable log write: append the batch, write the hard state and fsync.",
        [(node, st.persist_seconds)],
    )
    e.counter(
        "trioraft_entries_applied_total",
        "Entries applied to the state machine.",
        [(node, st.entries_applied)],
    )
    e.counter(
        "trioraft_log_persist_entries_total",
        "Entries written durably to the log.",
        [(node, st.persist_entries)],
    )
    e.counter(
        "trioraft_elections_total",
        "Elections this node started (it became candidate).",
        [(node, st.elections_started)],
    )
    e.counter(
        "trioraft_elections_won_total", "Times this node became leader.", [(node, st.elections_won)]
    )
    e.counter(
        "trioraft_leader_changes_total",
        "Times the leader this node knows changed to another node.",
        [(node, st.leader_changes)],
    )
    e.counter(
        "trioraft_snapshots_total",
        "Snapshots by kind: taken here, installed from the leader, sent to followers.",
        [
            ({**node, "kind": "taken"}, st.snapshots_taken),
            ({**node, "kind": "installed"}, st.snapshots_installed),
            ({**node, "kind": "sent"}, st.snapshots_sent),
        ],
    )
    e.gauge(
        "trioraft_snapshot_index",
        "Last log index the newest snapshot covers.",
        [(node, st.snapshot_index)],
    )
    e.gauge(
        "trioraft_snapshot_size_bytes",
        "Size of the newest snapshot file.",
        [(node, st.snapshot_bytes)],
    )
    e.counter(
        "trioraft_inbox_dropped_total",
        "Peer messages dropped because the Raft loop's inbox was full.",
        [(node, st.inbox_dropped)],
    )
    t = st.transport
    if t is not None:
        e.gauge("trioraft_client_connections", "Open client connections.", [(node, t.clients)])
        e.counter(
            "trioraft_client_connections_accepted_total",
            "Client connections accepted (after the handshake).",
            [(node, t.clients_accepted)],
        )
        e.counter(
            "trioraft_transport_bytes_total",
            "Message bytes on the wire by direction and link (peer or client); WebSocket "
            "framing and the handshake are not counted.",
            [
                ({**node, "direction": "in", "link": "peer"}, t.bytes_in),
                ({**node, "direction": "out", "link": "peer"}, t.bytes_out),
                ({**node, "direction": "in", "link": "client"}, t.client_bytes_in),
                ({**node, "direction": "out", "link": "client"}, t.client_bytes_out),
            ],
        )
        e.counter(
            "trioraft_transport_frames_total",
            "Frames by direction and link.",
            [
                ({**node, "direction": "in", "link": "peer"}, t.frames_in),
                ({**node, "direction": "out", "link": "peer"}, t.frames_out),
                ({**node, "direction": "in", "link": "client"}, t.client_frames_in),
                ({**node, "direction": "out", "link": "client"}, t.client_frames_out),
            ],
        )
        e.counter(
            "trioraft_transport_bad_frames_total",
            "Frames refused after authentication (undecodable, oversized, wrong sender).",
            [(node, t.bad_frames)],
        )
        e.counter(
            "trioraft_transport_handshakes_rejected_total",
            "Failed handshakes in either direction.",
            [(node, t.handshakes_rejected)],
        )
        e.gauge(
            "trioraft_peer_connected",
            "1 while this node's outbound connection to the peer is up (label peer).",
            [({**node, "peer": str(n)}, int(p.connected)) for n, p in sorted(t.peers.items())],
        )
        e.counter(
            "trioraft_peer_messages_dropped_total",
            "Messages to the peer dropped: queue full, too large, or lost with a connection.",
            [({**node, "peer": str(n)}, p.dropped) for n, p in sorted(t.peers.items())],
        )
    return e
