"""One scenario per Raft pitfall (shared/RAFT-PITFALLS.md), each named after it.

Where a guard can be switched off (``RaftConfig.faults``), the scenario runs
both ways: with the guard it holds, without it the bad outcome shows, so the
scenario is proven able to fail.
"""

from __future__ import annotations

import pytest

from trioraft.core.errors import NotLeader, ProposalRejected
from trioraft.core.raft import RaftConfig, RaftCore
from trioraft.core.types import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Membership,
    Message,
    RequestVote,
    RequestVoteResponse,
    Role,
    TimeoutNow,
)
from trioraft.testing.harness import Cluster, from_, is_type, to


def assert_state_machine_safety(c: Cluster) -> None:
    """No two nodes applied different entries at the same index."""
    seen: dict[int, tuple[int, bytes]] = {}
    for n, rec in c.records.items():
        for e in rec.applied:
            got = seen.setdefault(e.index, (e.term, e.data))
            assert got == (e.term, e.data), f"node {n} applied a different entry at {e.index}"


def leaders_by_term(c: Cluster) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for n, core in c.cores.items():
        if core.role is Role.LEADER:
            out.setdefault(core.term, set()).add(n)
    return out


# ------------------------------------------------------------------ pitfall 1


def _figure8(faults: frozenset[str]) -> Cluster:
    c = Cluster(3, max_entries_per_append=1, faults=faults)
    c.elect(1)  # term 1, NOOP at 1 committed everywhere
    c.isolate(1)
    c.propose(1, b"old")  # index 2, term 1: only on node 1
    c.crash(1)
    c.partition([1], [2, 3])
    c.fire_election(2)  # term 2: wins with 3's vote, but its NOOP reaches nobody
    c.deliver(is_type(RequestVote, RequestVoteResponse))
    assert c.core(2).role is Role.LEADER and c.core(2).term == 2
    c.take(from_(2))
    c.crash(2)
    c.heal()
    c.restart(1)
    c.fire_election(1)  # pre-vote in term 2: node 3 spent its vote there, rejects
    c.deliver(is_type(RequestVote, RequestVoteResponse))
    assert c.core(1).term == 2  # the rejection taught node 1 the term
    c.fire_election(1)  # term 3 with 3's vote; 3 gets (2, term 1) but not the NOOP at 3
    carried_noop: list[object] = []

    def noop_after_probe(m: Message) -> bool:
        # The first append carrying index 3 is the probe node 3 rejects;
        # lose the ones after it, so only index 2 reaches node 3.
        if m.dst == 3 and isinstance(m, AppendEntries) and any(e.index == 3 for e in m.entries):
            carried_noop.append(m)
            return len(carried_noop) > 1
        return False

    c.deliver(drop=noop_after_probe)
    assert c.core(1).role is Role.LEADER and c.core(1).term == 3
    assert c.core(3).term_at(2) == 1
    return c


def test_figure8_leader_only_commits_entries_of_its_own_term() -> None:
    c = _figure8(frozenset())
    # Entry 2 (term 1) sits on a majority, but counting replicas of an
    # old-term entry must not commit it.
    assert c.core(1).commit < 2
    # Node 2 comes back and, being more up to date than node 3, legally
    # overwrites index 2; nothing committed is lost.
    c.crash(1)
    c.restart(2)
    c.elect(2)
    assert c.core(3).term_at(2) == 2
    assert_state_machine_safety(c)


def test_figure8_without_the_guard_commits_an_entry_that_is_later_overwritten() -> None:
    c = _figure8(frozenset({"commit_old_term"}))
    assert c.core(1).commit == 2
    assert c.applied_data(1) == [b"old"]
    c.crash(1)
    c.restart(2)
    c.elect(2)
    with pytest.raises(AssertionError, match="applied a different entry at 2"):
        assert_state_machine_safety(c)


# ------------------------------------------------------------------ pitfall 2


def _vote_then_crash(faults: frozenset[str]) -> Cluster:
    c = Cluster(3, pre_vote=False, faults=faults)
    c.partition([1, 2], [3])
    c.block(2, 3)
    c.fire_election(1)
    c.deliver(is_type(RequestVote, RequestVoteResponse))
    assert c.core(1).role is Role.LEADER and c.core(1).term == 1
    c.take(from_(1))  # its appends are lost: node 2's log stays empty
    c.crash(2)
    c.restart(2)
    c.heal()
    c.fire_election(3)  # term 1 as well, asks node 2
    c.deliver(is_type(RequestVote, RequestVoteResponse))
    return c


