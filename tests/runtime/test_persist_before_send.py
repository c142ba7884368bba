"""Persist before send, on real nodes: nothing leaves before what it vouches for is durable.

Theory of operation: each node of a three-node cluster writes its log to a
:class:`RecordingStore` (an in-memory store that remembers what each write
made durable) and sends through a transport wrapper that checks every
outgoing message against that record at the moment it is handed over:

* a granted vote (not a pre-vote) leaves only once the term and the vote
  for that candidate are durable;
* a RequestVote (not a pre-vote) only once the candidate's term and its
  vote for itself are;
* a successful AppendEntriesResponse only once the entries it acknowledges
  (up to its index) are durable;
* any message of a term (pre-votes aside, whose term is a prospective one)
  only once that term is durable: this is what lets a leader's appends leave
  before its own write (the core's one exception), and no other.

The cluster elects, replicates, then hands leadership over (a second round
of votes).  The last test breaks the order on purpose (every message sent
before the write) and expects the checks to catch it, so they are shown to
bite.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

import trioraft.core.driver as driver_module
from trioraft.core.types import (
    AppendEntriesResponse,
    Entry,
    HardState,
    NodeId,
    Ready,
    RequestVote,
    RequestVoteResponse,
)
from trioraft.kv import KVStateMachine, encode_command
from trioraft.runtime import NodeConfig, open_node
from trioraft.runtime.node import Node
from trioraft.storage.memory import MemoryLogStore
from trioraft.testing.cluster import memory_transport
from trioraft.transport.base import Transport, TransportStatistics
from trioraft.transport.memory import MemoryNetwork
from trioraft.transport.messages import AnyMessage

from .conftest import virtual_time


class RecordingStore(MemoryLogStore):
    """A memory store that keeps what is durable: the hard state and each index's term."""

    def __init__(self) -> None:
        super().__init__()
        self.durable_hs = HardState()
        self.durable_terms: dict[int, int] = {}

    def append(self, entries: Sequence[Entry]) -> None:
        super().append(entries)
        if entries:
            first = entries[0].index
            self.durable_terms = {i: t for i, t in self.durable_terms.items() if i < first}
            self.durable_terms.update((e.index, e.term) for e in entries)

    def compact(self, index: int, term: int) -> None:
        super().compact(index, term)
        self.durable_terms[index] = term

    def save_hard_state(self, hs: HardState) -> None:
        super().save_hard_state(hs)
        self.durable_hs = hs


class Checks:
    """What the checking transports saw: violations, and how many messages each rule checked."""

    def __init__(self) -> None:
        self.violations: list[str] = []
        self.checked = {"vote": 0, "campaign": 0, "ack": 0, "term": 0}

    def check(self, node: NodeId, store: RecordingStore, m: AnyMessage) -> None:
        hs = store.durable_hs
        bad = self.violations.append
        if isinstance(m, RequestVoteResponse) and m.granted and not m.pre_vote:
            self.checked["vote"] += 1
            if (hs.term, hs.vote) != (m.term, m.dst):
                bad(f"node {node} granted a vote to {m.dst} in term {m.term}; durable {hs}")
        if isinstance(m, RequestVote) and not m.pre_vote:
            self.checked["campaign"] += 1
            if (hs.term, hs.vote) != (m.term, node):
                bad(f"node {node} asked for votes in term {m.term}; durable {hs}")
        if isinstance(m, AppendEntriesResponse) and m.success:
            self.checked["ack"] += 1
            if store.durable_terms.get(m.index) is None and m.index > store.boundary()[0]:
                bad(f"node {node} acknowledged entry {m.index}, not durable")
        pre_vote = isinstance(m, RequestVote | RequestVoteResponse) and m.pre_vote
        term = getattr(m, "term", None)
        if not pre_vote and isinstance(term, int):
            self.checked["term"] += 1
            if term > hs.term:
                bad(f"node {node} sent {type(m).__name__} of term {term}; durable {hs}")


