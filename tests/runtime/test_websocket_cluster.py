"""A cluster over real WebSockets on 127.0.0.1, with real files and the real clock."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from trioraft.kv import KVStateMachine, encode_command
from trioraft.runtime import Node, NodeConfig, NotLeaderError

from .realcluster import RealCluster


async def test_real_sockets_elect_fail_over_and_rejoin(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trioraft.node")
    c = RealCluster(tmp_path)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            t0 = trio.current_time()
            for n in (1, 2, 3):
                await c.start(nursery, n)
            leader = await c.leader()
            first_election = trio.current_time() - t0
            for i in range(50):
                await leader.propose(encode_command("put", f"k{i}", value=b"%d" % i))
            follower = next(n for n in c.nodes.values() if n is not leader)
            with pytest.raises(NotLeaderError) as err:
                await follower.propose(encode_command("put", "x", value=b"x"))
            assert err.value.leader_address == c.addr[leader.id]

            old = leader.id
            t1 = trio.current_time()
            await c.stop(old)
            new = await c.leader(exclude=old)
            failover = trio.current_time() - t1
            await new.propose(encode_command("put", "after", value=b"1"))

            back = await c.start(nursery, old)
            with trio.fail_after(10):
                await back.wait_applied(new.status().commit_index)
            assert await back.read({"op": "get", "key": "after"}, consistency="local") == b"1"
            assert await back.read({"op": "get", "key": "k49"}, consistency="local") == b"49"
            print(f"first election {first_election:.3f}s, failover {failover:.3f}s")
            assert failover < 5
            nursery.cancel_scope.cancel()
    assert any("is leader in term" in r.getMessage() for r in caplog.records)


def test_a_node_without_a_secret_refuses_to_start(tmp_path: Path) -> None:
    cfg = NodeConfig(node_id=1, data_dir=str(tmp_path), listen="127.0.0.1:0")
    with pytest.raises(ValueError, match="cluster_secret"):
        Node(cfg, KVStateMachine(str(tmp_path / "sm")))