def test_vote_granted_is_durable_before_the_response_leaves() -> None:
    c = Cluster(3, pre_vote=False)
    core2 = c.core(2)
    core2.step(RequestVote(1, 1, 2, 0, 0), now=5.0)
    rd = core2.ready()
    # The grant and the hard state recording it travel in the same Ready,
    # and the contract persists before it sends.
    assert rd.hard_state is not None and rd.hard_state.vote == 1 and rd.hard_state.term == 1
    assert any(isinstance(m, RequestVoteResponse) and m.granted for m in rd.messages)


def test_vote_granted_then_crash_does_not_vote_twice_in_a_term() -> None:
    c = _vote_then_crash(frozenset())
    assert c.core(2).vote == 1
    assert c.core(3).role is not Role.LEADER
    assert all(len(v) == 1 for v in leaders_by_term(c).values())


def test_vote_not_persisted_lets_a_restarted_node_elect_two_leaders() -> None:
    c = _vote_then_crash(frozenset({"vote_not_persisted"}))
    assert leaders_by_term(c)[1] == {1, 3}


# ------------------------------------------------------------------ pitfall 3


def test_single_voter_commits_only_what_is_persisted() -> None:
    core = RaftCore(RaftConfig(1), _Zero(), membership=Membership(frozenset({1})), now=0.0)
    core.election_timer_fired(core.election_deadline)
    assert core.role is Role.LEADER
    rd = core.ready()
    assert [e.kind for e in rd.entries] == [EntryKind.NOOP]
    assert rd.committed == ()  # not durable yet, so not committed
    core.advance(rd)
    idx = core.propose(b"x")
    rd = core.ready()
    assert [e.index for e in rd.committed] == [1]  # the NOOP, now durable
    assert [e.index for e in rd.entries] == [idx]
    core.advance(rd)
    rd = core.ready()
    assert [e.data for e in rd.committed] == [b"x"]


class _Zero:
    def random(self) -> float:
        return 0.0


# ------------------------------------------------------------------ pitfall 4


def _replicated_three(faults: frozenset[str] = frozenset()) -> tuple[Cluster, AppendEntries]:
    c = Cluster(3, faults=faults, leader=1)
    c.propose(1, b"a")
    stale = [m for m in c.take(to(2, AppendEntries)) if isinstance(m, AppendEntries)]
    c.deliver()
    c.propose(1, b"b")
    c.deliver()
    c.heartbeat(1)
    c.deliver()
    assert c.core(2).last_index() == 3
    return c, stale[0]


def test_stale_append_does_not_truncate_matching_entries() -> None:
    c, stale = _replicated_three()
    assert stale.entries[-1].index == 2
    c.inject([stale])  # arrives late, after the append that carried entry 3
    assert c.core(2).last_index() == 3
    assert c.core(2).term_at(3) == 1


def test_stale_append_below_commit_is_acknowledged_at_commit() -> None:
    c, stale = _replicated_three()
    c.core(2).step(stale, c.now)
    rd = c.core(2).ready()
    acks = [m for m in rd.messages if isinstance(m, AppendEntriesResponse)]
    assert acks and acks[0].success and acks[0].index == c.core(2).commit
    c.core(2).advance(rd)


@pytest.mark.parametrize("faults", [frozenset(), frozenset({"stale_append_truncates"})])
def test_reordered_append_above_commit(faults: frozenset[str]) -> None:
    """Appends [2,3] then a late [2], both above the follower's commit."""
    f = RaftCore(
        RaftConfig(2, faults=faults),
        _Zero(),
        membership=Membership(frozenset({1, 2, 3})),
        now=0.0,
        entries=[Entry(1, 1, EntryKind.NOOP)],
    )
    e2, e3 = Entry(2, 1, data=b"a"), Entry(3, 1, data=b"b")
    f.step(AppendEntries(1, 1, 2, 1, 1, (e2, e3), 1), 0.1)
    f.step(AppendEntries(1, 1, 2, 1, 1, (e2,), 1), 0.2)
    acks = [m for m in f.ready().messages if isinstance(m, AppendEntriesResponse)]
    assert [a.index for a in acks] == [3, 2]
    # Entry 3 was acknowledged (the leader may count it): only the buggy
    # follower drops it.
    assert f.last_index() == (2 if faults else 3)


# ------------------------------------------------------------------ pitfall 5


def test_truncation_while_a_write_is_in_flight_is_not_acknowledged() -> None:
    """The ABA race: entries written, replaced before advance; only the survivors are stable."""
    c = Cluster(3, leader=1)
    c.isolate(1)
    core1 = c.core(1)
    core1.propose(b"x")
    core1.propose(b"y")
    rd = core1.ready()  # the write of 3..4 (term 1) starts
    assert [e.index for e in rd.entries] == [2, 3]
    # Meanwhile node 2 leads term 2 and overwrites index 2 onwards on node 1.
    c.heal()
    newer = AppendEntries(2, 2, 1, 1, 1, (Entry(2, 2, EntryKind.NOOP),), 1)
    core1.step(newer, c.now + 10)
    assert core1.role is Role.FOLLOWER
    core1.advance(rd)  # the old write completes
    assert core1.stable == 1  # entries 2..3 of term 1 are gone: not stable
    rd2 = core1.ready()
    assert [(e.index, e.term) for e in rd2.entries] == [(2, 2)]
    core1.advance(rd2)
    assert core1.stable == 2


