"""Snapshots, recovery and proposals' waiters at the seams between them.

Each test is named after a defect it pins down (issue "The guarantees hold at
the seams", defects 3 and 4 and the items traced with them).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
import trio
import trio.testing

from trioraft.core.types import Entry, EntryKind
from trioraft.kv import KVStateMachine
from trioraft.runtime import NotLeaderError, ProposalDroppedError
from trioraft.statemachine import SnapshotInfo
from trioraft.storage import SnapshotStore, StorageCorruption
from trioraft.testing.cluster import MemoryCluster

from .conftest import virtual_time
from .helpers import open_cluster, outcome, put

M = TypeVar("M", bound=KVStateMachine)

# A snapshot every 20 entries, the log kept 2 entries behind it.
EVERY_20 = dict(snapshot_entries=20, snapshot_keep_entries=2)


async def get_local(node: object, key: str) -> object:
    return await node.read({"op": "get", "key": key}, consistency="local")  # type: ignore[attr-defined]


def snapshot_dir(c: MemoryCluster, node_id: int) -> str:
    return os.path.join(c.node_config(node_id).data_dir, "snapshots")


def node_of(path: str) -> int:
    """The node id of a state machine directory ``.../node<N>/sm``."""
    return int(os.path.basename(os.path.dirname(path))[len("node") :])


async def follower_of(c: MemoryCluster) -> int:
    leader = await c.wait_for_leader()
    return next(n for n in c.ids if n != leader.id)


def kept_by_node(kind: type[M]) -> tuple[dict[int, M], Callable[[str], M]]:
    """A state machine factory for the cluster, and the machines it made by node id."""
    machines: dict[int, M] = {}

    def factory(path: str) -> M:
        machines[node_of(path)] = sm = kind(path)
        return sm

    return machines, factory


async def left_behind(c: MemoryCluster) -> int:
    """Stop a follower once it applied one entry, then commit 45 more without it.

    Under ``EVERY_20`` the leader snapshots past the follower's log.
    Returns the follower's id.
    """
    leader = await c.wait_for_leader()
    await leader.propose(put("a", b"1"))
    victim = await follower_of(c)
    await c.nodes[victim].wait_applied(leader.status().commit_index)
    await c.stop(victim)
    for i in range(45):
        await leader.propose(put(f"k{i}", b"v"))
    return victim


@virtual_time(120)
async def test_snapshot_newer_than_the_log_at_restart(tmp_path: Path) -> None:
    # A lagging follower (its log ends at a few entries) has the leader's
    # snapshot committed by its receiver, and crashes before the Ready that
    # compacts its log (or its core refused the InstallSnapshot: its term moved).
    async with open_cluster(tmp_path, 3, **EVERY_20) as (c, leader):
        victim = await left_behind(c)
        assert leader._snaps is not None
        snap = leader._snaps.latest_stored()
        assert snap is not None and snap.meta.index >= 40
        store = SnapshotStore(snapshot_dir(c, victim))
        path = store.new_path()
        shutil.copyfile(snap.path, path)
        store.commit(path, snap.meta, snap.checksum, snap.size)  # the receiver's commit

        node = await c.start(victim)  # failed: log.entries(41, 4) -> ValueError: empty range
        await leader.propose(put("after", b"x"))
        await node.wait_applied(leader.status().commit_index)
        for key, value in (("a", b"1"), ("k44", b"v"), ("after", b"x")):
            assert await get_local(node, key) == value
        # The reconciliation was durable: a second restart needs none.
        await c.stop(victim)
        node = await c.start(victim)
        await node.wait_applied(leader.status().commit_index)


class RacingKV(KVStateMachine):
    """Holds its own snapshot back until a received one is being restored."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.hold_own_snapshot = False
        self.restoring = trio.Event()

    async def write_snapshot(self, path: str) -> SnapshotInfo:
        info = await super().write_snapshot(path)
        if self.hold_own_snapshot:
            await self.restoring.wait()
        return info

    async def restore_snapshot(self, path: str, info: SnapshotInfo) -> None:
        self.restoring.set()
        await trio.sleep(0.05)  # the own snapshot task commits meanwhile
        await super().restore_snapshot(path, info)


@virtual_time(120)
async def test_own_snapshot_racing_a_received_one_never_becomes_latest(tmp_path: Path) -> None:
    # The node's own snapshot task writes snapshot ~3 while the receiver
    # commits the leader's ~40; the own task commits later.  It must not
    # become "latest": under a log boundary of 40 the next restart had a gap.
    machines, factory = kept_by_node(RacingKV)
    async with open_cluster(tmp_path, 3, state_machine=factory, **EVERY_20) as (c, leader):
        victim = await left_behind(c)

        node = await c.start(victim)
        machines[victim].hold_own_snapshot = True
        own = await node.snapshot()  # returns once the received snapshot was committed
        assert node.status().snapshot_index >= 40
        assert own.index == node.status().snapshot_index, "an older snapshot won"
        await node.wait_applied(leader.status().commit_index)

        await c.stop(victim)
        store = SnapshotStore(snapshot_dir(c, victim))
        latest = store.latest()
        assert latest is not None and latest[0].index >= 40
        node = await c.start(victim)  # failed: snapshot ~3 under log boundary ~40
        await leader.propose(put("after", b"x"))
        await node.wait_applied(leader.status().commit_index)
        assert await get_local(node, "after") == b"x"


