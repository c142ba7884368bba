"""A cluster over real WebSockets on 127.0.0.1, with real files and the real clock."""

from __future__ import annotations

import logging
import pathlib
import socket

import pytest
import trio

from trioraft.runtime import Node, NodeConfig, NotLeaderError, serve_node
from trioraft.testing.kv import KVStateMachine, encode_command

SECRET = b"test-cluster-secret"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class RealCluster:
    def __init__(self, root: pathlib.Path, size: int = 3) -> None:
        self.root = root
        ports = free_ports(size)
        self.addr = {i + 1: f"127.0.0.1:{p}" for i, p in enumerate(ports)}
        self.nodes: dict[int, Node] = {}
        self.scopes: dict[int, trio.CancelScope] = {}

    def config(self, n: int) -> NodeConfig:
        return NodeConfig(
            node_id=n,
            data_dir=str(self.root / f"n{n}"),
            listen=self.addr[n],
            peers={m: a for m, a in self.addr.items() if m != n},
            cluster_secret=SECRET,
            election_timeout_min=0.3,
            election_timeout_max=0.6,
            heartbeat_interval=0.05,
        )

    async def start(self, nursery: trio.Nursery, n: int) -> Node:
        async def run(task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                self.scopes[n] = scope
                cfg = self.config(n)
                await serve_node(cfg, KVStateMachine(cfg.data_dir + "/sm"), task_status=task_status)

        node: Node = await nursery.start(run)
        self.nodes[n] = node
        return node

    async def stop(self, n: int) -> None:
        self.scopes.pop(n).cancel()
        await self.nodes.pop(n)._stopped.wait()

    async def leader(self, exclude: int | None = None) -> Node:
        while True:
            for node in self.nodes.values():
                if node.is_leader and node.id != exclude and node.status().commit_index > 0:
                    return node
            await trio.sleep(0.01)


async def test_real_sockets_elect_fail_over_and_rejoin(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
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


def test_a_node_without_a_secret_refuses_to_start(tmp_path: pathlib.Path) -> None:
    cfg = NodeConfig(node_id=1, data_dir=str(tmp_path), listen="127.0.0.1:0")
    with pytest.raises(ValueError, match="cluster_secret"):
        Node(cfg, KVStateMachine(str(tmp_path / "sm")))