# ------------------------------------------------------------------ pitfall 6


def test_membership_change_needs_a_commit_in_the_new_leaders_term() -> None:
    c = Cluster(3)
    c.fire_election(1)
    c.deliver(is_type(RequestVote, RequestVoteResponse))
    assert c.core(1).role is Role.LEADER
    with pytest.raises(ProposalRejected, match="committed an entry of its term"):
        c.core(1).change_membership([1, 2])
    c.deliver()
    c.core(1).change_membership([1, 2, 3], learners=[4])
    with pytest.raises(ProposalRejected, match="in progress"):
        c.core(1).change_membership([1, 2, 3])


def test_truncated_config_entry_rolls_the_membership_back() -> None:
    c = Cluster(3, leader=1)
    c.isolate(1)
    c.core(1).change_membership([1, 2, 3], learners=[4])
    c.process(1)
    assert c.core(1).membership.learners == {4}
    c.partition([1], [2, 3])
    c.elect(2)
    c.propose(2, b"z")
    c.deliver()
    c.heal()
    c.heartbeat(2)
    c.deliver()
    assert c.core(1).role is Role.FOLLOWER
    assert c.core(1).membership.learners == frozenset()


# ------------------------------------------------------------------ pitfall 7


def test_learner_promoted_before_hearing_of_it_still_votes() -> None:
    c = Cluster([1, 2], learners=[3], leader=1)
    c.block(1, 3)
    c.core(1).change_membership([1, 2, 3])
    c.deliver()
    c.heartbeat(1)
    c.deliver()
    assert c.core(2).membership == Membership(frozenset({1, 2, 3}))
    assert c.core(3).membership.is_learner(3)  # it never heard
    c.crash(1)
    c.heal()
    c.fire_election(2)
    c.deliver()
    assert c.core(2).role is Role.LEADER  # 3's vote made the majority of {1,2,3}


# ------------------------------------------------------------------ pitfall 8


def test_removed_leader_steps_down_and_never_campaigns() -> None:
    c = Cluster(3, leader=1)
    c.core(1).change_membership([2, 3])
    c.deliver()
    assert c.core(1).role is Role.FOLLOWER
    assert not c.core(1).membership.is_voter(1)
    c.fire_election(1)
    assert not c.take(from_(1, RequestVote))
    c.fire_election(2)
    c.deliver()
    assert c.core(2).role is Role.LEADER


def test_removed_server_cannot_disrupt_the_cluster() -> None:
    c = Cluster(3, leader=1)
    c.isolate(3)
    c.core(1).change_membership([1, 2])
    c.deliver()
    c.heartbeat(1)
    c.deliver()
    assert c.core(1).membership.voters == {1, 2} and not c.core(1).membership.joint
    c.heal()
    term = c.core(1).term
    for _ in range(5):  # node 3 never learned: it keeps timing out
        c.fire_election(3)
        c.deliver()
        c.heartbeat(1)
        c.deliver()
    assert c.core(1).role is Role.LEADER and c.core(1).term == term
    assert c.core(2).term == term


# ------------------------------------------------------------------ pitfall 9


def test_joint_quorum_needs_both_majorities() -> None:
    old, new = frozenset({1, 2, 3}), frozenset({1, 4, 5})
    joint = Membership(new, old)
    assert not joint.has_quorum({1, 4, 5})
    assert not joint.has_quorum({1, 2, 3})
    assert joint.has_quorum({1, 2, 4})
    assert joint.committed_index({1: 9, 2: 9, 3: 9, 4: 9, 5: 9}) == 9
    assert joint.committed_index({1: 9, 4: 9, 5: 9, 2: 3, 3: 3}) == 3

    c = Cluster(3, leader=1)
    for n in (4, 5):
        c.add_node(n)
    c.core(1).change_membership([1, 2, 3], learners=[4, 5])
    c.deliver()
    c.heartbeat(1)
    c.deliver()
    c.core(1).change_membership([1, 4, 5])
    joint_index = c.core(1).last_index()
    c.block(1, 2)
    c.block(1, 3)
    c.deliver()
    assert c.core(1).membership.joint
    assert c.core(1).commit < joint_index  # {1,4,5} alone is not enough
    c.heal()
    c.heartbeat(1)
    c.deliver()
    c.heartbeat(1)
    c.deliver()
    assert c.core(1).membership == Membership(new, frozenset(), frozenset())
    assert c.core(1).commit == c.core(1).last_index()


