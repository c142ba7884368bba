"""A node loses power at every storage operation of a snapshot install and of a compaction.

Theory of operation: one node of an in-process cluster (the *victim*) keeps
its log and snapshot store on the fault file system of ``tests/storage``
(its state machine stays on the real disk and is copied aside at the crash,
like a process kill).  A run arms the fault file system to lose power at
mutating call number ``cut`` counted from the start of the path under test;
the victim stops at that call.  Every crash image the model allows
(durable state only; directory entries flushed; everything written) is then
restarted in turn, and must recover, catch up with the leader and reach the
same state digest.  ``cut`` runs 1, 2, 3, ... until a run finishes the path
without reaching it: every storage operation of the path was a crash point.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioraft.runtime.node as node_module
from tests.storage.faultfs import FaultFS, PowerLoss
from trioraft.kv import KVStateMachine
from trioraft.runtime import NodeClosedError
from trioraft.runtime.node import Node
from trioraft.statemachine import SnapshotInfo
from trioraft.storage.log import FileLogStore
from trioraft.storage.snapshots import SnapshotStore
from trioraft.testing.cluster import MemoryCluster

from .helpers import put

VICTIM = 3
SEGMENT = 1024  # small segments, so compaction deletes some


class Disk:
    """The victim's storage: a fault file system, replaced by a crash image at each restart."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self.roots = tuple(os.path.join(data_dir, d) + os.sep for d in ("log", "snapshots"))
        self.fs = FaultFS()

    def owns(self, path: str) -> bool:
        return (os.path.abspath(path) + os.sep).startswith(self.roots)


def route_storage(monkeypatch: pytest.MonkeyPatch, disk: Disk) -> None:
    """Open the victim's log and snapshot store on ``disk.fs``."""
    real_open = FileLogStore.open

    class LogStores:
        @staticmethod
        def open(directory: str, **kw: Any) -> FileLogStore:
            if disk.owns(directory):
                kw.update(fs=disk.fs, segment_bytes=SEGMENT)
            return real_open(directory, **kw)

    def snapshot_store(directory: str, **kw: Any) -> SnapshotStore:
        if disk.owns(directory):
            kw["fs"] = disk.fs
        return SnapshotStore(directory, **kw)

    monkeypatch.setattr(node_module, "FileLogStore", LogStores)
    monkeypatch.setattr(node_module, "SnapshotStore", snapshot_store)


class BridgedKV(KVStateMachine):
    """The KV machine, reading and writing snapshot bodies on the victim's fault file system."""

    def __init__(self, path: str, disk: Disk) -> None:
        super().__init__(path)
        self.disk = disk

    async def write_snapshot(self, path: str) -> SnapshotInfo:
        if not self.disk.owns(path):
            return await super().write_snapshot(path)
        real = os.path.join(self._dir, "snapshot.out")
        info = await super().write_snapshot(real)
        await trio.to_thread.run_sync(self._copy_in, real, path)
        return info

    async def restore_snapshot(self, path: str, info: SnapshotInfo) -> None:
        if not self.disk.owns(path):
            return await super().restore_snapshot(path, info)
        real = os.path.join(self._dir, "snapshot.in")
        await trio.to_thread.run_sync(self._copy_out, path, real)
        await super().restore_snapshot(real, info)
        os.unlink(real)

    def _copy_in(self, real: str, path: str) -> None:
        data = Path(real).read_bytes()
        os.unlink(real)
        handle = self.disk.fs.open(path, create=True)
        handle.pwrite(data, 0)
        handle.sync()

    def _copy_out(self, path: str, real: str) -> None:
        handle = self.disk.fs.open(path)
        Path(real).write_bytes(handle.pread(handle.size(), 0))


