"""Clusters of real nodes over the memory transport, under a mock clock."""

from __future__ import annotations

from pathlib import Path

import cbor2
import pytest
import trio
import trio.testing

from trioraft.core.types import EntryKind
from trioraft.kv import encode_command
from trioraft.runtime import NotLeaderError, ProposalDroppedError, ProposalRejectedError
from trioraft.testing.cluster import MemoryCluster

from .conftest import virtual_time
from .helpers import CHUNKED_SNAPSHOTS, get, open_cluster, outcome, put, wipe_a_follower


@virtual_time(120)
async def test_three_nodes_elect_replicate_and_followers_refuse_proposals(tmp_path: Path) -> None:
    async with open_cluster(tmp_path, 3) as (c, leader):
        res = await leader.propose(put("a", b"1"))
        assert isinstance(res, dict) and res["ok"]
        assert await get(leader, "a") == b"1"
        for n in c.nodes.values():
            await n.wait_applied(leader.status().commit_index)
            assert await get(n, "a", "local") == b"1"
        follower = next(n for n in c.nodes.values() if n is not leader)
        with pytest.raises(NotLeaderError) as err:
            await follower.propose(put("b", b"2"))
        assert err.value.leader_id == leader.id
        assert err.value.leader_address == f"mem:{leader.id}"


@virtual_time(120)
async def test_failover_elects_a_new_leader_and_keeps_data(tmp_path: Path) -> None:
    async with open_cluster(tmp_path, 3) as (c, leader):
        for i in range(20):
            await leader.propose(put(f"k{i}", b"%d" % i))
        old = leader.id
        await c.stop(old)
        t0 = trio.current_time()
        new = await c.wait_for_leader()
        assert new.id != old
        assert trio.current_time() - t0 < 3.0  # a few election timeouts at most
        assert await get(new, "k19") == b"19"
        await new.propose(put("after", b"x"))
        restarted = await c.start(old)
        await restarted.wait_applied(new.status().commit_index)
        assert await get(restarted, "after", "local") == b"x"


@virtual_time(120)
async def test_partition_heals_and_minority_leader_steps_down(tmp_path: Path) -> None:
    async with open_cluster(tmp_path, 5) as (c, leader):
        others = [n for n in c.ids if n != leader.id]
        minority, majority = {leader.id, others[0]}, set(others[1:])
        c.network.partition(minority, majority)
        with trio.move_on_after(5):
            while leader.is_leader:
                await leader.wait_changed()
        assert not leader.is_leader  # check-quorum deposed it
        new = await c.wait_for_leader(exclude=frozenset(minority))
        await new.propose(put("maj", b"1"))
        c.network.heal()
        await leader.wait_applied(new.status().commit_index)
        assert await get(leader, "maj", "local") == b"1"


@virtual_time(120)
async def test_wiped_follower_catches_up_by_snapshot(tmp_path: Path) -> None:
    async with MemoryCluster(tmp_path, 3, **CHUNKED_SNAPSHOTS) as c:
        leader, victim = await wipe_a_follower(c)
        assert leader.statistics().snapshots_taken >= 1
        node = await c.start(victim)
        await node.wait_applied(leader.status().commit_index)
        assert node.statistics().snapshots_installed >= 1
        assert await get(node, "k0", "local") == b"v" * 20
        assert await get(node, "k199", "local") == b"v" * 20
        assert leader.statistics().snapshots_sent >= 1


@virtual_time(120)
async def test_every_node_restarted_from_disk_elects_again_and_keeps_the_data(
    tmp_path: Path,
) -> None:
    async with open_cluster(tmp_path, 3, snapshot_entries=30) as (c, leader):
        for i in range(100):
            await leader.propose(put(f"k{i}", b"%d" % i))
        term = leader.status().term
        for n in list(c.ids):
            await c.stop(n)
        for n in list(c.ids):
            await c.start(n)
        leader = await c.wait_for_leader()
        assert leader.status().term > term
        assert await get(leader, "k99") == b"99"
        assert await get(leader, "k0") == b"0"