def _learners_ack_only(faults: frozenset[str]) -> Cluster:
    c = Cluster([1, 2, 3], learners=[4, 5], faults=faults, leader=1)
    c.block(1, 2)
    c.block(1, 3)
    c.propose(1, b"x")
    c.deliver()
    return c


def test_learners_never_count_in_a_quorum() -> None:
    c = _learners_ack_only(frozenset())
    assert c.core(4).last_index() == 2 and c.core(5).last_index() == 2
    assert c.core(1).commit == 1


def test_learners_counted_in_a_quorum_commit_without_a_voter_majority() -> None:
    c = _learners_ack_only(frozenset({"learner_in_quorum"}))
    assert c.core(1).commit == 2


def test_learners_never_campaign() -> None:
    c = Cluster([1, 2, 3], learners=[4])
    c.fire_election(4)
    assert not c.take(from_(4, RequestVote))
    assert c.core(4).role is Role.FOLLOWER


# ----------------------------------------------------------- pitfalls 10, 11


def test_read_index_before_first_commit_of_term_waits() -> None:
    c = Cluster(3, leader=1)
    c.propose(1, b"x")
    c.deliver(drop=lambda m: m.src == 1 and getattr(m, "commit", 0) >= 2)
    assert c.core(1).commit == 2 and c.applied_data(1) == [b"x"]
    c.partition([1], [2, 3])
    c.fire_election(2)
    c.deliver(is_type(RequestVote, RequestVoteResponse))
    assert c.core(2).role is Role.LEADER
    assert c.core(2).commit < 2  # it has x but does not know it is committed
    held = c.take(from_(2, AppendEntries))
    c.core(2).read(7, c.now)
    c.process(2)
    c.deliver(is_type(Heartbeat, HeartbeatResponse))
    assert c.records[2].reads == []  # no answer before the NOOP commits
    c.inject(held)
    c.deliver()
    (rs,) = c.records[2].reads
    assert rs.request_id == 7 and rs.index >= 2


def test_read_index_before_first_commit_without_the_guard_is_stale() -> None:
    c = Cluster(3, faults=frozenset({"read_before_commit_in_term"}), leader=1)
    c.propose(1, b"x")
    c.deliver(drop=lambda m: m.src == 1 and getattr(m, "commit", 0) >= 2)
    c.partition([1], [2, 3])
    c.fire_election(2)
    c.deliver(is_type(RequestVote, RequestVoteResponse))
    c.take(from_(2, AppendEntries))
    c.core(2).read(7, c.now)
    c.process(2)
    c.deliver(is_type(Heartbeat, HeartbeatResponse))
    (rs,) = c.records[2].reads
    assert rs.index < 2  # x was committed (and acknowledged) before the read


def test_duplicate_read_index_and_delayed_heartbeat_responses() -> None:
    c = Cluster(3, leader=1)
    c.core(1).read(1, c.now)
    c.core(1).read(1, c.now)  # a duplicate of a pending request registers once
    c.process(1)
    c.deliver(is_type(Heartbeat))
    round1 = c.take(is_type(HeartbeatResponse))
    assert {m.ctx for m in round1 if isinstance(m, HeartbeatResponse)} == {1}
    c.propose(1, b"w")
    c.deliver(is_type(AppendEntries, AppendEntriesResponse))
    c.core(1).read(2, c.now)
    c.process(1)
    c.deliver(is_type(Heartbeat))
    round2 = c.take(is_type(HeartbeatResponse))
    c.inject(round1)  # late responses of round 1 confirm read 1 only
    assert [r.request_id for r in c.records[1].reads] == [1]
    c.inject(round2)
    assert [r.request_id for r in c.records[1].reads] == [1, 2]
    assert c.records[1].reads[1].index == 2  # it sees w


# ----------------------------------------------------------------- pitfall 12


def test_lease_read_under_a_paused_leader_is_refused() -> None:
    c = Cluster(3, leader=1)
    c.heartbeat(1)
    c.deliver()
    c.core(1).read(1, c.now, lease=True)
    c.process(1)
    assert [r.request_id for r in c.records[1].reads] == [1]  # served from the lease
    c.pause(1)
    for _ in range(40):  # the others wait out the lease, then elect node 2 or 3
        c.advance(0.1)
        c.deliver()
    new = c.leader()
    assert new in (2, 3)
    c.propose(new, b"after")
    c.deliver()
    c.resume(1)
    c.now += 0.01
    # The first thing the resumed leader sees is a lease read: the time it
    # is given, not the time it last saw, decides.
    c.core(1).read(2, c.now, lease=True)  # falls back to ReadIndex, which cannot succeed
    assert not c.core(1).lease_valid()
    c.process(1)
    c.deliver()
    assert [r.request_id for r in c.records[1].reads] == [1]
    assert [f.request_id for f in c.records[1].failed_reads] == [2]


