"""Three trioraft nodes in one process: elect, write, lose the leader, write again.

Run: ``python3 examples/kv_cluster.py``.  Each node is what one process of
a real deployment runs; here they share a Trio run for the demonstration.
"""

from __future__ import annotations

import os
import socket
import tempfile

import trio

import trioraft
from trioraft.kv import KVStateMachine, encode_command


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


async def main() -> None:
    root = tempfile.mkdtemp(prefix="trioraft-demo-")
    addr = {i + 1: f"127.0.0.1:{p}" for i, p in enumerate(free_ports(3))}
    nodes: dict[int, trioraft.Node] = {}
    scopes: dict[int, trio.CancelScope] = {}

    async def run(n: int, task_status: trio.TaskStatus[trioraft.Node]) -> None:
        config = trioraft.NodeConfig(
            node_id=n,
            data_dir=os.path.join(root, f"n{n}"),
            listen=addr[n],
            peers={m: a for m, a in addr.items() if m != n},
            cluster_secret=b"demo secret",
        )
        with trio.CancelScope() as scopes[n]:
            await trioraft.serve_node(
                config, KVStateMachine(os.path.join(config.data_dir, "kv")), task_status=task_status
            )

    async def leader() -> trioraft.Node:
        while True:
            for node in nodes.values():
                if node.is_leader and node.status().commit_index > 0:
                    return node
            await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        for n in addr:
            nodes[n] = await nursery.start(run, n)
        first = await leader()
        print(f"node {first.id} leads after {trio.current_time() - t0:.2f}s")
        await first.propose(encode_command("put", "greeting", value=b"hello"))
        print("read:", await first.read({"op": "get", "key": "greeting"}))
        scopes[first.id].cancel()
        del nodes[first.id]
        t1 = trio.current_time()
        second = await leader()
        print(
            f"node {first.id} stopped; node {second.id} leads after {trio.current_time() - t1:.2f}s"
        )
        await second.propose(encode_command("put", "greeting", value=b"hello again"))
        print("read:", await second.read({"op": "get", "key": "greeting"}))
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
