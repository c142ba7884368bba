"""The core's decisions a Ready carries: what may leave before the write, what counts as applied."""

from __future__ import annotations

import random

import pytest

from trioraft.core.errors import InvariantViolated
from trioraft.core.raft import RaftConfig, RaftCore
from trioraft.core.types import AppendEntries, Membership, RequestVote
from trioraft.testing.harness import Cluster


def test_a_leaders_appends_may_leave_before_its_write_when_no_hard_state_changes() -> None:
    c = Cluster(3, leader=1)
    core = c.core(1)
    core.propose(b"x")
    rd = core.ready()
    assert rd.entries and rd.hard_state is None
    appends = [m for m in rd.messages if isinstance(m, AppendEntries)]
    assert appends and list(rd.early_messages) == appends
    assert rd.messages_after_persist() == [m for m in rd.messages if m not in appends]
    core.advance(rd)


def test_nothing_leaves_early_from_a_ready_that_changes_the_term_or_vote() -> None:
    core = RaftCore(
        RaftConfig(1, pre_vote=False),
        random.Random(1),
        membership=Membership.of([1, 2, 3]),
        now=0.0,
    )
    core.election_timer_fired(core.election_deadline)
    rd = core.ready()
    assert rd.hard_state is not None and rd.hard_state.vote == 1
    assert any(isinstance(m, RequestVote) for m in rd.messages)
    assert rd.early_messages == ()
    assert rd.messages_after_persist() == list(rd.messages)


def test_advance_takes_what_was_applied_and_applied_to_the_rest() -> None:
    c = Cluster(1, leader=1)
    core = c.core(1)
    start = core.applied
    for k in range(3):
        core.propose(b"x%d" % k)
    rd = core.ready()  # appends, and a single voter commits after the write
    core.advance(rd, applied=start)
    rd = core.ready()
    assert [e.index for e in rd.committed] == [start + 1, start + 2, start + 3]
    core.advance(rd, applied=start + 1)  # the apply task has done one entry so far
    assert core.applied == start + 1
    core.applied_to(start + 3)
    assert core.applied == start + 3
    with pytest.raises(InvariantViolated):
        core.applied_to(start + 4)  # never handed over