def test_lease_is_shorter_than_the_minimum_election_timeout() -> None:
    c = Cluster(3, leader=1)
    sent = c.now
    c.heartbeat(1)
    c.deliver()
    lease_end = c.core(1)._lease_until
    assert sent < lease_end < sent + c.core(1).cfg.election_timeout_min


# The lease argument (dissertation 6.4.1): every voter that acked the round
# refuses to help elect anyone else for one minimum election timeout.  Two
# ways around it, each with its guard.


def _voter_restarts_inside_the_lease(faults: frozenset[str]) -> Cluster:
    c = Cluster(3, faults=faults, leader=1)
    c.block(1, 3)  # node 3 cannot reach leader 1 (nor 1 it); 2 hears both
    c.block(3, 1)
    while c.core(3).election_deadline - c.now > 0.1:
        c.advance(0.1)  # node 1's heartbeat rounds: node 2 acks each
        c.deliver()
    assert c.core(3).role is Role.FOLLOWER  # its timer has not fired yet
    c.core(1).read(1, c.now, lease=True)
    c.process(1)
    assert [r.request_id for r in c.records[1].reads] == [1]  # node 1 holds a lease
    c.isolate(1)  # node 1 is cut off
    c.crash(2)
    c.restart(2)  # inside the lease: its memory of leader 1 is gone
    c.fire_election(3)  # node 3 times out and asks node 2
    c.deliver()
    return c


def test_lease_after_a_voter_restarts() -> None:
    c = _voter_restarts_inside_the_lease(frozenset())
    # Node 2 acked node 1's round before it restarted: it refuses the
    # pre-vote for one minimum election timeout after its start.
    assert c.core(3).role is not Role.LEADER and c.core(3).term == 1
    c.core(1).read(2, c.now, lease=True)
    c.process(1)
    assert [r.index for r in c.records[1].reads] == [1, 1]  # nothing newer exists
    # Once node 1's lease has run out, node 3 wins.
    while c.core(1).lease_valid():
        c.advance(0.1)
        c.deliver()
    c.elect(3)
    assert c.core(3).term == 2


def test_lease_after_a_voter_restarts_without_the_guard_serves_a_stale_read() -> None:
    c = _voter_restarts_inside_the_lease(frozenset({"restart_votes_at_once"}))
    assert c.core(3).role is Role.LEADER and c.core(3).term == 2
    w = c.propose(3, b"W")
    c.deliver()
    assert b"W" in c.applied_data(3)  # committed by 3 and 2
    c.core(1).read(2, c.now, lease=True)
    c.process(1)
    assert c.core(1).lease_valid()
    assert c.records[1].reads[-1].index < w  # served from the lease: stale


def test_a_restarted_voter_still_lets_an_ordered_transfer_through() -> None:
    """The one exception to the refusal: safe, as the leader then holds no lease."""
    c = Cluster(3, leader=1)
    c.crash(3)
    c.restart(3)  # refuses ordinary (pre-)votes for a minimum election timeout
    c.core(1).transfer_leadership(2)
    c.deliver(drop=lambda m: m.src == 2 and m.dst == 1)  # 2 must win with 3's vote
    assert c.core(2).role is Role.LEADER and c.core(2).term == 2
    assert c.core(3).vote == 2


def _stale_timeout_now(faults: frozenset[str]) -> tuple[Cluster, int]:
    c = Cluster(3, faults=faults, leader=1)
    c.core(1).transfer_leadership(2)  # node 2 is caught up: TimeoutNow leaves at once
    c.process(1)
    stale = c.take(to(2, TimeoutNow))  # ... and is held up (node 2 paused, a slow link)
    assert stale
    while c.core(1).transferring_to is not None:
        c.advance(0.1)  # the transfer times out; rounds go on, 2 and 3 ack
        c.deliver()
    c.heartbeat(1)
    c.deliver()  # a fresh round, acked by node 3 (and 2)
    c.core(1).read(1, c.now, lease=True)
    c.process(1)
    c.isolate(1)  # node 1 is cut off
    c.inject(stale)  # node 2 acts on the old TimeoutNow: a transfer campaign
    c.deliver()
    assert c.core(2).role is Role.LEADER and c.core(2).term == 2
    w = c.propose(2, b"W")
    c.deliver()
    assert b"W" in c.applied_data(2)
    c.core(1).read(2, c.now, lease=True)
    c.process(1)
    return c, w


def test_lease_after_a_stale_timeout_now() -> None:
    c, _ = _stale_timeout_now(frozenset())
    # Node 1 sent a TimeoutNow in this term: no lease for the rest of it,
    # so both reads wait for a ReadIndex round a quorum never confirms.
    assert not c.core(1).lease_valid()
    assert c.records[1].reads == []


