"""A node's own tasks: applied means applied, a storage failure stops it, aclose waits."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from trioraft.core.types import Entry
from trioraft.kv import KVStateMachine, encode_command
from trioraft.runtime import NodeConfig, open_node
from trioraft.storage.errors import StorageFatalError
from trioraft.storage.snapshots import SnapshotReceiver
from trioraft.testing.cluster import MemoryCluster, memory_transport
from trioraft.transport.memory import MemoryNetwork

from .conftest import virtual_time
from .helpers import CHUNKED_SNAPSHOTS, open_cluster, wipe_a_follower


def put(key: str) -> bytes:
    return encode_command("put", key, value=b"v" * 20)


class SlowKV(KVStateMachine):
    """Applies each chunk a little late, as a state machine writing to disk would."""

    async def apply(self, entries: Sequence[Entry]) -> list[object]:
        await trio.sleep(0.05)
        return await super().apply(entries)


class ClosingKV(KVStateMachine):
    closed = False

    async def close(self) -> None:
        await trio.sleep(0.01)  # closing takes a moment: aclose must wait for it
        await super().close()
        self.closed = True


@virtual_time(60)
async def test_the_core_counts_as_applied_only_what_the_state_machine_applied(
    tmp_path: Path,
) -> None:
    """The core's applied index follows the apply task, not the hand-over to it."""
    async with open_cluster(tmp_path, 3, state_machine=SlowKV) as (c, leader):
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(leader.propose, put(f"k{i}"))
            ahead = 0
            while nursery.child_tasks:
                for n in c.nodes.values():
                    assert n.core is not None
                    if n.core.applied != n.status().applied_index:
                        ahead += 1
                await trio.sleep(0.005)
        assert ahead == 0
        assert leader.core is not None
        assert leader.core.applied == leader.status().applied_index >= 21


@virtual_time(60)
async def test_aclose_returns_once_the_node_has_stopped(tmp_path: Path) -> None:
    sm = ClosingKV(str(tmp_path / "sm"))
    cfg = NodeConfig(node_id=1, data_dir=str(tmp_path / "n1"), listen="mem:1")
    async with (
        MemoryNetwork(seed=1) as net,
        open_node(cfg, sm, transport_factory=memory_transport(net)) as node,
    ):
        await node.wait_for_leader()
        await node.aclose()
        assert sm.closed
        await node.aclose()  # again: nothing left to wait for


def storage_errors(exc: BaseException) -> list[StorageFatalError]:
    if isinstance(exc, StorageFatalError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        return [e for sub in exc.exceptions for e in storage_errors(sub)]
    return []


@virtual_time(120)
async def test_a_storage_failure_while_receiving_a_snapshot_stops_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot receiver restarts a bad stream, but a write error is fatal, never retried."""
    failed: list[str] = []

    def write(self: SnapshotReceiver, data: bytes) -> None:
        failed.append(self.path)
        raise StorageFatalError(f"writing {self.path}: [Errno 5] Input/output error")

    with pytest.raises(BaseException) as info:  # a group or the error: checked below
        async with MemoryCluster(tmp_path, 3, **CHUNKED_SNAPSHOTS) as c:
            leader, victim = await wipe_a_follower(c)
            monkeypatch.setattr(SnapshotReceiver, "write", write)
            node = await c.start(victim)
            await node.wait_applied(leader.status().commit_index)  # never: the node stops
    assert len(failed) == 1  # the first write failed, and nothing was tried after it
    errors = storage_errors(info.value)
    assert [str(e) for e in errors] == [f"writing {failed[0]}: [Errno 5] Input/output error"]
