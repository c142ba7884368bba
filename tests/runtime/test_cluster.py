"""Clusters of real nodes over the memory transport, under a mock clock."""

from __future__ import annotations

import pathlib

import cbor2
import pytest
import trio
import trio.testing

from trioraft.runtime import NotLeaderError
from trioraft.testing.cluster import MemoryCluster
from trioraft.testing.kv import encode_command

from .conftest import bounded


def put(key: str, value: bytes) -> bytes:
    return encode_command("put", key, value=value)


async def get(node: object, key: str, consistency: str = "linearizable") -> object:
    return await node.read({"op": "get", "key": key}, consistency=consistency)  # type: ignore[attr-defined]


@bounded(120)
async def test_three_nodes_elect_and_replicate(
    tmp_path: pathlib.Path, mock_time: trio.testing.MockClock
) -> None:
    async with MemoryCluster(tmp_path, 3) as c:
        leader = await c.wait_for_leader()
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


@bounded(120)
async def test_failover_elects_a_new_leader_and_keeps_data(
    tmp_path: pathlib.Path, mock_time: trio.testing.MockClock
) -> None:
    async with MemoryCluster(tmp_path, 3) as c:
        leader = await c.wait_for_leader()
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


@bounded(120)
async def test_partition_heals_and_minority_leader_steps_down(
    tmp_path: pathlib.Path, mock_time: trio.testing.MockClock
) -> None:
    async with MemoryCluster(tmp_path, 5) as c:
        leader = await c.wait_for_leader()
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


@bounded(120)
async def test_wiped_follower_catches_up_by_snapshot(
    tmp_path: pathlib.Path, mock_time: trio.testing.MockClock
) -> None:
    async with MemoryCluster(
        tmp_path, 3, snapshot_entries=50, snapshot_keep_entries=5, snapshot_chunk_bytes=1024
    ) as c:
        leader = await c.wait_for_leader()
        victim = next(n for n in c.ids if n != leader.id)
        await c.wipe(victim)
        for i in range(200):
            await leader.propose(put(f"k{i}", b"v" * 20))
        assert leader.statistics().snapshots_taken >= 1
        node = await c.start(victim)
        await node.wait_applied(leader.status().commit_index)
        assert node.statistics().snapshots_installed >= 1
        assert await get(node, "k0", "local") == b"v" * 20
        assert await get(node, "k199", "local") == b"v" * 20
        assert leader.statistics().snapshots_sent >= 1


@bounded(120)
async def test_restart_of_every_node_from_disk(
    tmp_path: pathlib.Path, mock_time: trio.testing.MockClock
) -> None:
    async with MemoryCluster(tmp_path, 3, snapshot_entries=30) as c:
        leader = await c.wait_for_leader()
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


@bounded(120)
async def test_membership_three_to_five_to_three(
    tmp_path: pathlib.Path, mock_time: trio.testing.MockClock
) -> None:
    async with MemoryCluster(tmp_path, 3) as c:
        leader = await c.wait_for_leader()
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


@bounded(120)
async def test_leadership_transfer(
    tmp_path: pathlib.Path, mock_time: trio.testing.MockClock
) -> None:
    async with MemoryCluster(tmp_path, 3) as c:
        leader = await c.wait_for_leader()
        target = next(n for n in c.ids if n != leader.id)

        async def writer() -> None:
            for i in range(50):
                await c.propose(put(f"w{i}", b"%d" % i))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            await trio.sleep(0.05)
            assert await leader.transfer_leadership(target) == target
        new = c.nodes[target]
        assert new.is_leader
        for i in range(50):
            assert await get(new, f"w{i}") == b"%d" % i


@bounded(120)
async def test_lease_and_local_reads(
    tmp_path: pathlib.Path, mock_time: trio.testing.MockClock
) -> None:
    async with MemoryCluster(tmp_path, 3) as c:
        leader = await c.wait_for_leader()
        await leader.propose(put("r", b"1"))
        await trio.sleep(0.2)  # a few heartbeat rounds establish the lease
        assert await get(leader, "r", "lease") == b"1"
        follower = next(n for n in c.nodes.values() if n is not leader)
        with pytest.raises(NotLeaderError):
            await get(follower, "r")
        with pytest.raises(ValueError, match="consistency"):
            await get(leader, "r", "eventual")


@bounded(120)
async def test_statistics_and_status(
    tmp_path: pathlib.Path, mock_time: trio.testing.MockClock
) -> None:
    async with MemoryCluster(tmp_path, 3) as c:
        leader = await c.wait_for_leader()
        for i in range(10):
            await leader.propose(put(f"s{i}", b"x"))
        st = leader.statistics()
        assert st.role == "leader" and st.proposals_committed == 10
        assert set(st.peers) == set(c.ids) - {leader.id}
        assert st.proposal_latency_ms["p50"] > 0
        status = leader.status()
        assert status.leader_id == leader.id and status.applied_index == status.commit_index


@bounded(120)
async def test_proposals_overload_instead_of_growing(
    tmp_path: pathlib.Path, mock_time: trio.testing.MockClock
) -> None:
    from trioraft.runtime import OverloadedError

    async with MemoryCluster(tmp_path, 3, max_pending_proposals=5) as c:
        leader = await c.wait_for_leader()
        outcomes: list[str] = []

        async def one(i: int) -> None:
            try:
                await leader.propose(put(f"o{i}", b"x"))
                outcomes.append("ok")
            except OverloadedError:
                outcomes.append("overloaded")

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(one, i)
        assert "overloaded" in outcomes and "ok" in outcomes
        assert leader.statistics().proposals_pending == 0


def test_kv_commands_are_cbor() -> None:
    assert cbor2.loads(put("a", b"1")) == {"op": "put", "key": "a", "value": b"1"}


@bounded(120)
async def test_snapshot_policy_by_bytes(
    tmp_path: pathlib.Path, mock_time: trio.testing.MockClock
) -> None:
    async with MemoryCluster(tmp_path, 3, snapshot_entries=10**6, snapshot_bytes=4000) as c:
        leader = await c.wait_for_leader()
        for i in range(30):
            await leader.propose(put(f"b{i}", b"v" * 100))
        assert leader.statistics().snapshots_taken == 0
        for i in range(30, 60):
            await leader.propose(put(f"b{i}", b"v" * 100))
        assert leader.statistics().snapshots_taken >= 1


@bounded(60)
async def test_proposal_and_read_time_out_when_no_quorum_answers(
    tmp_path: pathlib.Path, mock_time: trio.testing.MockClock
) -> None:
    async with MemoryCluster(tmp_path, 3, proposal_timeout=1.0, check_quorum=False) as c:
        leader = await c.wait_for_leader()
        c.network.isolate(leader.id)
        t0 = trio.current_time()
        with pytest.raises(TimeoutError, match="may still be applied"):
            await leader.propose(put("lost", b"x"))
        assert 1.0 <= trio.current_time() - t0 <= 1.2
        with pytest.raises(TimeoutError, match="read not confirmed"):
            await get(leader, "lost")
        assert leader.statistics().proposals_pending == 0


@bounded(60)
async def test_propose_nowait_answers_through_its_callback(
    tmp_path: pathlib.Path, mock_time: trio.testing.MockClock
) -> None:
    async with MemoryCluster(tmp_path, 3, proposal_timeout=1.0, check_quorum=False) as c:
        leader = await c.wait_for_leader()
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
