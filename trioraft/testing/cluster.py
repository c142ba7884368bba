"""In-process clusters of real nodes for tests and examples.

``MemoryCluster`` runs N :class:`~trioraft.runtime.Node` s over a
:class:`~trioraft.transport.memory.MemoryNetwork`, each with its own data
directory and state machine, and can stop, restart and wipe them.  Under
``trio.testing.MockClock(autojump_threshold=0)`` it takes no wall time; run
blocking I/O inline there (``trioraft.testing.inline_threads``), or the
clock jumps ahead while a worker thread writes.

Example::

    async with MemoryCluster(tmp_path, 3) as cluster:
        leader = await cluster.wait_for_leader()
        await leader.propose(b"...")
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from typing import Any, Self

import trio
import trio.lowlevel

from trioraft.core.types import NodeId
from trioraft.kv import KVStateMachine
from trioraft.runtime.config import NodeConfig
from trioraft.runtime.node import Node, serve_node
from trioraft.statemachine import StateMachine
from trioraft.transport.base import Transport
from trioraft.transport.memory import MemoryNetwork

StateMachineFactory = Callable[[str], StateMachine]


def memory_transport(
    network: MemoryNetwork,
) -> Callable[[Node], AbstractAsyncContextManager[Transport]]:
    """A ``transport_factory`` that puts nodes on ``network``."""

    def factory(node: Node) -> AbstractAsyncContextManager[Transport]:
        return network.open_transport(
            node.id,
            node._on_messages,
            incarnation=bytes.fromhex(node.incarnation),
            on_peer=node._on_peer,
        )

    return factory


class MemoryCluster:
    """N nodes on one memory network.  Use ``async with MemoryCluster(...) as c``."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        size: int = 3,
        *,
        state_machine: StateMachineFactory = KVStateMachine,
        network: MemoryNetwork | None = None,
        **config: Any,
    ) -> None:
        self.directory = os.fspath(directory)
        self.ids = list(range(1, size + 1))
        self.state_machine = state_machine
        self.network = network or MemoryNetwork(seed=1, delay=(0.0005, 0.002))
        config.setdefault("election_timeout_min", 0.3)
        config.setdefault("election_timeout_max", 0.6)
        config.setdefault("heartbeat_interval", 0.05)
        self.config = config
        self.nodes: dict[NodeId, Node] = {}
        self._scopes: dict[NodeId, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None

    def node_config(self, node_id: NodeId, *, join: bool = False) -> NodeConfig:
        peers = {n: f"mem:{n}" for n in self.ids if n != node_id}
        return NodeConfig(
            node_id=node_id,
            data_dir=os.path.join(self.directory, f"node{node_id}"),
            listen=f"mem:{node_id}",
            peers=peers,
            join=join,
            **self.config,
        )

    async def __aenter__(self) -> Self:
        self._cm = self._run()
        await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._cm.__aexit__(*exc)

    @asynccontextmanager
    async def _run(self) -> AsyncIterator[MemoryCluster]:
        async with self.network, trio.open_nursery() as nursery:
            self._nursery = nursery
            for n in self.ids:
                await self.start(n)
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()

    async def start(self, node_id: NodeId, *, join: bool = False) -> Node:
        """Start (or restart) a node from its data directory."""
        assert self._nursery is not None
        if node_id not in self.ids:
            self.ids.append(node_id)
        cfg = self.node_config(node_id, join=join)
        sm = self.state_machine(os.path.join(cfg.data_dir, "sm"))
        node: Node = await self._nursery.start(self._serve, node_id, cfg, sm)
        self.nodes[node_id] = node
        return node

    async def _serve(
        self,
        node_id: NodeId,
        cfg: NodeConfig,
        sm: StateMachine,
        task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with trio.CancelScope() as scope:
            self._scopes[node_id] = scope
            await serve_node(
                cfg,
                sm,
                transport_factory=memory_transport(self.network),
                task_status=task_status,
            )

    async def stop(self, node_id: NodeId) -> None:
        """Stop a node (like kill: nothing more is written, durable state stays)."""
        self._scopes.pop(node_id).cancel()
        node = self.nodes.pop(node_id)
        await node.wait_stopped()

    async def wipe(self, node_id: NodeId) -> None:
        """Stop a node and delete its data directory."""
        if node_id in self.nodes:
            await self.stop(node_id)
        shutil.rmtree(self.node_config(node_id).data_dir, ignore_errors=True)

    def leader(self) -> Node | None:
        leaders = [n for n in self.nodes.values() if n.is_leader]
        if not leaders:
            return None
        return max(leaders, key=lambda n: n.status().term)

    async def wait_for_leader(self, *, exclude: frozenset[NodeId] = frozenset()) -> Node:
        """Wait until some running node (not in ``exclude``) leads with a quorum behind it."""
        while True:
            node = self.leader()
            if node is not None and node.id not in exclude and node.status().commit_index >= 1:
                return node
            await trio.sleep(0.01)

    async def propose(self, command: bytes, **kw: Any) -> object:
        """Propose at whichever node leads now, retrying across elections."""
        from trioraft.runtime.errors import (
            NotLeaderError,
            ProposalDroppedError,
            ProposalRejectedError,
        )

        while True:
            node = await self.wait_for_leader()
            try:
                return await node.propose(command, **kw)
            except (NotLeaderError, ProposalDroppedError, ProposalRejectedError):
                await trio.sleep(0.01)

    def config_for(self, node_id: NodeId, **changes: Any) -> NodeConfig:
        return replace(self.node_config(node_id), **changes)


__all__ = ["MemoryCluster", "inline_threads", "memory_transport"]


async def _run_inline(fn: Callable[..., Any], *args: Any, **_kw: Any) -> Any:
    await trio.lowlevel.checkpoint()
    return fn(*args)


@contextlib.contextmanager
def inline_threads() -> Iterator[None]:
    """Run ``trio.to_thread.run_sync`` calls inline while the block runs.

    Under a ``MockClock`` with ``autojump_threshold=0`` a task waiting for a
    worker thread looks idle, so the clock jumps to the next deadline and
    timers fire "during" a disk write.  Inline I/O keeps virtual time still
    while the disk works, which makes cluster tests deterministic.
    """
    saved = trio.to_thread.run_sync
    trio.to_thread.run_sync = _run_inline  # type: ignore[assignment]
    try:
        yield
    finally:
        trio.to_thread.run_sync = saved