def test_lease_after_a_stale_timeout_now_without_the_guard_serves_a_stale_read() -> None:
    c, w = _stale_timeout_now(frozenset({"lease_after_timeout_now"}))
    assert c.core(1).lease_valid()
    assert [r.request_id for r in c.records[1].reads] == [1, 2]
    assert c.records[1].reads[-1].index < w  # served from the lease: stale


@pytest.mark.parametrize("faults", [frozenset(), frozenset({"lease_after_timeout_now"})])
def test_lease_after_a_stale_timeout_now_from_a_round_sent_during_the_transfer(
    faults: frozenset[str],
) -> None:
    c = Cluster(3, faults=faults, leader=1)
    t_end = c.now + c.core(1).cfg.election_timeout_max  # when the transfer times out
    c.core(1).transfer_leadership(2)
    c.process(1)
    stale = c.take(to(2, TimeoutNow))
    while c.now + 0.1 < t_end - 0.3:
        c.advance(0.1)  # rounds during the transfer: confirmed, but no lease
        c.deliver()
    c.advance(0.1)  # the last round of the transfer: its acks are held up
    c.deliver(is_type(Heartbeat))
    late = c.take(is_type(HeartbeatResponse))
    while c.core(1).transferring_to is not None:
        c.advance(0.1)  # the transfer times out; these rounds are lost
        c.deliver(drop=is_type(Heartbeat))
    c.inject(late)  # confirms the round sent during the transfer
    assert c.core(1).lease_valid() == bool(faults)
    c.isolate(1)
    c.inject(stale)
    c.deliver()
    assert c.core(2).role is Role.LEADER  # while node 1 held that lease, if it had one


# ----------------------------------------------------------------- pitfall 13


def test_prevote_response_carries_the_request_term() -> None:
    c = Cluster(3)
    core = c.core(2)
    core.step(RequestVote(5, 3, 2, 0, 0, pre_vote=True), now=3.0)
    rd = core.ready()
    (resp,) = [m for m in rd.messages if isinstance(m, RequestVoteResponse)]
    assert resp.granted and resp.pre_vote and resp.term == 5
    assert core.term == 0 and rd.hard_state is None  # a pre-vote changes nothing
    core.advance(rd)


# ----------------------------------------------------------------- pitfall 14


def test_prevote_and_check_quorum_replace_a_leader_that_cannot_hear() -> None:
    c = Cluster(3, leader=1)
    c.block(2, 1)  # node 1 still sends, but hears nothing back
    c.block(3, 1)
    for _ in range(60):
        c.advance(0.1)
        c.deliver()
    assert c.core(1).role is not Role.LEADER  # check-quorum deposed it
    new = c.leader()
    assert new in (2, 3)
    c.propose(new, b"alive")
    c.deliver()
    assert b"alive" in c.applied_data(new)


def test_a_node_that_cannot_hear_the_leader_does_not_disrupt() -> None:
    c = Cluster(3, leader=1)
    c.block(1, 2)  # node 2 hears nothing from the leader
    term = c.core(1).term
    for _ in range(60):
        c.advance(0.1)
        c.deliver()
    assert c.core(1).role is Role.LEADER and c.core(1).term == term
    assert c.core(3).term == term
    c.propose(1, b"still")
    c.deliver()
    c.heartbeat(1)  # the commit index rides on the next heartbeat
    c.deliver()
    assert b"still" in c.applied_data(3)


# ----------------------------------------------------------------- pitfall 15


def test_snapshot_install_racing_replication_and_compaction() -> None:
    c = Cluster(3, leader=1)
    c.isolate(3)
    c.core(1).change_membership([1, 2, 3], learners=[4])
    c.add_node(4)
    for i in range(10):
        c.propose(1, b"e%d" % i)
    c.deliver()
    first = c.core(1).compact(c.core(1).applied)
    c.heal()
    c.heartbeat(1)
    c.deliver(lambda m: not isinstance(m, InstallSnapshot))  # node 3 is found behind
    old_snaps = c.take(to(3, InstallSnapshot))
    assert old_snaps
    for i in range(5):
        c.propose(1, b"f%d" % i)
    c.deliver(lambda m: m.dst != 3)
    second = c.core(1).compact(c.core(1).applied)
    assert second.index > first.index
    c.inject(old_snaps)  # the older snapshot arrives while newer entries flow
    c.heartbeat(1)
    c.deliver()
    c.heartbeat(1)
    c.deliver()
    core3 = c.core(3)
    assert core3.commit == c.core(1).commit
    assert core3.membership.learners == {4}  # membership came inside the snapshot
    installed = [m.index for m in c.records[3].snapshots_installed]
    assert installed == [first.index, second.index]  # the stale one, then the newer
    for i in range(3):
        c.propose(1, b"g%d" % i)
    c.deliver()
    c.heartbeat(1)
    c.deliver()
    assert c.applied_data(3) == [b"g0", b"g1", b"g2"]
    assert_state_machine_safety(c)
    with pytest.raises(ValueError, match="only"):
        c.core(3).compact(core3.applied + 1)