class CheckingTransport:
    """A transport that checks each message against its node's durable record, then sends it."""

    def __init__(
        self, inner: Transport, node: NodeId, store: RecordingStore, checks: Checks
    ) -> None:
        self.inner, self.node, self.store, self.checks = inner, node, store, checks

    def send(self, dst: NodeId, message: AnyMessage) -> None:
        self.checks.check(self.node, self.store, message)
        self.inner.send(dst, message)

    def set_peers(self, peers: Mapping[NodeId, str]) -> None:
        self.inner.set_peers(peers)

    def statistics(self) -> TransportStatistics:
        return self.inner.statistics()


def checking_transport(
    net: MemoryNetwork, store: RecordingStore, checks: Checks
) -> Callable[[Node], AbstractAsyncContextManager[Transport]]:
    inner_factory = memory_transport(net)

    @asynccontextmanager
    async def factory(node: Node) -> AsyncIterator[Transport]:
        async with inner_factory(node) as inner:
            yield CheckingTransport(inner, node.id, store, checks)

    return factory


async def run_cluster(tmp_path: Path, checks: Checks) -> None:
    """Elect, replicate a few writes, transfer leadership, replicate again."""
    ids = [1, 2, 3]
    async with (
        MemoryNetwork(seed=3, delay=(0.0005, 0.002)) as net,
        contextlib.AsyncExitStack() as stack,
    ):
        nodes: list[Node] = []
        for i in ids:
            store = RecordingStore()
            cfg = NodeConfig(
                node_id=i,
                data_dir=os.path.join(tmp_path, f"node{i}"),
                listen=f"mem:{i}",
                peers={n: f"mem:{n}" for n in ids if n != i},
                election_timeout_min=0.3,
                election_timeout_max=0.6,
                heartbeat_interval=0.05,
                # Large and slow writes too go inline, so a check never races a
                # worker thread.
                inline_write_bytes=1 << 30,
                inline_write_seconds=math.inf,
            )
            node = await stack.enter_async_context(
                open_node(
                    cfg,
                    KVStateMachine(os.path.join(cfg.data_dir, "sm")),
                    transport_factory=checking_transport(net, store, checks),
                    log_store=store,
                )
            )
            nodes.append(node)
        leader = await wait_leader(nodes)
        for k in range(5):
            await leader.propose(encode_command("put", f"k{k}", value=b"v"))
        await leader.transfer_leadership()
        leader = await wait_leader(nodes)
        for k in range(5):
            await leader.propose(encode_command("put", f"j{k}", value=b"v"))
        for n in nodes:
            await n.wait_applied(leader.status().commit_index)


async def wait_leader(nodes: list[Node]) -> Node:
    while True:
        for n in nodes:
            if n.is_leader and n.status().commit_index >= 1:
                return n
        await trio.sleep(0.01)


@virtual_time(60)
async def test_no_message_leaves_before_what_it_vouches_for_is_durable(tmp_path: Path) -> None:
    checks = Checks()
    await run_cluster(tmp_path, checks)
    assert checks.violations == []
    # Every rule was exercised (two elections, replication).
    assert checks.checked["vote"] >= 2 and checks.checked["campaign"] >= 2
    assert checks.checked["ack"] >= 10 and checks.checked["term"] > 0


@virtual_time(60)
async def test_the_checks_catch_a_driver_that_sends_before_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every message out before the write (the order broken): the same run fails its checks."""

    real_start = driver_module.ReadyDriver.start

    def start(self: driver_module.ReadyDriver) -> Ready | None:
        rd = real_start(self)  # sends the early messages
        for m in rd.messages_after_persist() if rd is not None else ():
            self.io.send(m)  # and the rest too, before the write
        return rd

    def finish(self: driver_module.ReadyDriver, rd: Ready) -> None:
        self.core.advance(rd, applied=self.io.apply(rd))  # nothing left to send

    monkeypatch.setattr(driver_module.ReadyDriver, "start", start)
    monkeypatch.setattr(driver_module.ReadyDriver, "finish", finish)
    checks = Checks()
    with contextlib.suppress(Exception):  # a cluster this broken may not finish the run
        with trio.move_on_after(30):
            await run_cluster(tmp_path, checks)
    assert any("granted a vote" in v for v in checks.violations), checks.violations[:5]
    assert any("acknowledged entry" in v for v in checks.violations), checks.violations[:5]