@virtual_time(120)
async def test_cluster_grows_to_five_shrinks_to_three_and_still_elects(tmp_path: Path) -> None:
    async with open_cluster(tmp_path, 3) as (c, leader):
        await leader.propose(put("x", b"1"))
        for n in (4, 5):
            await c.start(n, join=True)
            await leader.add_learner(n, f"mem:{n}")
        for n in (4, 5):
            await c.nodes[n].wait_applied(leader.status().commit_index)
            await leader.promote(n)
        assert leader.status().voters == (1, 2, 3, 4, 5)
        await leader.propose(put("y", b"2"))
        for n in [x for x in (1, 2, 3) if x != leader.id][:2]:
            await leader.remove_node(n)
            await c.stop(n)
        st = leader.status()
        assert len(st.voters) == 3 and not st.joint
        await leader.propose(put("z", b"3"))
        # The remaining three still elect a leader without the removed ones.
        await c.stop(leader.id)
        new = await c.wait_for_leader()
        assert await get(new, "z") == b"3"


@virtual_time(120)
async def test_transfer_moves_leadership_and_overlapping_proposals_land_once_or_are_refused(
    tmp_path: Path,
) -> None:
    # Proposals appended before the transfer starts, while it runs and after it:
    # each one either lands (applied exactly once, at the index its answer
    # names) or is refused (and is then nowhere in the log); none is lost.
    async with open_cluster(tmp_path, 3) as (c, leader):
        target = next(n for n in c.ids if n != leader.id)
        landed: dict[str, int] = {}
        refused: set[str] = set()

        async def one(node: object, key: str) -> None:
            try:
                res = await node.propose(  # type: ignore[attr-defined]
                    encode_command("cas", key, expected=None, value=key.encode())
                )
            except (NotLeaderError, ProposalRejectedError, ProposalDroppedError):
                refused.add(key)
            else:
                assert isinstance(res, dict) and res["ok"], res
                landed[key] = res["rev"]

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, leader, f"before{i}")
            await trio.testing.wait_all_tasks_blocked()  # all 20 appended, none committed
            assert not landed and not refused
            nursery.start_soon(leader.transfer_leadership, target)
            await trio.testing.wait_all_tasks_blocked(cushion=0.0)
            for i in range(20):
                nursery.start_soon(one, leader, f"during{i}")
        new = c.nodes[target]
        assert new.is_leader and not leader.is_leader
        for i in range(20):
            await one(new, f"after{i}")

        # The transfer overlapped both kinds: the core refuses while it runs.
        assert {f"during{i}" for i in range(20)} <= refused
        assert {f"after{i}" for i in range(20)} <= set(landed)
        assert len(landed) + len(refused) == 60

        core = new.core
        assert core is not None and core.offset == 0  # the whole log is still there
        where: dict[str, list[int]] = {}
        for e in core.entries_between(1, core.last_index() + 1):
            if e.kind is EntryKind.NORMAL and e.data:
                where.setdefault(cbor2.loads(e.data)["key"], []).append(e.index)
        for key, rev in landed.items():
            assert where[key] == [rev], (key, where.get(key))
            assert await get(new, key) == key.encode()
        for key in refused:
            assert key not in where
            assert await get(new, key) is None