# ----------------------------------------------------------------- pitfall 16


def test_follower_stuck_in_probe_recovers_on_heartbeat() -> None:
    c = Cluster(3, leader=1)
    c.propose(1, b"x")
    c.deliver(drop=lambda m: m.dst == 2 and isinstance(m, AppendEntries))
    assert c.core(2).last_index() < 2
    for _ in range(3):
        c.heartbeat(1)
        c.deliver()
    assert c.core(2).last_index() == 2 and c.core(2).commit == 2


def test_full_inflight_window_of_lost_appends_does_not_wedge() -> None:
    c = Cluster(3, max_inflight=2, max_entries_per_append=1, leader=1)
    for i in range(6):
        c.propose(1, b"%d" % i)
    c.deliver(drop=lambda m: m.dst == 2 and isinstance(m, AppendEntries))
    for _ in range(10):
        c.heartbeat(1)
        c.deliver()
    assert c.core(2).last_index() == c.core(1).last_index() == 7


def test_long_divergent_log_converges_in_few_round_trips() -> None:
    c = Cluster(3, leader=1)
    c.isolate(1)
    for i in range(200):
        c.core(1).propose(b"stale%d" % i)
    c.process(1)
    c.partition([1], [2, 3])
    c.elect(2)
    for i in range(100):
        c.core(2).propose(b"good%d" % i)
    c.deliver()
    c.heal()
    c.heartbeat(2)
    delivered = c.deliver()
    rejects = [
        m
        for m in delivered
        if isinstance(m, AppendEntriesResponse) and m.src == 1 and not m.success
    ]
    assert len(rejects) <= 3
    assert c.core(1).last_index() == c.core(2).last_index()
    assert c.core(1).term_at(c.core(1).last_index()) == 2


# ----------------------------------------------------------------- pitfall 17


def test_leadership_transfer_under_concurrent_proposals() -> None:
    c = Cluster(3, leader=1)
    c.block(1, 2)
    accepted = [c.propose(1, b"p%d" % i) for i in range(3)]
    c.deliver()
    c.core(1).transfer_leadership(2)
    with pytest.raises(ProposalRejected, match="transfer"):
        c.core(1).propose(b"during")
    c.heal()
    c.heartbeat(1)
    delivered = c.deliver()
    assert any(isinstance(m, TimeoutNow) for m in delivered)
    assert c.core(2).role is Role.LEADER and c.core(2).term == 2
    with pytest.raises(NotLeader) as err:
        c.core(1).propose(b"late")
    assert err.value.leader == 2
    accepted.append(c.propose(2, b"after"))
    c.deliver()
    c.heartbeat(2)
    c.deliver()
    for n in (1, 2, 3):
        data = c.applied_data(n)
        assert data == [b"p0", b"p1", b"p2", b"after"]  # each once, none lost
    assert len(accepted) == 4


def test_transfer_times_out_and_proposals_resume() -> None:
    c = Cluster(3, leader=1)
    c.isolate(2)
    c.core(1).transfer_leadership(2)
    with pytest.raises(ProposalRejected):
        c.core(1).propose(b"x")
    for _ in range(25):
        c.advance(0.1)
        c.deliver(lambda m: m.dst != 2)
    assert c.core(1).transferring_to is None
    assert c.core(1).propose(b"x") > 0


# ----------------------------------------------------------------- pitfall 18


def test_entries_carry_client_session_and_leader_time() -> None:
    c = Cluster(3, leader=1)
    c.propose(1, b"w", client_id="c-1", sequence=7, timestamp_ms=1234)
    c.deliver()
    c.heartbeat(1)
    c.deliver()
    (e,) = [e for e in c.records[3].applied if e.data == b"w"]
    assert (e.client_id, e.sequence, e.timestamp_ms) == ("c-1", 7, 1234)


# --------------------------------------------------------------- restarts


def test_restart_recovers_term_vote_log_and_replays_committed() -> None:
    c = Cluster(3, leader=1)
    for i in range(3):
        c.propose(1, b"r%d" % i)
    c.deliver()
    c.heartbeat(1)
    c.deliver()
    term = c.core(2).term
    c.crash(2)
    c.restart(2)
    core2 = c.core(2)
    assert core2.term == term and core2.last_index() == 4
    c.process(2)
    # The persisted commit is a hint that may lag; the leader's next
    # heartbeat tells the rest, and the log replays into the state machine.
    assert c.applied_data(2) == [b"r0", b"r1", b"r2"][: len(c.applied_data(2))]
    c.heartbeat(1)
    c.deliver()
    assert c.applied_data(2) == [b"r0", b"r1", b"r2"]


