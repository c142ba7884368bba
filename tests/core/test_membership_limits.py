"""Membership validation: what a new configuration may hold, what an old log may.

A configuration the core *builds* (``Membership.of``, ``change_membership``)
holds only node ids the wire can carry (1..2**63-1) and ``host:port``
addresses.  A configuration it *reads* (a CONFIG entry, a snapshot) may come
from earlier code that checked less: it still loads, and its bad addresses
are not carried into the next configuration.
"""

from __future__ import annotations

import pytest

from trioraft.core.types import MAX_NODE_ID, Membership, check_node_id, parse_address
from trioraft.testing.harness import Cluster


@pytest.mark.parametrize("bad", [2**63, 0, -1, True, 1.0, "1", None])
def test_membership_of_refuses_node_ids_the_wire_cannot_carry(bad: object) -> None:
    with pytest.raises(ValueError, match="node id"):
        Membership.of([2, bad])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="node id"):
        Membership.of([2], [bad])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="node id"):
        check_node_id(bad)
    assert check_node_id(MAX_NODE_ID) == MAX_NODE_ID


@pytest.mark.parametrize("bad", ["None", "", "host", "h:port", "h:70000", "h" * 300 + ":1", None])
def test_membership_of_refuses_addresses_that_are_not_host_port(bad: object) -> None:
    with pytest.raises(ValueError, match="address"):
        Membership.of([1], [4], addresses={4: bad})  # type: ignore[dict-item]
    # An address of a node that is not a member is dropped, as before.
    assert Membership.of([1], addresses={9: "gone:9"}).addresses == ()


def test_change_membership_refuses_bad_ids_and_addresses() -> None:
    c = Cluster(3, leader=1)
    last = c.core(1).last_index()
    with pytest.raises(ValueError, match="node id"):
        c.core(1).change_membership([1, 2, 3], [2**63], {2**63: "a:1"})
    with pytest.raises(ValueError, match="address"):
        c.core(1).change_membership([1, 2, 3], [4], {4: "None"})
    assert c.core(1).last_index() == last  # nothing appended


def test_config_with_bad_address_from_an_earlier_log_loads_and_is_not_carried_on() -> None:
    old = Membership(
        frozenset({1, 2, 3}),
        learners=frozenset({4}),
        addresses=((1, "a:1"), (2, "b:2"), (4, "None")),
    )
    assert Membership.decode(old.encode()) == old  # reading stays lenient
    c = Cluster(3)
    c.membership = old
    for n in (1, 2, 3):
        c.add_node(n)  # boot from the old configuration
    c.elect(1)
    assert c.core(1).membership.address_of(4) == "None"
    # A voter change goes through the joint configuration and out of it.
    c.core(1).change_membership([1, 2], [4], {3: "c:3"})
    for _ in range(3):
        c.deliver()
        c.heartbeat(1)
        c.deliver()
    m = c.core(1).membership
    assert m.voters == {1, 2} and m.learners == {4} and not m.joint
    assert m.address_map == {1: "a:1", 2: "b:2"}


def test_address_rule() -> None:
    assert parse_address("[::1]:7000") == ("::1", 7000)
    assert parse_address("mem:3") == ("mem", 3)
    for bad in ("None", "h:", ":1", "h:+1", "h:\u0661", "a b:1", "[::1:7000", "h" * 300 + ":1"):
        with pytest.raises(ValueError, match="address"):
            parse_address(bad)
