"""The incarnation rule in a running cluster (memory transport, mock clock)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio.testing

from .conftest import virtual_time
from .helpers import open_cluster, put


@virtual_time(300)
async def test_wiped_follower_is_not_a_voter_until_readded(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trioraft")
    async with open_cluster(tmp_path, 3) as (c, leader):
        for i in range(10):
            await leader.propose(put(f"k{i}", b"%d" % i))
        first = leader.id
        wiped, other = (n for n in c.ids if n != first)
        for n in c.nodes.values():
            await n.wait_applied(leader.status().commit_index)
        await c.wipe(wiped)  # its data directory is lost
        node = await c.start(wiped)  # and it comes back with the same id
        # The leader replicates to it (a lost log no longer wedges it) ...
        await leader.propose(put("during", b"1"))
        await node.wait_applied(leader.status().commit_index)
        # ... but it is no voter: without the leader, its vote elects nobody.
        await c.stop(first)
        with trio.move_on_after(10):
            await c.wait_for_leader()
            pytest.fail("the wiped node's vote elected a leader")

        old = c.nodes[other].membership.incarnation_of(wiped)
        new = node.incarnation
        assert old is not None and new != old
        told = [r.getMessage() for r in caplog.records if "incarnation" in r.getMessage()]
        about = [t for t in told if f"node {wiped}" in t and old in t and new in t]
        assert any(t.startswith(f"node {other}:") and "remove-node" in t for t in about), told
        assert any(t.startswith(f"node {wiped}:") and "will not vote" in t for t in about), told

        # The operator step: remove it, add it back as a learner, promote it.
        await c.start(first)
        leader = await c.wait_for_leader()
        await leader.propose(put("back", b"1"))  # it has committed in its term
        await leader.remove_node(wiped)
        await leader.add_learner(wiped, f"mem:{wiped}")
        await node.wait_applied(leader.status().commit_index)
        await leader.promote(wiped)
        assert wiped in leader.status().voters
        assert leader.membership.incarnation_of(wiped) == new
        await leader.propose(put("after", b"2"))
        index = leader.status().commit_index
        digests = set()
        for n in c.nodes.values():
            await n.wait_applied(index)
            got = await n.read({"op": "digest"}, consistency="local")
            assert isinstance(got, dict)
            digests.add(got["sha256"])
        assert len(digests) == 1
        assert await node.read({"op": "get", "key": "k9"}, consistency="local") == b"9"
        # A voter again: of the two nodes left, neither is elected without its vote.
        await c.stop(leader.id)
        survivor = await c.wait_for_leader()
        assert survivor.id != leader.id