def test_entry_timestamps_never_decrease_across_leaders() -> None:
    # Time rule: node 1's clock runs ahead; after it fails, node 2 (whose clock
    # is behind) leads.  State machines judge TTL and session expiry by these
    # stamps, so the new leader's entries must not go back in time.
    c = Cluster(3, leader=1)
    c.propose(1, b"early", timestamp_ms=5_000)
    c.heartbeat(1)
    c.process()
    c.crash(1)
    c.elect(2)
    index = c.propose(2, b"late", timestamp_ms=1_000)
    stamps = [e.timestamp_ms for e in c.core(2).log if e.data in (b"early", b"late")]
    assert stamps == [5_000, 5_000], stamps
    assert c.core(2).entries_between(index, index + 1)[0].timestamp_ms == 5_000


# ------------------------------------------------------- lost data directories


def test_leader_resets_match_when_a_follower_lost_its_log() -> None:
    c = Cluster(3)
    c.elect(1)  # term 1, NOOP at 1
    c.propose(1, b"a")
    c.propose(1, b"b")
    c.deliver()
    assert c.core(1).progress[3].match == 3 == c.core(1).last_index()
    c.wipe(3)  # node 3 lost its data directory and restarts, same id, empty log
    c.heartbeat(1)
    c.deliver()
    c.propose(1, b"c")  # append at prev 3: node 3 rejects with hint (0, 0)
    c.deliver()
    # The hint is below what the leader recorded as matching: the follower
    # lost entries it had acknowledged.  The leader forgets that match and
    # probes from the hint instead of taking the rejection for a stale one.
    assert c.core(3).last_index() == c.core(1).last_index() == 4
    assert c.core(1).progress[3].match == 4
    c.heartbeat(1)
    c.deliver()
    assert c.applied_data(3) == [b"a", b"b", b"c"]


def _wiped_voter_campaign(faults: frozenset[str]) -> tuple[Cluster, int]:
    c = Cluster(3, incarnations=True, faults=faults)
    c.elect(1)  # term 1; once its NOOP commits node 1 records the three incarnations
    c.deliver()
    c.isolate(2)
    x = c.propose(1, b"x")  # committed by nodes 1 and 3; node 2 never sees it
    c.deliver()
    assert c.core(1).commit == x
    c.crash(1)
    c.wipe(3)  # node 3 loses its data directory and comes back with the same id
    c.heal()
    c.now += 2.0  # past node 3's start-up refusal and node 2's last leader contact
    c.fire_election(2)  # node 2, missing x, campaigns; node 3 answers from an empty log
    c.deliver()
    return c, x


def test_wiped_voter_cannot_elect_a_leader_missing_committed_entries() -> None:
    c, x = _wiped_voter_campaign(frozenset())
    # Node 3's vote comes from a data directory the cluster does not know
    # it by: node 2 does not count it, so no leader without x is elected.
    assert c.core(2).role is not Role.LEADER
    old = c.core(2).membership.incarnation_of(3)
    assert old is not None and old != c.records[3].disk.incarnation
    assert c.core(2).refused_peers() == {3}
    # Node 1 comes back and leads with x; node 3 gets the log, learns that
    # the cluster knows another node 3, and refuses to vote or campaign.
    c.restart(1)
    c.elect(1)
    c.deliver()
    assert c.core(3).term_at(x) == 1
    assert c.core(1).refused_peers() == {3}
    assert c.core(3).incarnation_conflict(3) == (old, c.records[3].disk.incarnation)
    c.crash(1)
    c.now += 5.0
    c.fire_election(3)
    c.deliver()
    assert c.core(3).role is Role.FOLLOWER and c.core(3).term == c.core(1).term


def test_wiped_voter_without_the_guard_elects_a_leader_missing_committed_entries() -> None:
    c, x = _wiped_voter_campaign(frozenset({"incarnation_unchecked"}))
    assert c.core(2).role is Role.LEADER
    assert c.core(2).term_at(x) != 1  # the committed x is gone from the new leader's log


def test_a_new_commit_index_rides_on_the_next_append_or_heartbeat() -> None:
    """No empty appends just to announce a commit (they delayed the leader's answer)."""
    c = Cluster(3, leader=1)
    c.propose(1, b"a")
    delivered = c.deliver()
    assert not [m for m in delivered if isinstance(m, AppendEntries) and not m.entries]
    assert c.applied_data(1) == [b"a"] and c.applied_data(2) == []
    c.propose(1, b"b")
    c.deliver()
    assert c.applied_data(2) == [b"a"]  # the next append carried the commit
    c.heartbeat(1)
    c.deliver()
    assert c.applied_data(2) == [b"a", b"b"]