class CrashingCluster(MemoryCluster):
    """A cluster in which a node that loses power stops alone."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.crashed = trio.Event()

    async def _serve(self, *args: Any, **kw: Any) -> None:
        try:
            await super()._serve(*args, **kw)
        except* PowerLoss:
            self.crashed.set()


async def digest(node: Node) -> object:
    return await node.read({"op": "digest"}, consistency="local")


async def caught_up(c: MemoryCluster, node: Node) -> None:
    leader = await c.wait_for_leader()
    await node.wait_applied(leader.status().commit_index)
    await leader.wait_applied(leader.status().commit_index)
    assert await digest(node) == await digest(leader)


async def restart_every_image(c: CrashingCluster, disk: Disk, cut: int) -> None:
    """The victim crashed: each crash image must recover and catch up."""
    await c.stop(VICTIM)
    crashed = disk.fs
    sm_dir = os.path.join(c.node_config(VICTIM).data_dir, "sm")
    saved = sm_dir + ".at-crash"
    shutil.copytree(sm_dir, saved)
    images = {
        "power loss": crashed.crash(),
        "names flushed": crashed.crash(current_dirs=True),
        "all written": crashed.crash(current_dirs=True, flush_all=True),
    }
    for name, image in images.items():
        shutil.rmtree(sm_dir)
        shutil.copytree(saved, sm_dir)
        disk.fs = image
        try:
            node = await c.start(VICTIM)
            await c.propose(put(f"after {cut} {name}", b"x"))
            await caught_up(c, node)
        except BaseException as exc:
            exc.add_note(f"restarting after power loss at operation {cut}, crash image {name!r}")
            raise
        await c.stop(VICTIM)
    shutil.rmtree(saved)


async def until(done: Callable[[], bool], c: CrashingCluster) -> None:
    while not c.crashed.is_set():
        try:
            if done():
                return
        except NodeClosedError:
            pass
        await trio.sleep(0.01)


Scenario = Callable[[CrashingCluster, Disk, int], Awaitable[int | None]]


async def sweep(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    scenario: Scenario,
    **config: Any,
) -> int:
    """Run ``scenario`` with power lost at cut 1, 2, ...; returns the path's operation count."""
    for cut in range(1, 500):
        root = tmp_path / f"cut{cut}"
        disk = Disk(os.path.join(root, f"node{VICTIM}"))
        route_storage(monkeypatch, disk)

        def factory(path: str, disk: Disk = disk) -> KVStateMachine:
            if os.path.dirname(path) == disk.data_dir:
                return BridgedKV(path, disk)
            return KVStateMachine(path)

        with trio.fail_after(120):  # virtual seconds; a wedged node fails here, at this cut
            async with CrashingCluster(root, 3, state_machine=factory, **config) as c:
                ops = await scenario(c, disk, cut)
                if ops is not None:
                    return ops  # the path finished before power was lost: all cuts covered
                await restart_every_image(c, disk, cut)
        shutil.rmtree(root)
    raise AssertionError("the path under test never finished")


Sweep = Callable[..., Awaitable[int]]


async def lead_elsewhere(c: MemoryCluster) -> Node:
    leader = await c.wait_for_leader()
    if leader.id == VICTIM:
        await leader.transfer_leadership(1)
        leader = await c.wait_for_leader(exclude=frozenset({VICTIM}))
    return leader


async def install_path(c: CrashingCluster, disk: Disk, cut: int) -> int | None:
    """From the restart of a lagging follower until it installed the leader's snapshot."""
    leader = await lead_elsewhere(c)
    for i in range(15):  # a log of a few segments, for the install to discard
        await c.propose(put(f"a{i}", b"v" * 30))
    await c.nodes[VICTIM].wait_applied(leader.status().commit_index)
    await c.stop(VICTIM)
    for i in range(45):
        await c.propose(put(f"k{i}", b"v" * 30))
    start = disk.fs.ops
    disk.fs.fail_after(cut)
    node = await c.start(VICTIM)

    def installed() -> bool:
        return (
            node.statistics().snapshots_installed == 1
            and node.status().applied_index >= leader.status().commit_index
        )

    await until(installed, c)
    if c.crashed.is_set():
        return None
    disk.fs.fail_at = None
    await caught_up(c, node)
    return disk.fs.ops - start


@pytest.fixture
def crash_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sweep:
    """``sweep`` bound to this test's directory and monkeypatch.

    The test itself asks for ``mock_time``: pytest-trio takes the clock only
    from a test's own arguments.
    """
    return functools.partial(sweep, tmp_path, monkeypatch)


@pytest.mark.slow
async def test_crash_at_every_point_of_a_snapshot_install(
    crash_sweep: Sweep, mock_time: trio.testing.MockClock
) -> None:
    ops = await crash_sweep(
        install_path, snapshot_entries=20, snapshot_keep_entries=2, snapshot_chunk_bytes=1024
    )
    print(f"snapshot install: {ops} storage operations, each a crash point")
    assert ops >= 15  # the chunks, the commit, the log compaction


def compaction_path(nth: int) -> Scenario:
    async def scenario(c: CrashingCluster, disk: Disk, cut: int) -> int | None:
        """The victim's ``nth`` own snapshot: write, commit, prune, compact the log."""
        await lead_elsewhere(c)
        node = c.nodes[VICTIM]
        take = node.snapshot
        calls = 0
        ops: list[int] = []

        async def counted() -> Any:
            nonlocal calls
            calls += 1
            if calls != nth:
                return await take()
            start = disk.fs.ops
            disk.fs.fail_after(cut)
            meta = await take()
            disk.fs.fail_at = None
            ops.append(disk.fs.ops - start)
            return meta

        node.snapshot = counted  # type: ignore[method-assign]
        i = 0
        while not ops and not c.crashed.is_set():
            await c.propose(put(f"k{i}", b"v" * 30))
            i += 1
        if c.crashed.is_set():
            return None
        await caught_up(c, node)
        return ops[0]

    return scenario


@pytest.mark.slow
@pytest.mark.parametrize("nth", [2, 3], ids=["first compaction", "prune and compaction"])
async def test_crash_at_every_point_of_compaction(
    nth: int, crash_sweep: Sweep, mock_time: trio.testing.MockClock
) -> None:
    ops = await crash_sweep(compaction_path(nth), snapshot_entries=10, snapshot_keep_entries=2)
    print(f"compaction (snapshot {nth}): {ops} storage operations, each a crash point")
    assert ops >= 10  # the body, the commit, the boundary, the segment deletions
