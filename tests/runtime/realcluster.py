"""A cluster of real nodes on 127.0.0.1 (WebSockets, files, the real clock) for tests."""

from __future__ import annotations

from pathlib import Path

import trio

from trioraft.kv import KVStateMachine
from trioraft.runtime import Node, NodeConfig, serve_node
from trioraft.testing.chaos.run import free_ports

SECRET = b"test-cluster-secret"
TOKEN = b"test-client-token"


class RealCluster:
    def __init__(self, root: Path, size: int = 3, *, max_pending: int = 50_000) -> None:
        self.root = root
        self.max_pending = max_pending
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
            client_tokens={"tester": TOKEN},
            max_pending_proposals=self.max_pending,
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
