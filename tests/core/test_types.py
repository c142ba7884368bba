"""Value types: membership quorum math and its canonical encoding."""

from __future__ import annotations

import pytest

from trioraft.core.types import Membership


def test_membership_round_trips_with_addresses() -> None:
    m = Membership.of([1, 2, 3], [4], addresses={1: "a:1", 4: "d:4", 9: "gone:9"})
    assert m.addresses == ((1, "a:1"), (4, "d:4"))  # 9 is not a member
    assert Membership.decode(m.encode()) == m
    assert m.address_of(4) == "d:4" and m.address_of(2) is None


def test_membership_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one voter"):
        Membership(frozenset())
    with pytest.raises(ValueError, match="both voter and learner"):
        Membership(frozenset({1}), learners=frozenset({1}))
    with pytest.raises(ValueError, match="positive"):
        Membership(frozenset({0}))
    with pytest.raises(ValueError, match="address"):
        Membership(frozenset({1}), addresses=((2, "x:1"),))
    for bad in (b"[1]", b"{", b'{"voters": [true]}', b'{"voters": [1], "addresses": [[1]]}'):
        with pytest.raises(ValueError):
            Membership.decode(bad)


def test_a_demoted_voter_may_be_outgoing_and_learner() -> None:
    m = Membership.of([1, 2], [3], outgoing=[1, 2, 3])
    assert m.is_voter(3) and not m.is_learner(3)
    assert not m.has_quorum({1, 3}) and m.has_quorum({1, 2})
