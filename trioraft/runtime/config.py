"""Node configuration: the one source of defaults (docs/operations.md refers here).

The core's tunables take their defaults from :class:`RaftConfig`; a setting
built on a node's (``docstore.server.ServerConfig``) takes its default from
:class:`NodeConfig` with :func:`default_of`, so each default is written once.

``parse_address`` is the one ``host:port`` rule of
:func:`trioraft.core.types.parse_address`, re-exported for callers that
import it from here.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trioraft.core.raft import RaftConfig
from trioraft.core.types import Membership, NodeId, check_node_id
from trioraft.core.types import parse_address as parse_address
from trioraft.transport.codec import DEFAULT_MAX_FRAME, FRAME_OVERHEAD, append_entries_bound


def default_of(cls: type[Any], name: str) -> Any:
    """The default the dataclass ``cls`` declares for its field ``name``.

    >>> default_of(RaftConfig, "heartbeat_interval")
    0.1
    """
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is dataclasses.MISSING:
                raise ValueError(f"{cls.__name__}.{name} has no plain default")
            return f.default
    raise ValueError(f"{cls.__name__} has no field {name!r}")


#: The timing and snapshot settings that a config built on a node's (the
#: docstore server's, the chaos harness's node spec) passes through unchanged.
TUNING = (
    "election_timeout_min",
    "election_timeout_max",
    "heartbeat_interval",
    "snapshot_entries",
    "snapshot_keep_entries",
    "proposal_timeout",
)


def tuning_of(config: object) -> dict[str, Any]:
    """The :data:`TUNING` settings ``config`` has, by name: ``NodeConfig(..., **tuning_of(c))``."""
    return {name: getattr(config, name) for name in TUNING if hasattr(config, name)}


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node needs.  Times are seconds.

    ``peers`` maps the *other* bootstrap members to their ``host:port``.  A
    new cluster's voters are ``peers`` plus this node; a node started with
    ``join=True`` is not a voter of that bootstrap configuration and waits
    for the leader to add it (``Node.add_learner``).
    """

    node_id: NodeId
    data_dir: str
    listen: str = "127.0.0.1:0"
    peers: Mapping[NodeId, str] = field(default_factory=dict)
    join: bool = False
    #: The address others reach this node at, if not ``listen`` (e.g. 0.0.0.0).
    advertise: str | None = None
    election_timeout_min: float = default_of(RaftConfig, "election_timeout_min")
    election_timeout_max: float = default_of(RaftConfig, "election_timeout_max")
    heartbeat_interval: float = default_of(RaftConfig, "heartbeat_interval")
    #: Take a snapshot after this many applied entries since the last one ...
    snapshot_entries: int = 20_000
    #: ... or after this many bytes of applied commands, whichever comes first.
    snapshot_bytes: int = 64 << 20
    #: Entries kept in the log behind a snapshot for slightly lagging followers.
    snapshot_keep_entries: int = 2_000
    snapshot_chunk_bytes: int = 256 * 1024
    #: Entries handed to the state machine per apply call.
    apply_chunk: int = 512
    #: Proposals waiting to be applied before ``propose`` answers "overloaded".
    max_pending_proposals: int = 50_000
    #: How far (entries) a learner may lag and still be promoted.
    promote_max_lag: int = 1_000
    proposal_timeout: float = 30.0
    max_inflight_appends: int = default_of(RaftConfig, "max_inflight")
    max_entries_per_append: int = default_of(RaftConfig, "max_entries_per_append")
    max_bytes_per_append: int = default_of(RaftConfig, "max_bytes_per_append")
    pre_vote: bool = default_of(RaftConfig, "pre_vote")
    check_quorum: bool = default_of(RaftConfig, "check_quorum")
    cluster_id: str = "trioraft"
    cluster_secret: bytes = b""
    #: client id -> token, for clients of the service (``docstore connect``).
    client_tokens: Mapping[str, bytes] = field(default_factory=dict)
    #: TLS for the listening side (peers and clients connecting to us).
    ssl_context: ssl.SSLContext | None = None
    #: TLS for dialling peers (a server-side context cannot dial).
    client_ssl_context: ssl.SSLContext | None = None
    #: Peer messages queued for the Raft loop before new ones are dropped.
    inbox_size: int = 10_000
    #: Log writes up to this size are written and fsynced in the Trio thread
    #: (it blocks the node for one fsync, cheaper than a worker-thread hop);
    #: larger ones go to a worker thread.  0 sends every write to a thread.
    inline_write_bytes: int = 64 * 1024
    #: ... but only while writes are fast: when the recent writes (a moving
    #: average of 8) took longer than this, they go to a worker thread, so a
    #: slow or busy disk does not stop the node for each fsync (the hop costs
    #: 0.1-0.2 ms).  ``math.inf`` keeps small writes inline whatever they take.
    inline_write_seconds: float = 0.001

    def __post_init__(self) -> None:
        check_node_id(self.node_id, "node_id")
        if not self.data_dir:
            raise ValueError("data_dir is required")
        parse_address(self.listen)
        if self.advertise is not None:
            parse_address(self.advertise)
        for n, addr in self.peers.items():
            check_node_id(n, "peer id")
            if n == self.node_id:
                raise ValueError("peers must not include this node")
            parse_address(addr)
        if self.join and not self.peers:
            raise ValueError("a joining node needs the addresses of existing members")
        for name in ("snapshot_entries", "snapshot_bytes", "apply_chunk", "max_pending_proposals"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not self.inline_write_seconds >= 0:
            raise ValueError("inline_write_seconds must be >= 0")
        if self.snapshot_chunk_bytes < 1024:
            raise ValueError("snapshot_chunk_bytes must be >= 1024")
        # The core cuts a batch at max_bytes_per_append (one entry alone may
        # be larger, up to the proposal limit): the biggest AppendEntries it
        # can build must still fit the frame a follower accepts.
        budget = DEFAULT_MAX_FRAME - FRAME_OVERHEAD
        worst = append_entries_bound(self.max_entries_per_append, self.max_bytes_per_append)
        if worst > budget:
            raise ValueError(
                f"max_bytes_per_append ({self.max_bytes_per_append}) and max_entries_per_append"
                f" ({self.max_entries_per_append}) allow AppendEntries of {worst} bytes,"
                f" over the {budget} a frame carries"
            )
        self.raft_config()  # validates the timing and flow-control settings

    @property
    def address(self) -> str:
        return self.advertise or self.listen

    def raft_config(self) -> RaftConfig:
        return RaftConfig(
            self.node_id,
            election_timeout_min=self.election_timeout_min,
            election_timeout_max=self.election_timeout_max,
            heartbeat_interval=self.heartbeat_interval,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            max_inflight=self.max_inflight_appends,
            max_entries_per_append=self.max_entries_per_append,
            max_bytes_per_append=self.max_bytes_per_append,
        )

    def bootstrap_membership(self) -> Membership:
        voters = set(self.peers) if self.join else {*self.peers, self.node_id}
        addresses = dict(self.peers)
        if not self.join:
            addresses[self.node_id] = self.address
        return Membership.of(voters, addresses=addresses)