def flip_a_byte(path: str) -> None:
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        data[len(data) // 2] ^= 0x01
        f.seek(0)
        f.write(data)


@virtual_time(120)
async def test_damaged_newest_snapshot_falls_back(tmp_path: Path) -> None:
    # The node keeps two snapshots so that a damaged newest one can fall back
    # to the older; the log must still reach back to the older one.
    async with open_cluster(tmp_path, 3, **EVERY_20) as (c, leader):
        victim = await follower_of(c)
        for i in range(70):
            await leader.propose(put(f"k{i}", b"%d" % i))
        await c.nodes[victim].wait_applied(leader.status().commit_index)
        await c.stop(victim)
        store = SnapshotStore(snapshot_dir(c, victim))
        newest = store.latest_stored()
        assert newest is not None and newest.meta.index >= 60
        flip_a_byte(newest.path)
        # Lose the state machine's own files too: it must be rebuilt from the
        # older snapshot plus the log.
        shutil.rmtree(os.path.join(c.node_config(victim).data_dir, "sm"))

        node = await c.start(victim)  # failed: the log starts after the older snapshot
        assert node.status().snapshot_index < newest.meta.index
        await leader.propose(put("after", b"x"))
        await node.wait_applied(leader.status().commit_index)
        for i in range(70):
            assert await get_local(node, f"k{i}") == b"%d" % i
        assert await get_local(node, "after") == b"x"


@virtual_time(120)
async def test_damaged_snapshot_without_a_bridge_fails_clearly(tmp_path: Path) -> None:
    # A snapshot installed from the leader replaced the whole log: if it is
    # damaged, no older snapshot and no log entries can stand in for it.
    async with open_cluster(tmp_path, 3, **EVERY_20) as (c, leader):
        victim = await follower_of(c)
        await c.stop(victim)
        for i in range(45):
            await leader.propose(put(f"k{i}", b"v"))
        node = await c.start(victim)
        await node.wait_applied(leader.status().commit_index)
        assert node.statistics().snapshots_installed == 1
        await c.stop(victim)
        store = SnapshotStore(snapshot_dir(c, victim))
        stored = store.latest_stored()
        assert stored is not None
        flip_a_byte(stored.path)

        with pytest.raises(StorageCorruption, match="wipe") as err:
            await c.start(victim)
        assert "snapshot" in str(err.value)


@virtual_time(120)
async def test_reused_index_fails_the_old_proposal(tmp_path: Path) -> None:
    # An isolated leader appends proposals it can never commit; a new leader
    # compacts past them and the old one installs its snapshot, then leads
    # again and reuses those indexes.  Every old proposal must fail, none hang.
    async with MemoryCluster(tmp_path, 3, **EVERY_20, check_quorum=False) as c:
        old = await c.wait_for_leader()
        await old.propose(put("a", b"1"))
        c.network.isolate(old.id)
        outcomes: list[str] = []

        async def doomed(i: int) -> None:
            proposal = old.propose(put(f"lost{i}", b"x"))
            errors = {"dropped": ProposalDroppedError, "timeout": TimeoutError}
            outcomes.append(await outcome(proposal, **errors))

        with trio.fail_after(20):  # proposal_timeout is 30 s: nothing may wait for it
            async with trio.open_nursery() as nursery:
                for i in range(30):
                    nursery.start_soon(doomed, i)
                new = await c.wait_for_leader(exclude=frozenset({old.id}))
                for i in range(25):
                    await new.propose(put(f"k{i}", b"v"))
                c.network.heal()
                await old.wait_applied(new.status().commit_index)
                assert old.statistics().snapshots_installed >= 1
                await new.transfer_leadership(old.id)
                for i in range(12):
                    await old.propose(put(f"again{i}", b"y"))
        assert outcomes == ["dropped"] * 30
        assert old.statistics().proposals_pending == 0


class SlowConfigKV(KVStateMachine):
    """Runs ``before_config`` once, before applying the next configuration entry."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.before_config: Callable[[], Awaitable[None]] | None = None

    async def apply(self, entries: Sequence[Entry]) -> list[object]:
        hook = self.before_config
        if hook is not None and any(e.kind is EntryKind.CONFIG for e in entries):
            self.before_config = None
            await hook()
        return await super().apply(entries)


@virtual_time(60)
async def test_membership_change_is_bounded_by_proposal_timeout(tmp_path: Path) -> None:
    # The joint configuration takes 0.8 s to apply, then the leader is cut
    # off before C(new) commits: the change as a whole gets proposal_timeout.
    machines, factory = kept_by_node(SlowConfigKV)
    async with open_cluster(
        tmp_path, 3, state_machine=factory, proposal_timeout=1.0, check_quorum=False
    ) as (c, leader):
        learner = await c.start(4, join=True)
        await leader.add_learner(4, "mem:4")
        await learner.wait_applied(leader.status().commit_index)

        async def slow_joint() -> None:
            c.network.isolate(leader.id)
            await trio.sleep(0.8)

        machines[leader.id].before_config = slow_joint
        t0 = trio.current_time()
        with pytest.raises((TimeoutError, NotLeaderError)) as err:
            await leader.promote(4)
        elapsed = trio.current_time() - t0
        assert isinstance(err.value, TimeoutError), err.value
        assert elapsed <= 1.0 + 0.15, f"promote took {elapsed:.2f}s"
