"""The Raft state machine of one node: pure, deterministic, no I/O.

Theory of operation
===================

``RaftCore`` consumes events and produces work; it never awaits, never
reads a clock and never touches a file or socket.  Time arrives as the
``now`` argument of each event (seconds on a monotonic clock, the runtime's
``trio.current_time()``); randomness arrives as an object with a
``random()`` method (a ``random.Random`` seeded by the caller).

Events in:

* ``step(message, now)`` - a message from a peer;
* ``election_timer_fired(now)`` / ``heartbeat_due(now)`` - the two timers
  (``tick(now)`` fires whichever is due; deadlines are ``election_deadline``
  and ``heartbeat_deadline``);
* ``propose(...)``, ``read(...)``, ``change_membership(...)``,
  ``transfer_leadership(...)`` - requests from the application;
* ``advance(ready, applied=...)`` - the storage write (and the rest of a Ready)
  is done; ``applied_to(index)`` - the state machine applied up to ``index``
  (for a runtime that applies in another task);
* ``compact(index)`` - the application took a snapshot at ``index``;
* ``report_unreachable(peer)`` / ``report_snapshot(peer, ok)`` - transport news.

Work out: ``ready()`` returns a :class:`~trioraft.core.types.Ready`.  The
contract, written once, here:

    **persist -> send -> apply -> advance.**  Persist the Ready's snapshot,
    entries and hard state (one ``LogStore.persist`` call, group commit);
    only then send its messages; then install the snapshot and apply the
    committed entries in order and answer the reads; then call
    ``advance(ready, applied=...)``.  ``ready()`` may not be called again
    before ``advance``; events may be stepped in between (their work goes
    into the next Ready).  ``trioraft.core.driver.ReadyDriver`` carries this
    out for every user of the core.

Everything that makes a message safe to send is in the same Ready as the
message: a vote is granted only in a Ready carrying the hard state that
records it; an append acknowledgement only in a Ready carrying the entries it
acknowledges.  One exception is allowed, and it is the only one: when the
Ready carries no hard state, a leader's ``AppendEntries`` may be sent
*before* the write (dissertation 10.2.1; the core lists them in
``Ready.early_messages``, so no user of the core decides it), because the leader counts its own
log towards a quorum only after ``advance`` - so the leader's fsync and the
followers' run in parallel.  A leader counts its own log towards commitment only up to the
index storage reported durable (``advance``), so a single-voter cluster never
reports a commit it could lose (etcd #14370).  ``advance`` checks that what
was written is still what the log holds at those indexes before calling it
stable, so a truncation while a write was in flight cannot be acknowledged as
the old entries (the ABA race of etcd-io/raft's async storage).

Rules upheld (each has a named scenario test in tests/core/):

* elections: randomized timeouts; pre-vote (a node bumps its term only after
  a majority says it could win); check-quorum (a leader that has not heard
  from a quorum within the minimum election timeout steps down); leader
  stickiness (a node that heard from a live leader within the minimum
  election timeout ignores vote requests, unless a leadership transfer asks;
  so does a node for the minimum election timeout after it starts, since it
  may have acked a leader just before it went down);
  learners vote when asked but never campaign and never count;
* each new leader appends a NOOP and serves no read before it is committed;
* commitment counts replicas only of an entry of the current term (Figure 8);
* a follower never truncates an entry that matches, and never one at or
  below its commit index (a stale or reordered append is harmless);
* ReadIndex reads wait for the leader's first commit in its term, then for a
  heartbeat round acknowledged by a quorum; rounds are numbered and a
  response confirms only rounds up to the number it echoes, so a delayed
  response cannot confirm a newer read;
* lease reads are served from a lease that starts when the confirming round
  was *sent* and lasts ``lease_ratio`` of the minimum election timeout,
  shorter than the time any voter that acked the round refuses votes (across
  its own restart too); a transfer campaign skips that refusal, so a leader
  holds no lease during a transfer nor, once it sent a ``TimeoutNow``, for
  the rest of its term (the message may arrive late);
* membership: one change at a time, only after the leader has committed in
  its term; voter changes go through a joint configuration C(old,new) that
  needs both majorities, left automatically once committed; the latest
  configuration in the log is in force (so a truncated one rolls back); a
  leader removed from the voters steps down once that is committed;
* flow control: each follower is probed (one append at a time) until its
  match is found, then replicated with a bounded window of appends in flight;
  heartbeat responses unstick a probe and free a slot of a full window; a
  follower behind the compaction point gets a snapshot; a rejection whose
  hint falls below the recorded match means the follower lost entries it
  acknowledged: the match is reset and the follower probed from the hint;
  a new commit index sends nothing by itself: followers learn it from the
  next append or heartbeat (an empty append at once made the leader's
  answer wait behind two more sends, decodes and acks);
* incarnations: the configuration records each member's data directory
  (the leader records a voter's at first contact, ``peer_incarnation``); a
  member speaking from another one is refused as a voter (its votes and
  acknowledgements are not counted, its appends ignored, its term never
  moves ours) until it is removed and added again, and a node whose own
  record differs never votes or campaigns.

Test-only fault switches (``RaftConfig.faults``) break single guards so the
simulator's tests can prove that it catches each broken guard.

Why this is one file of ~1,500 lines: every rule above reads and writes the
same state (term, log, commit, progress, membership, read rounds), and each
event handler upholds several rules at once; split by rule, a reader would
have to hold several modules open to check one handler.  The types, the
errors and the Ready driver live beside it (types.py, errors.py, driver.py).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from trioraft.core.errors import InvariantViolated, NotLeader, ProposalRejected
from trioraft.core.types import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Membership,
    Message,
    NodeId,
    ReadFailed,
    ReadState,
    Ready,
    RequestVote,
    RequestVoteResponse,
    Role,
    SnapshotMeta,
    TimeoutNow,
    check_node_id,
    is_incarnation,
)

#: Names accepted in ``RaftConfig.faults``.  Each disables one guard.
FAULTS = frozenset(
    {
        "commit_old_term",  # count replicas of an old-term entry (Figure 8)
        "vote_not_persisted",  # grant a vote the hard state does not record
        "learner_in_quorum",  # count learners as voters when committing
        "read_before_commit_in_term",  # serve ReadIndex before the term's first commit
        "stale_append_truncates",  # truncate after prev_index unconditionally
        "restart_votes_at_once",  # grant (pre-)votes right after a restart
        "lease_after_timeout_now",  # renew the lease once a transfer that sent TimeoutNow ends
        "incarnation_unchecked",  # count a voter whatever data directory it speaks from
    }
)


class Rng(Protocol):
    """What the core needs of ``random.Random``."""

    def random(self) -> float: ...


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Tunables of the core.  Times are seconds of the clock that feeds ``now``.

    The runtime's ``NodeConfig`` builds this; its defaults are the documented
    ones.
    """

    node_id: NodeId
    election_timeout_min: float = 1.0
    election_timeout_max: float = 2.0
    heartbeat_interval: float = 0.1
    pre_vote: bool = True
    check_quorum: bool = True
    #: Fraction of ``election_timeout_min`` a lease lasts after its round was sent.
    lease_ratio: float = 0.8
    #: Appends in flight to one follower in the replicate state.
    max_inflight: int = 64
    max_entries_per_append: int = 1024
    max_bytes_per_append: int = 1 << 20
    faults: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        check_node_id(self.node_id, "node_id")
        if not 0 < self.heartbeat_interval < self.election_timeout_min:
            raise ValueError("need 0 < heartbeat_interval < election_timeout_min")
        if self.election_timeout_max <= self.election_timeout_min:
            raise ValueError("need election_timeout_min < election_timeout_max")
        if not 0 < self.lease_ratio < 1:
            raise ValueError("lease_ratio must be in (0, 1)")
        if self.max_inflight < 1 or self.max_entries_per_append < 1:
            raise ValueError("max_inflight and max_entries_per_append must be >= 1")
        unknown = self.faults - FAULTS
        if unknown:
            raise ValueError(f"unknown fault switches {sorted(unknown)}")


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    """The leader's view of one follower (or learner)."""

    __slots__ = (
        "acked_round",
        "inflight",
        "match",
        "next",
        "paused",
        "pending_snapshot",
        "recent_active",
        "snapshot_sent_at",
        "state",
    )

    def __init__(self, next_index: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.paused = False
        self.inflight: deque[int] = deque()  # last index of each append in flight
        self.pending_snapshot = 0
        self.snapshot_sent_at = 0.0
        self.recent_active = False
        self.acked_round = 0

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.paused = False
        self.inflight.clear()
        self.pending_snapshot = 0

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.paused = False
        self.inflight.clear()

    def ack(self, index: int) -> None:
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()


class RaftCore:
    """One node's Raft state.  See the module docstring for the contract."""

    def __init__(
        self,
        config: RaftConfig,
        rng: Rng,
        *,
        membership: Membership,
        now: float,
        hard_state: HardState | None = None,
        entries: Sequence[Entry] = (),
        snapshot: SnapshotMeta | None = None,
        applied: int | None = None,
        incarnation: str = "",
    ) -> None:
        """Build a core from what storage holds (all empty for a new node).

        ``membership`` is the configuration before any log entry: the
        bootstrap voters of a new cluster.  A snapshot's membership and any
        CONFIG entry in ``entries`` override it.  ``applied`` is the state
        machine's last applied index (defaults to the snapshot index).
        ``incarnation`` is the id of this node's data directory ("": none,
        the incarnation rule is then off for this node's own records).
        """
        self.cfg = config
        self.id = config.node_id
        self.incarnation = incarnation
        # Incarnation each peer presented with its latest messages (transport news).
        self._peer_incarnations: dict[NodeId, str] = {}
        self._refused: tuple[Membership, frozenset[NodeId]] | None = None
        self.rng = rng
        self._faults = config.faults
        hs = hard_state or HardState()
        self.term = hs.term
        self.vote = hs.vote
        self._persisted_hs = hs

        self.offset = snapshot.index if snapshot else 0  # log holds offset+1 ..
        self.offset_term = snapshot.term if snapshot else 0
        self.snapshot: SnapshotMeta | None = snapshot
        self.log: list[Entry] = []
        self._base_membership = snapshot.membership if snapshot else membership
        self._configs: list[tuple[int, Membership]] = []  # CONFIG entries in the log
        expect = self.offset + 1
        for e in entries:
            if e.index <= self.offset:
                continue
            if e.index != expect:
                raise InvariantViolated(f"stored log has a gap at index {expect}")
            self.log.append(e)
            if e.kind is EntryKind.CONFIG:
                self._configs.append((e.index, Membership.decode(e.data)))
            expect += 1
        # The highest leader timestamp in the log: a leader never stamps below it,
        # so time as the state machines see it (TTL, session expiry) never runs back.
        self._stamp = max((e.timestamp_ms for e in self.log), default=0)
        self.membership = self._current_membership()
        self.stable = self.last_index()
        self._unstable_from = self.last_index() + 1
        self.commit = min(max(hs.commit, self.offset), self.last_index())
        self.applied = self.offset if applied is None else max(applied, self.offset)
        if self.applied > self.commit:
            # The state machine is ahead of the persisted commit hint; it can
            # only have applied committed entries, so the hint lagged.
            self.commit = min(self.applied, self.last_index())
        self._apply_cursor = self.applied

        self.role = Role.FOLLOWER
        self.leader: NodeId | None = None
        self.now = now
        self.last_leader_contact = -1e18
        # A restart forgets which leader we heard from, not that a leader we
        # acked may hold a lease on our word: start as if we just heard one.
        self._quiet_until = now + config.election_timeout_min
        self.election_deadline = 0.0
        self.heartbeat_deadline = 1e18
        self._reset_election_deadline()

        self._votes: dict[NodeId, bool] = {}
        self.progress: dict[NodeId, Progress] = {}
        self._term_start = 0  # index of this leader's NOOP
        self._check_quorum_deadline = 1e18
        self._transfer_to: NodeId | None = None
        self._transfer_deadline = 0.0
        self._timeout_now_sent = False  # in this leadership: no lease until it ends
        self._lease_until = -1e18
        self._round = 0  # read rounds sent
        self._round_sent: dict[int, float] = {}
        self._round_wanted = False
        self._reads_waiting_commit: list[int] = []
        self._reads_by_round: dict[int, list[tuple[int, int]]] = {}
        self._read_ids: set[int] = set()

        self._msgs: list[Message] = []
        self._reads_out: list[ReadState] = []
        self._failed_reads: list[ReadFailed] = []
        self._pending_snapshot: SnapshotMeta | None = None
        self._broadcast_wanted = False
        self._in_flight_ready = False

    # ------------------------------------------------------------------ log

    def last_index(self) -> int:
        return self.offset + len(self.log)

    def last_term(self) -> int:
        return self.log[-1].term if self.log else self.offset_term

    def term_at(self, index: int) -> int | None:
        """Term of the entry at ``index``; None if compacted away or beyond the log."""
        if index == self.offset:
            return self.offset_term
        if index < self.offset or index > self.offset + len(self.log):
            return None
        return self.log[index - self.offset - 1].term

    def entry(self, index: int) -> Entry:
        return self.log[index - self.offset - 1]

    def entries_between(self, lo: int, hi: int) -> list[Entry]:
        """Entries [lo, hi) still in the log."""
        return self.log[lo - self.offset - 1 : hi - self.offset - 1]

    def _append(self, entries: Iterable[Entry]) -> None:
        first = True
        for e in entries:
            if first:
                self._unstable_from = min(self._unstable_from, e.index)
                first = False
            self.log.append(e)
            if e.timestamp_ms > self._stamp:
                self._stamp = e.timestamp_ms
            if e.kind is EntryKind.CONFIG:
                self._configs.append((e.index, Membership.decode(e.data)))
                self._membership_changed()

    def _truncate_from(self, index: int) -> None:
        """Drop entries >= index (a conflict with the leader's log)."""
        if index <= self.commit:
            raise InvariantViolated(
                f"node {self.id}: asked to truncate committed index {index} (commit {self.commit})"
            )
        del self.log[index - self.offset - 1 :]
        self._unstable_from = min(self._unstable_from, index)
        self.stable = min(self.stable, index - 1)
        if self._configs and self._configs[-1][0] >= index:
            while self._configs and self._configs[-1][0] >= index:
                self._configs.pop()
            self._membership_changed()

    def _current_membership(self) -> Membership:
        return self._configs[-1][1] if self._configs else self._base_membership

    @property
    def config_index(self) -> int:
        """Index of the latest configuration entry still in the log (0: none)."""
        return self._configs[-1][0] if self._configs else 0

    def membership_at(self, index: int) -> Membership:
        m = self._base_membership
        for i, c in self._configs:
            if i > index:
                break
            m = c
        return m

    def _membership_changed(self) -> None:
        self.membership = self._current_membership()
        if self.role is Role.LEADER:
            self._sync_progress()

    def _sync_progress(self) -> None:
        wanted = self.membership.members - {self.id}
        for n in list(self.progress):
            if n not in wanted:
                del self.progress[n]
        for n in wanted:
            if n not in self.progress:
                self.progress[n] = Progress(self.last_index() + 1)

    def _find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest i <= index whose term is <= term (etcd's hint search)."""
        index = min(index, self.last_index())
        while index > self.offset:
            t = self.term_at(index)
            assert t is not None
            if t <= term:
                return index, t
            index -= 1
        return index, self.offset_term if index == self.offset else 0

    def _is_up_to_date(self, last_index: int, last_term: int) -> bool:
        lt = self.last_term()
        return last_term > lt or (last_term == lt and last_index >= self.last_index())

    # --------------------------------------------------------------- timers

    def _reset_election_deadline(self) -> None:
        lo, hi = self.cfg.election_timeout_min, self.cfg.election_timeout_max
        if self.role is Role.LEADER:
            self.election_deadline = 1e18
        else:
            self.election_deadline = self.now + lo + (hi - lo) * self.rng.random()

    def tick(self, now: float) -> None:
        """Fire whatever timer is due at ``now``."""
        if now >= self.election_deadline:
            self.election_timer_fired(now)
        if now >= self.heartbeat_deadline:
            self.heartbeat_due(now)

    def next_deadline(self) -> float:
        return min(self.election_deadline, self.heartbeat_deadline)

    def election_timer_fired(self, now: float) -> None:
        """The election timer expired: campaign (pre-vote first) if allowed."""
        self.now = max(self.now, now)
        if self.role is Role.LEADER or self.now < self.election_deadline:
            return
        self._reset_election_deadline()
        if not self.membership.is_voter(self.id) or self._self_refused():
            return  # learners, removed nodes and a wiped voter never campaign
        if self.cfg.pre_vote:
            self._campaign_pre_vote()
        else:
            self._campaign(transfer=False)

    def heartbeat_due(self, now: float) -> None:
        """Leader housekeeping: heartbeats, check-quorum, transfer and snapshot timeouts."""
        self.now = max(self.now, now)
        if self.role is not Role.LEADER:
            self.heartbeat_deadline = 1e18
            return
        if self.now < self.heartbeat_deadline:
            return
        self.heartbeat_deadline = self.now + self.cfg.heartbeat_interval
        if self.now >= self._check_quorum_deadline:
            self._check_quorum_deadline = self.now + self.cfg.election_timeout_min
            if self.cfg.check_quorum:
                active = {n for n, p in self.progress.items() if p.recent_active}
                active.add(self.id)
                for p in self.progress.values():
                    p.recent_active = False
                if not self.membership.has_quorum(active):
                    self._become_follower(self.term, None)
                    return
        if self._transfer_to is not None and self.now >= self._transfer_deadline:
            self._transfer_to = None
        for n, p in self.progress.items():
            if (
                p.state is ProgressState.SNAPSHOT
                and self.now - p.snapshot_sent_at > self.cfg.election_timeout_max
            ):
                p.become_probe()  # the snapshot was lost: probe (and resend) again
                self._send_append(n)
        self._round_wanted = True  # every heartbeat is a (cheap) read round

    # ------------------------------------------------------------ elections

    def _campaign_pre_vote(self) -> None:
        self.role = Role.PRE_CANDIDATE
        self.leader = None
        self._votes = {self.id: True}
        if self._tally() == "won":
            self._campaign(transfer=False)
            return
        for n in self.membership.all_voters - {self.id}:
            self._msgs.append(
                RequestVote(
                    self.term + 1, self.id, n, self.last_index(), self.last_term(), pre_vote=True
                )
            )

    def _campaign(self, *, transfer: bool) -> None:
        self.role = Role.CANDIDATE
        self.term += 1
        self.vote = self.id
        self.leader = None
        self._votes = {self.id: True}
        self._reset_election_deadline()
        if self._tally() == "won":
            self._become_leader()
            return
        for n in self.membership.all_voters - {self.id}:
            self._msgs.append(
                RequestVote(
                    self.term, self.id, n, self.last_index(), self.last_term(), transfer=transfer
                )
            )

    def _tally(self) -> str:
        granted = [n for n, ok in self._votes.items() if ok]
        if self.membership.has_quorum(granted):
            return "won"
        rejected = {n for n, ok in self._votes.items() if not ok}
        if not self.membership.has_quorum(self.membership.all_voters - rejected):
            return "lost"
        return "pending"

    def _become_follower(self, term: int, leader: NodeId | None) -> None:
        was_leader = self.role is Role.LEADER
        if term > self.term:
            self.term = term
            self.vote = None
        self.role = Role.FOLLOWER
        self.leader = leader
        self._votes = {}
        self.heartbeat_deadline = 1e18
        if was_leader:
            self.progress = {}
            self._transfer_to = None
            self._lease_until = -1e18
            self._fail_all_reads("leadership lost")
        self._reset_election_deadline()

    def _become_leader(self) -> None:
        self.role = Role.LEADER
        self.leader = self.id
        self._votes = {}
        self.progress = {}
        self._sync_progress()
        for p in self.progress.values():
            p.recent_active = True  # a fresh leader gets one full period to hear back
        self._check_quorum_deadline = self.now + self.cfg.election_timeout_min
        self.heartbeat_deadline = self.now + self.cfg.heartbeat_interval
        self.election_deadline = 1e18
        self._transfer_to = None
        self._timeout_now_sent = False
        self._lease_until = -1e18
        self._round = 0
        self._round_sent = {}
        self._term_start = self.last_index() + 1
        self._append([Entry(self._term_start, self.term, EntryKind.NOOP)])
        self._broadcast_wanted = True
        self._maybe_commit()

    def _handle_request_vote(self, m: RequestVote) -> None:
        if m.term > self.term and not m.transfer and self._in_lease():
            return  # a live leader is known: ignore (check-quorum stickiness)
        up_to_date = self._is_up_to_date(m.last_index, m.last_term)
        if m.pre_vote:
            # A pre-vote changes nothing here: no term bump, no vote recorded.
            grant = up_to_date and (
                m.term > self.term or (self.vote in (None, m.src) and self.leader is None)
            )
            # Answer a granted pre-vote with the request's term (etcd d4471b2).
            self._msgs.append(
                RequestVoteResponse(
                    m.term if grant else self.term, self.id, m.src, grant, pre_vote=True
                )
            )
            return
        if m.term > self.term:
            self._become_follower(m.term, None)
        grant = (
            m.term == self.term
            and (self.vote == m.src or (self.vote is None and self.leader is None))
            and up_to_date
        )
        if grant:
            self.vote = m.src
            self._reset_election_deadline()
        self._msgs.append(RequestVoteResponse(self.term, self.id, m.src, grant))

    def _in_lease(self) -> bool:
        """True while this node believes a live leader exists (check-quorum stickiness).

        Also for one minimum election timeout after the node starts: it may
        have acked a round just before it went down (``restart_votes_at_once``
        breaks this guard).
        """
        if not self.cfg.check_quorum:
            return False
        if self.now < self._quiet_until and "restart_votes_at_once" not in self._faults:
            return True
        if self.leader is None:
            return False
        if self.role is Role.LEADER:
            return True  # check-quorum deposes us if we are not live
        return self.now - self.last_leader_contact < self.cfg.election_timeout_min

    def _handle_vote_response(self, m: RequestVoteResponse) -> None:
        if m.pre_vote:
            if not m.granted and m.term > self.term:
                # Rejected by a node in a newer term: join it, or a node whose
                # vote is spent in that term would refuse us forever.
                self._become_follower(m.term, None)
                return
            if self.role is not Role.PRE_CANDIDATE or m.term not in (self.term, self.term + 1):
                return
        elif self.role is not Role.CANDIDATE or m.term != self.term:
            return
        if not self.membership.is_voter(m.src):
            return
        self._votes[m.src] = m.granted
        result = self._tally()
        if result == "won":
            if m.pre_vote:
                self._campaign(transfer=False)
            else:
                self._become_leader()
        elif result == "lost":
            self._become_follower(self.term, None)

    # ---------------------------------------------------------------- step

    def step(self, m: Message, now: float) -> None:
        """Handle one message from a peer.  Never raises for a peer's mistake."""
        self.now = max(self.now, now)
        if m.dst != self.id or m.src == self.id:
            return
        if m.src in self.refused_peers():
            self._step_refused(m)
            return
        if isinstance(m, RequestVote | TimeoutNow) and self._self_refused():
            # This data directory is not the one the cluster knows us by.
            if isinstance(m, RequestVote):
                self._msgs.append(
                    RequestVoteResponse(self.term, self.id, m.src, False, pre_vote=m.pre_vote)
                )
            return
        if isinstance(m, RequestVote):
            if m.term < self.term:
                self._msgs.append(
                    RequestVoteResponse(self.term, self.id, m.src, False, pre_vote=m.pre_vote)
                )
                return
            self._handle_request_vote(m)
            return
        if isinstance(m, RequestVoteResponse):
            if m.term > self.term and not m.pre_vote:
                self._become_follower(m.term, None)
                return
            self._handle_vote_response(m)
            return
        if m.term > self.term:
            leader = m.src if isinstance(m, AppendEntries | Heartbeat | InstallSnapshot) else None
            self._become_follower(m.term, leader)
        elif m.term < self.term:
            if isinstance(m, AppendEntries | Heartbeat | InstallSnapshot):
                # Tell a stale leader about the newer term so it steps down.
                self._msgs.append(AppendEntriesResponse(self.term, self.id, m.src, False, 0))
            return
        if isinstance(m, AppendEntries | Heartbeat | InstallSnapshot):
            self._contact_from_leader(m.src)
            if isinstance(m, AppendEntries):
                self._handle_append(m)
            elif isinstance(m, Heartbeat):
                self._handle_heartbeat(m)
            else:
                self._handle_snapshot(m)
        elif isinstance(m, TimeoutNow):
            if self.membership.is_voter(self.id) and self.role is not Role.LEADER:
                self._campaign(transfer=True)
        elif self.role is Role.LEADER:
            if isinstance(m, AppendEntriesResponse):
                self._handle_append_response(m)
            elif isinstance(m, HeartbeatResponse):
                self._handle_heartbeat_response(m)

    def _contact_from_leader(self, leader: NodeId) -> None:
        if self.role is Role.LEADER:
            # Two leaders in one term is impossible; a peer lying is not.
            return
        if self.role is not Role.FOLLOWER:
            self._become_follower(self.term, leader)
        self.leader = leader
        self.last_leader_contact = self.now
        self._reset_election_deadline()

    # ------------------------------------------------------------ follower

    def _handle_append(self, m: AppendEntries) -> None:
        if self.role is Role.LEADER:
            return
        if m.prev_index < self.commit:
            # Stale: everything up to our commit already matches the leader.
            self._msgs.append(AppendEntriesResponse(self.term, self.id, m.src, True, self.commit))
            return
        if self.term_at(m.prev_index) != m.prev_term:
            hint_index, hint_term = self._find_conflict_by_term(
                min(m.prev_index, self.last_index()), m.prev_term
            )
            self._msgs.append(
                AppendEntriesResponse(
                    self.term, self.id, m.src, False, m.prev_index, hint_index, hint_term
                )
            )
            return
        new = m.entries
        if "stale_append_truncates" in self._faults:
            if m.prev_index < self.last_index():
                # The bug: drop everything after prev_index, matching or not
                # (prev_index >= commit here, so nothing committed goes).
                self._truncate_from(m.prev_index + 1)
        else:
            # Skip the prefix we already hold; truncate only at a real conflict.
            for i, e in enumerate(new):
                t = self.term_at(e.index)
                if t != e.term:
                    if t is not None:
                        self._truncate_from(e.index)
                    new = new[i:]
                    break
            else:
                new = ()
        if new:
            if new[0].index != self.last_index() + 1:
                raise InvariantViolated("append would leave a gap")
            self._append(new)
        last_new = m.prev_index + len(m.entries)
        if m.commit > self.commit:
            self.commit = max(self.commit, min(m.commit, last_new))
        self._msgs.append(AppendEntriesResponse(self.term, self.id, m.src, True, last_new))

    def _handle_heartbeat(self, m: Heartbeat) -> None:
        if self.role is Role.LEADER:
            return
        if m.commit > self.commit:
            self.commit = min(m.commit, self.last_index())
        self._msgs.append(HeartbeatResponse(self.term, self.id, m.src, m.ctx))

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        if self.role is Role.LEADER:
            return
        meta = m.meta
        if meta.index <= self.commit:
            self._msgs.append(AppendEntriesResponse(self.term, self.id, m.src, True, self.commit))
            return
        if self.term_at(meta.index) == meta.term:
            # We hold the entry already: only the commit index moves.
            self.commit = meta.index
            self._msgs.append(AppendEntriesResponse(self.term, self.id, m.src, True, meta.index))
            return
        self._restore(meta)
        self._msgs.append(AppendEntriesResponse(self.term, self.id, m.src, True, meta.index))

    def _restore(self, meta: SnapshotMeta) -> None:
        self.log = []
        self.offset = meta.index
        self.offset_term = meta.term
        self.snapshot = meta
        self._pending_snapshot = meta
        self._base_membership = meta.membership
        self._configs = []
        self.membership = meta.membership
        self.commit = meta.index
        self._unstable_from = meta.index + 1
        self.stable = meta.index
        self._apply_cursor = meta.index

    # -------------------------------------------------------------- leader

    def _send_append(self, peer: NodeId, *, allow_empty: bool = True) -> None:
        pr = self.progress.get(peer)
        if pr is None or pr.state is ProgressState.SNAPSHOT:
            return
        if pr.state is ProgressState.PROBE and pr.paused:
            return
        if pr.state is ProgressState.REPLICATE and len(pr.inflight) >= self.cfg.max_inflight:
            return
        prev = pr.next - 1
        prev_term = self.term_at(prev)
        if prev_term is None or pr.next <= self.offset:
            self._send_snapshot(peer, pr)
            return
        last = self.last_index()
        hi = min(last + 1, pr.next + self.cfg.max_entries_per_append)
        entries = self.entries_between(pr.next, hi)
        size = 0
        for i, e in enumerate(entries):
            size += e.size()
            if size > self.cfg.max_bytes_per_append and i > 0:
                del entries[i:]
                break
        if not entries and not allow_empty and pr.state is ProgressState.REPLICATE:
            return
        self._msgs.append(
            AppendEntries(
                term=self.term,
                src=self.id,
                dst=peer,
                prev_index=prev,
                prev_term=prev_term,
                entries=tuple(entries),
                commit=self.commit,
            )
        )
        if pr.state is ProgressState.REPLICATE:
            if entries:
                pr.next = entries[-1].index + 1
                pr.inflight.append(entries[-1].index)
        else:
            pr.paused = True

    def _send_snapshot(self, peer: NodeId, pr: Progress) -> None:
        if self.snapshot is None:
            raise InvariantViolated("log compacted without a snapshot")
        pr.state = ProgressState.SNAPSHOT
        pr.pending_snapshot = self.snapshot.index
        pr.snapshot_sent_at = self.now
        pr.inflight.clear()
        self._msgs.append(InstallSnapshot(self.term, self.id, peer, self.snapshot))

    def _broadcast_append(self, *, allow_empty: bool) -> None:
        for n in self.progress:
            self._send_append(n, allow_empty=allow_empty)

    def _answered(self, src: NodeId) -> tuple[Progress | None, bool]:
        """The progress of the peer ``src`` that answered (None: not a peer), and
        whether its acknowledgements count (it is then marked active).

        A refused peer is still replicated to, but its acknowledgements
        confirm nothing: no read round, no check-quorum.
        """
        pr = self.progress.get(src)
        if pr is None:
            return None, False
        counts = src not in self.refused_peers()
        if counts:
            pr.recent_active = True
        return pr, counts

    def _handle_append_response(self, m: AppendEntriesResponse) -> None:
        pr, _ = self._answered(m.src)
        if pr is None:
            return
        if not m.success:
            self._handle_reject(m.src, pr, m)
            return
        if m.index <= pr.match:
            if pr.state is ProgressState.PROBE:
                pr.paused = False
                self._send_append(m.src)
            return
        if m.index > self.last_index():
            return  # a response from a follower of a previous leadership: ignore
        pr.match = m.index
        pr.next = max(pr.next, m.index + 1)
        pr.ack(m.index)
        if pr.state is not ProgressState.REPLICATE:
            pr.become_replicate()  # a fresh match: pipeline from there
        self._maybe_commit()
        if self.role is not Role.LEADER:
            return  # committing our own removal made us step down
        if m.src == self._transfer_to and pr.match == self.last_index():
            self._send_timeout_now(m.src)
        # keep the pipe full
        self._send_append(m.src, allow_empty=False)

    def _handle_reject(self, peer: NodeId, pr: Progress, m: AppendEntriesResponse) -> None:
        if pr.state is ProgressState.REPLICATE:
            if m.index < pr.match:
                return  # stale: answers an append sent before the match moved past it
        elif pr.state is ProgressState.PROBE:
            if m.index != pr.next - 1:
                return  # stale
        else:
            return
        if m.hint_index < pr.match or (
            m.hint_index == pr.match > 0 and self.term_at(pr.match) != m.hint_term
        ):
            # The follower no longer holds entries it acknowledged: its data
            # directory was lost (or its disk lied).  Were the entries up to
            # ``match`` still there, its hint search would have stopped at or
            # above ``match`` with our term.  Forget that match, keep only
            # what the hint proves (its entry at hint_index has our term
            # there, so the logs agree up to it), and probe from the hint.
            proven = m.hint_index if self.term_at(m.hint_index) == m.hint_term else 0
            pr.match = min(pr.match, proven)
        elif m.index <= pr.match:
            return  # stale
        idx, _ = self._find_conflict_by_term(m.hint_index, m.hint_term)
        pr.become_probe()
        pr.next = max(min(m.index, idx + 1), pr.match + 1)
        self._send_append(peer)

    def _handle_heartbeat_response(self, m: HeartbeatResponse) -> None:
        pr, counts = self._answered(m.src)
        if pr is None:
            return
        if counts and m.ctx > pr.acked_round:
            pr.acked_round = m.ctx
            self._confirm_rounds()
        if pr.match < self.last_index():
            if pr.state is ProgressState.PROBE:
                pr.paused = False
            elif pr.state is ProgressState.REPLICATE and len(pr.inflight) >= self.cfg.max_inflight:
                pr.inflight.popleft()  # a lost append must not wedge the window
            self._send_append(m.src)

    def _quorum_membership(self) -> Membership:
        m = self.membership
        if "learner_in_quorum" in self._faults and m.learners:
            return Membership(m.voters | m.learners, m.voters_outgoing)
        return m

    def _maybe_commit(self) -> None:
        refused = self.refused_peers()
        match = {n: p.match for n, p in self.progress.items() if n not in refused}
        match[self.id] = self.stable
        idx = self._quorum_membership().committed_index(match)
        if idx <= self.commit:
            return
        if self.term_at(idx) != self.term and "commit_old_term" not in self._faults:
            return  # Figure 8: only an entry of our own term commits by counting
        self.commit = idx
        self._on_commit_advanced()

    def _on_commit_advanced(self) -> None:
        if self.role is not Role.LEADER:
            return
        if self._reads_waiting_commit and self.commit >= self._term_start:
            waiting, self._reads_waiting_commit = self._reads_waiting_commit, []
            for rid in waiting:
                self._register_read(rid)
        if self.config_index <= self.commit:
            m = self.membership
            if m.joint:
                # C(old,new) is committed: move on to C(new) on our own.
                addr = m.without_bad_addresses().address_map
                self._append_config(
                    Membership.of(
                        m.voters, m.learners, addresses=addr, incarnations=m.incarnation_map
                    )
                )
            elif not m.is_voter(self.id):
                # Our removal is committed: stop leading (dissertation 4.2.2).
                self._become_follower(self.term, None)
                return
        self._maybe_record_incarnations()

    # ------------------------------------------------------------- advance

    def ready(self) -> Ready:
        """Collect the work produced since the last Ready.  See the module docstring."""
        if self._in_flight_ready:
            raise RuntimeError("ready() called again before advance()")
        if self.role is Role.LEADER:
            if self._broadcast_wanted:
                # A new commit index rides on the next append or heartbeat.
                self._broadcast_append(allow_empty=False)
                self._broadcast_wanted = False
            if self._round_wanted:
                self._round_wanted = False
                self._start_round()
        entries: tuple[Entry, ...] = ()
        if self._unstable_from <= self.last_index():
            entries = tuple(self.log[self._unstable_from - self.offset - 1 :])
        hs_out = self._hard_state_to_persist()
        committed: tuple[Entry, ...] = ()
        if self.commit > self._apply_cursor:
            committed = tuple(self.entries_between(self._apply_cursor + 1, self.commit + 1))
        messages = tuple(self._msgs)
        early: tuple[Message, ...] = ()
        if hs_out is None and self._pending_snapshot is None and self.role is Role.LEADER:
            # The contract's one exception: a leader's appends may leave before
            # its own write, so its fsync and the followers' overlap.
            early = tuple(m for m in messages if isinstance(m, AppendEntries))
        rd = Ready(
            hard_state=hs_out,
            entries=entries,
            snapshot=self._pending_snapshot,
            messages=messages,
            committed=committed,
            reads=tuple(self._reads_out),
            failed_reads=tuple(self._failed_reads),
            early_messages=early,
        )
        if rd:
            self._in_flight_ready = True
            self._msgs = []
            self._reads_out = []
            self._failed_reads = []
            self._pending_snapshot = None
            self._unstable_from = self.last_index() + 1
            if committed:
                self._apply_cursor = committed[-1].index
        return rd

    def _hard_state_to_persist(self) -> HardState | None:
        """The hard state to write, or None.

        Written when the term or vote changed: nothing that depends on them
        may leave before they are durable.  The commit index in it is a hint
        for restarts only (the state machine's applied index is the real
        restart point), so a commit change alone costs no fsync.
        """
        if not self._hard_state_changed():
            return None
        return HardState(self.term, self._vote_to_persist(), self.commit)

    def _vote_to_persist(self) -> NodeId | None:
        return None if "vote_not_persisted" in self._faults else self.vote

    def _hard_state_changed(self) -> bool:
        """Whether the term or vote differs from the last persisted hard state."""
        p = self._persisted_hs
        return self.term != p.term or self._vote_to_persist() != p.vote

    def has_ready(self) -> bool:
        """True if ``ready()`` would return work (cheap check for the runtime).

        Called once more than ``ready()`` in every drain (the call that finds
        nothing), so it builds nothing.
        """
        writing = self._unstable_from <= self.last_index() or self._pending_snapshot is not None
        return bool(
            writing
            or self._msgs
            or self._reads_out
            or self._failed_reads
            or self.commit > self._apply_cursor
            or (self.role is Role.LEADER and (self._broadcast_wanted or self._round_wanted))
            or self._hard_state_changed()
        )

    def advance(self, rd: Ready, *, applied: int | None = None) -> None:
        """The Ready ``rd`` has been persisted and sent; ``applied`` is applied.

        ``applied`` is the state machine's last applied index now.  None
        means everything ``rd`` handed over (its snapshot, its committed
        entries) has been applied, as a driver that applies before advancing
        does; a runtime that applies in another task passes what that task
        has done and reports the rest with :meth:`applied_to`, so
        ``self.applied`` is always what the state machine holds.
        """
        if not rd:
            return
        self._in_flight_ready = False
        if rd.hard_state is not None:
            self._persisted_hs = rd.hard_state
        if rd.snapshot is not None:
            self.stable = max(self.stable, rd.snapshot.index)
        if applied is None:
            if rd.snapshot is not None:
                self.applied = max(self.applied, rd.snapshot.index)
            if rd.committed:
                self.applied = max(self.applied, rd.committed[-1].index)
        else:
            self.applied_to(applied)
        if rd.entries:
            # Stable only where the log still holds what was written (ABA guard).
            for e in reversed(rd.entries):
                if self.term_at(e.index) == e.term:
                    if e.index > self.stable:
                        self.stable = e.index
                    break
        if self.role is Role.LEADER and rd.entries:
            self._maybe_commit()

    def applied_to(self, index: int) -> None:
        """The state machine has applied every entry up to ``index`` (or a snapshot there).

        Only entries (and snapshots) a Ready handed over can be applied, so
        ``index`` is at most what the core has handed over.
        """
        if index > self._apply_cursor:
            raise InvariantViolated(
                f"applied {index}, but only entries up to {self._apply_cursor} were handed over"
            )
        if index > self.applied:
            self.applied = index

    # -------------------------------------------------------------- client

    def propose(
        self,
        data: bytes,
        *,
        client_id: str = "",
        sequence: int = 0,
        timestamp_ms: int = 0,
        kind: EntryKind = EntryKind.NORMAL,
    ) -> int:
        """Append a command to the leader's log; returns its index.

        Raises :class:`NotLeader` on a non-leader, :class:`ProposalRejected`
        while a leadership transfer is in progress.  ``timestamp_ms`` (the
        leader's clock) is raised to the highest stamp in the log if below it:
        stamps never decrease along the log, across leaders too.  The entry is committed
        once it shows up in a Ready's ``committed`` with the same term;
        if a different entry commits at that index, the proposal was lost.
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self._transfer_to is not None:
            raise ProposalRejected(f"leadership transfer to {self._transfer_to} in progress")
        if kind is EntryKind.CONFIG:
            raise ValueError("use change_membership() for configuration changes")
        index = self.last_index() + 1
        stamp = max(timestamp_ms, self._stamp)  # never below an earlier leader's clock
        entry = Entry(
            index=index,
            term=self.term,
            kind=kind,
            data=data,
            client_id=client_id,
            sequence=sequence,
            timestamp_ms=stamp,
        )
        self._append([entry])
        self._broadcast_wanted = True
        return index

    def read(self, request_id: int, now: float, *, lease: bool = False) -> None:
        """Ask for a linearizable read point.

        The answer comes in a later Ready: ``ReadState(request_id, index)``
        (serve the read once applied >= index) or ``ReadFailed``.  A request
        id already pending is not registered twice.  ``lease=True`` answers
        at once from the leader lease when it is valid (needs check-quorum),
        otherwise falls back to ReadIndex.  ``now`` matters: a leader that was
        paused must not judge its lease by the time it last saw.
        """
        self.now = max(self.now, now)
        if self.role is not Role.LEADER:
            self._failed_reads.append(ReadFailed(request_id, self.leader, "not leader"))
            return
        if request_id in self._read_ids:
            return
        committed_in_term = self.commit >= self._term_start
        if lease and self.cfg.check_quorum and committed_in_term and self.now < self._lease_until:
            self._reads_out.append(ReadState(request_id, self.commit))
            return
        self._read_ids.add(request_id)
        if not committed_in_term and "read_before_commit_in_term" not in self._faults:
            self._reads_waiting_commit.append(request_id)
            return
        self._register_read(request_id)

    def _register_read(self, request_id: int) -> None:
        # The read waits for the next round (sent in the next Ready).
        rnd = self._round + 1
        self._reads_by_round.setdefault(rnd, []).append((request_id, self.commit))
        self._round_wanted = True
        self._confirm_rounds()  # a single voter confirms on its own

    def _start_round(self) -> None:
        self._round += 1
        self._round_sent[self._round] = self.now
        for n, p in self.progress.items():
            self._msgs.append(
                Heartbeat(self.term, self.id, n, min(p.match, self.commit), self._round)
            )
        self._confirm_rounds()

    def _confirm_rounds(self) -> None:
        acked = {n: p.acked_round for n, p in self.progress.items()}
        acked[self.id] = self._round
        done = self.membership.committed_index(acked)
        if done <= 0:
            return
        sent = self._round_sent.get(done)
        if sent is not None and self.cfg.check_quorum:
            lease = self.cfg.election_timeout_min * self.cfg.lease_ratio
            if self._transfer_to is None and not self._timeout_now_sent:
                self._lease_until = max(self._lease_until, sent + lease)
        for r in [r for r in self._round_sent if r < done]:
            del self._round_sent[r]
        for r in sorted(r for r in self._reads_by_round if r <= done):
            for rid, idx in self._reads_by_round.pop(r):
                self._read_ids.discard(rid)
                self._reads_out.append(ReadState(rid, idx))

    def _fail_all_reads(self, reason: str) -> None:
        pending = list(self._reads_waiting_commit)
        for lst in self._reads_by_round.values():
            pending.extend(rid for rid, _ in lst)
        self._reads_waiting_commit = []
        self._reads_by_round = {}
        self._read_ids = set()
        for rid in pending:
            self._failed_reads.append(ReadFailed(rid, self.leader, reason))

    # ----------------------------------------------------------- membership

    def change_membership(
        self,
        voters: Iterable[NodeId],
        learners: Iterable[NodeId] = (),
        addresses: Mapping[NodeId, str] | None = None,
    ) -> int:
        """Propose a new configuration; returns the index of its first entry.

        A change of voters goes through the joint configuration C(old,new)
        and the leader moves on to C(new) once that commits.  Learner-only
        changes take one entry.  One change at a time, and only after this
        leader has committed an entry of its term.  ``addresses`` adds or
        changes where members listen; addresses of removed nodes are dropped,
        and so are addresses an earlier version let into the log that are
        not ``host:port``.  Raises ValueError for a node id outside
        1..2**63-1 or a bad address (:meth:`Membership.of`).
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        new_voters, new_learners = frozenset(voters), frozenset(learners)
        addr = {**self.membership.without_bad_addresses().address_map, **(addresses or {})}
        # Members keep their records; a new member is recorded if it has
        # already presented an incarnation (else the leader records it later).
        inc = {**self._known_incarnations(), **self.membership.incarnation_map}
        target = Membership.of(
            new_voters, new_learners, addresses=addr, incarnations=inc
        )  # validates
        if self.commit < self._term_start:
            raise ProposalRejected("leader has not committed an entry of its term yet")
        if self.config_index > self.commit or self.membership.joint:
            raise ProposalRejected("another membership change is in progress")
        if self._transfer_to is not None:
            raise ProposalRejected("leadership transfer in progress")
        cur = self.membership
        if target.voters == cur.voters:
            return self._append_config(target)
        return self._append_config(
            Membership.of(
                new_voters, new_learners, outgoing=cur.voters, addresses=addr, incarnations=inc
            )
        )

    def _append_config(self, m: Membership) -> int:
        index = self.last_index() + 1
        self._append([Entry(index, self.term, EntryKind.CONFIG, m.encode())])
        self._broadcast_wanted = True
        return index

    def transfer_leadership(self, target: NodeId) -> None:
        """Hand leadership to ``target``: catch it up, then send TimeoutNow.

        Proposals are refused until the transfer finishes or times out
        (after the maximum election timeout).
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if target == self.id:
            return
        if not self.membership.is_voter(target) or target not in self.progress:
            raise ValueError(f"node {target} is not a voter")
        if target in self.refused_peers():
            raise ValueError(f"node {target} is refused (unknown data directory)")
        self._transfer_to = target
        self._transfer_deadline = self.now + self.cfg.election_timeout_max
        self._lease_until = -1e18  # the new leader may start before our lease ends
        pr = self.progress[target]
        if pr.match == self.last_index():
            self._send_timeout_now(target)
        else:
            self._send_append(target)

    def _send_timeout_now(self, target: NodeId) -> None:
        # The target's campaign skips every voter's stickiness, and the
        # message may arrive late (a paused target, a slow link): after the
        # transfer has timed out, or to confirm nothing, it still elects a
        # leader.  So no lease for the rest of this term.
        if "lease_after_timeout_now" not in self._faults:
            self._timeout_now_sent = True
        self._lease_until = -1e18
        self._msgs.append(TimeoutNow(self.term, self.id, target))

    @property
    def transferring_to(self) -> NodeId | None:
        return self._transfer_to

    # ------------------------------------------------------------ snapshots

    def compact(self, index: int, keep_entries: int = 0) -> SnapshotMeta:
        """The state machine holds a durable snapshot at ``index``: drop the log before it.

        The newest ``keep_entries`` entries up to ``index`` stay in the log,
        so a follower lagging by less than that still gets entries instead of
        a whole snapshot.  The new log start is ``self.offset`` afterwards.
        """
        if index > self.applied:
            raise ValueError(f"cannot compact to {index}: only {self.applied} applied")
        if self.snapshot is not None and index <= self.snapshot.index:
            return self.snapshot
        term = self.term_at(index)
        if term is None:
            raise ValueError(f"cannot compact to {index}: not in the log")
        meta = SnapshotMeta(index, term, self.membership_at(index))
        self.snapshot = meta
        start = max(self.offset, index - max(0, keep_entries))
        if start > self.offset:
            start_term = self.term_at(start)
            assert start_term is not None
            self._base_membership = self.membership_at(start)
            self._configs = [(i, c) for i, c in self._configs if i > start]
            del self.log[: start - self.offset]
            self.offset, self.offset_term = start, start_term
        return meta

    def report_snapshot(self, peer: NodeId, ok: bool) -> None:
        """The runtime finished (or failed) streaming a snapshot to ``peer``."""
        pr = self.progress.get(peer)
        if pr is None or pr.state is not ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = 0
        pr.become_probe()
        pr.paused = ok  # on success wait for the follower's answer

    # --------------------------------------------------------- incarnations

    def peer_incarnation(self, peer: NodeId, incarnation: str) -> None:
        """The messages from ``peer`` that follow come from the data directory ``incarnation``.

        The transport learns it in the handshake; the runtime tells the core
        before stepping each peer's batch.  A leader that knew another
        incarnation of ``peer`` forgets what it had acknowledged (a new data
        directory holds none of it) and probes it from the start; a leader
        records the incarnation of a voter that has none yet.
        """
        old = self._peer_incarnations.get(peer)
        if old == incarnation:
            return
        self._peer_incarnations[peer] = incarnation
        self._refused = None
        pr = self.progress.get(peer)
        if old is not None and pr is not None:
            pr.become_probe()
            pr.match = 0
            pr.next = 1
        self._maybe_record_incarnations()

    def refused_peers(self) -> frozenset[NodeId]:
        """Members speaking from another data directory than the one recorded for them.

        The incarnation rule: their votes and acknowledgements are not
        counted, their appends and heartbeats are ignored, their terms never
        move ours; the leader still replicates to them.  A member without a
        record is not refused (the leader records it at first contact), nor
        one that has not presented an incarnation (a transport that does not
        report them; the runtime's transports report one with every batch).
        """
        m = self.membership
        cached = self._refused
        if cached is not None and cached[0] is m:
            return cached[1]
        out: frozenset[NodeId] = frozenset()
        if m.incarnations and "incarnation_unchecked" not in self._faults:
            seen = self._peer_incarnations
            out = frozenset(n for n, i in m.incarnations if n != self.id and seen.get(n, i) != i)
        self._refused = (m, out)
        return out

    def incarnation_conflict(self, node: NodeId) -> tuple[str, str] | None:
        """``(recorded, presented)`` if ``node`` (this node too) speaks from another directory."""
        recorded = self.membership.incarnation_of(node)
        got = self.incarnation if node == self.id else self._peer_incarnations.get(node)
        if recorded is None or not got or got == recorded:
            return None
        return recorded, got

    def _self_refused(self) -> bool:
        # The log says the cluster knows this node by another data directory:
        # ours was lost (or copied).  Never vote or campaign from it.
        return (
            "incarnation_unchecked" not in self._faults
            and self.incarnation_conflict(self.id) is not None
        )

    def _known_incarnations(self) -> dict[NodeId, str]:
        known = {n: i for n, i in self._peer_incarnations.items() if is_incarnation(i)}
        if is_incarnation(self.incarnation):
            known[self.id] = self.incarnation
        return known

    def _step_refused(self, m: Message) -> None:
        """A message from a refused peer: no vote, acknowledgements for its progress only."""
        if isinstance(m, RequestVote):
            self._msgs.append(
                RequestVoteResponse(self.term, self.id, m.src, False, pre_vote=m.pre_vote)
            )
        elif self.role is Role.LEADER and m.term == self.term:
            if isinstance(m, AppendEntriesResponse):
                self._handle_append_response(m)
            elif isinstance(m, HeartbeatResponse):
                self._handle_heartbeat_response(m)

    def _maybe_record_incarnations(self) -> None:
        """Leader: record the incarnation of voters that have none yet (first contact).

        One CONFIG entry, voters and learners unchanged, when no other
        change is pending.  Learners are recorded when added or promoted.
        """
        if (
            self.role is not Role.LEADER
            or self.commit < self._term_start
            or self.config_index > self.commit
            or self.membership.joint
            or self._transfer_to is not None
        ):
            return
        m = self.membership
        # Every commit on the leader comes here; once each voter has a record
        # (nearly always) there is nothing to look up.
        unrecorded = {n for n in m.voters if m.incarnation_of(n) is None}
        if not unrecorded:
            return
        new = {n: i for n, i in self._known_incarnations().items() if n in unrecorded}
        if new:
            self._append_config(m.recording(new))

    def report_unreachable(self, peer: NodeId) -> None:
        pr = self.progress.get(peer)
        if pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    @property
    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.commit)

    def lease_valid(self) -> bool:
        return self.role is Role.LEADER and self.now < self._lease_until