@virtual_time(120)
async def test_lease_read_needs_no_round_trip_and_local_read_may_be_stale(tmp_path: Path) -> None:
    async with open_cluster(tmp_path, 3) as (c, leader):
        await leader.propose(put("r", b"1"))
        follower = next(n for n in c.nodes.values() if n is not leader)
        await follower.wait_applied(leader.status().commit_index)
        await trio.sleep(0.2)  # a few heartbeat rounds establish the lease
        # Cut the leader off: a lease read still answers at once, with no
        # message sent, while a linearizable read waits for a quorum.
        c.network.isolate(leader.id)
        t0 = trio.current_time()
        assert await get(leader, "r", "lease") == b"1"
        assert trio.current_time() == t0
        with trio.move_on_after(0.05) as waited:
            await get(leader, "r")
        assert waited.cancelled_caught
        c.network.heal()
        # A local read answers from the follower's own state, even when that
        # is behind: cut off, it still returns the old value.
        c.network.isolate(follower.id)
        await leader.propose(put("r", b"2"))
        assert await get(follower, "r", "local") == b"1"
        assert await get(leader, "r", "local") == b"2"
        with pytest.raises(NotLeaderError):
            await get(follower, "r")
        with pytest.raises(NotLeaderError):
            await get(follower, "r", "lease")
        c.network.heal()
        await follower.wait_applied(leader.status().commit_index)
        assert await get(follower, "r", "local") == b"2"
        with pytest.raises(ValueError, match="consistency"):
            await get(leader, "r", "eventual")


@virtual_time(120)
async def test_proposals_overload_instead_of_growing(tmp_path: Path) -> None:
    from trioraft.runtime import OverloadedError

    async with open_cluster(tmp_path, 3, max_pending_proposals=5) as (_, leader):
        outcomes: list[str] = []

        async def one(i: int) -> None:
            proposal = leader.propose(put(f"o{i}", b"x"))
            outcomes.append(await outcome(proposal, overloaded=OverloadedError))

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(one, i)
        assert "overloaded" in outcomes and "ok" in outcomes
        assert leader.statistics().proposals_pending == 0


def test_kv_commands_encode_as_cbor_maps() -> None:
    assert cbor2.loads(put("a", b"1")) == {"op": "put", "key": "a", "value": b"1"}


@virtual_time(120)
async def test_snapshot_is_taken_once_the_bytes_since_the_last_pass_the_limit(
    tmp_path: Path,
) -> None:
    by_bytes_only = dict(snapshot_entries=10**6, snapshot_bytes=4000)
    async with open_cluster(tmp_path, 3, **by_bytes_only) as (_, leader):
        for i in range(30):
            await leader.propose(put(f"b{i}", b"v" * 100))
        assert leader.statistics().snapshots_taken == 0
        for i in range(30, 60):
            await leader.propose(put(f"b{i}", b"v" * 100))
        assert leader.statistics().snapshots_taken >= 1


@virtual_time(60)
async def test_proposal_and_read_time_out_when_no_quorum_answers(tmp_path: Path) -> None:
    async with open_cluster(tmp_path, 3, proposal_timeout=1.0, check_quorum=False) as (c, leader):
        c.network.isolate(leader.id)
        t0 = trio.current_time()
        with pytest.raises(TimeoutError, match="may still be applied"):
            await leader.propose(put("lost", b"x"))
        assert 1.0 <= trio.current_time() - t0 <= 1.2
        with pytest.raises(TimeoutError, match="read not confirmed"):
            await get(leader, "lost")
        assert leader.statistics().proposals_pending == 0


@virtual_time(60)
async def test_propose_nowait_answers_through_its_callback(tmp_path: Path) -> None:
    async with open_cluster(tmp_path, 3, proposal_timeout=1.0, check_quorum=False) as (c, leader):
        answers: list[tuple[object, BaseException | None]] = []
        got = trio.Event()

        def done(result: object, error: BaseException | None) -> None:
            answers.append((result, error))
            got.set()

        leader.propose_nowait(put("cb", b"1"), done)
        await got.wait()
        (result, error) = answers.pop()
        assert error is None and isinstance(result, dict) and result["ok"]
        follower = next(n for n in c.nodes.values() if n is not leader)
        with pytest.raises(NotLeaderError):
            follower.propose_nowait(put("cb", b"2"), done)
        c.network.isolate(leader.id)
        got = trio.Event()
        leader.propose_nowait(put("cb", b"3"), done)
        await got.wait()
        assert isinstance(answers[-1][1], TimeoutError)
