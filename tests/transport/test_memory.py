"""MemoryNetwork: delivery through the codec, drops, duplicates, delays, partitions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from trioraft.core.types import AppendEntries, Entry, NodeId
from trioraft.transport.memory import MemoryNetwork
from trioraft.transport.messages import AnyMessage, ClientRequest

from .inbox import Inbox, hb


@asynccontextmanager
async def open_nodes(inbox: Inbox, size: int = 2, **network: Any) -> AsyncIterator[tuple[Any, ...]]:
    """A MemoryNetwork with nodes 1..``size`` delivering to ``inbox``: ``(net, t1, t2, ...)``."""
    async with MemoryNetwork(**network) as net, AsyncExitStack() as stack:
        transports = [
            await stack.enter_async_context(net.open_transport(n, inbox.of(n)))
            for n in range(1, size + 1)
        ]
        yield (net, *transports)


async def test_delivers_in_order_through_the_codec(autojump_clock: trio.testing.MockClock) -> None:
    inbox = Inbox()
    entry = Entry(1, 1, data=b"x" * 100)
    ae = AppendEntries(1, 1, 2, 0, 0, (entry,), 0)
    async with open_nodes(inbox) as (net, t1, t2):
        t1.send(2, ae)
        for i in range(10):
            t1.send(2, hb(1, 2, i))
        t2.send(1, hb(2, 1, 99))
        await trio.sleep(0.1)
        received = inbox.messages(2)
        assert received[0] == ae and received[0] is not ae  # decoded afresh
        assert inbox.commits(2) == list(range(10))
        assert inbox.commits(1) == [99]
        # Sent in one go, delivered in one batch (like a frame).
        assert len(inbox.batches[2]) == 1
        stats = t1.statistics()
        assert stats.peers[2].sent == 11 and stats.peers[2].connected
        assert t2.statistics().peers[1].received == 11
        assert net.statistics().delivered == 12


async def test_codec_refusals_raise_at_send(autojump_clock: trio.testing.MockClock) -> None:
    async with MemoryNetwork() as net, net.open_transport(1, Inbox().of(1)) as t1:
        with pytest.raises(TypeError):
            t1.send(2, "not a message")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="payload"):
            t1.send(2, ClientRequest(1, "propose", payload={1: "integer keys are refused"}))


async def test_oversized_messages_are_dropped(autojump_clock: trio.testing.MockClock) -> None:
    inbox = Inbox()
    async with open_nodes(inbox, max_frame=1000) as (net, t1, _):
        t1.send(2, AppendEntries(1, 1, 2, 0, 0, (Entry(1, 1, data=b"x" * 2000),), 0))
        t1.send(2, hb(1, 2, 1))
        await trio.sleep(1)
        assert inbox.commits(2) == [1]
        assert t1.statistics().peers[2].dropped == 1
        assert net.statistics().oversized == 1


async def test_unknown_destinations_are_counted(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        MemoryNetwork() as net,
        net.open_transport(1, Inbox().of(1), peers={2: "n2"}) as t1,
        net.open_transport(2, Inbox().of(2)),
    ):
        t1.send(3, hb(1, 3, 0))
        t1.send(1, hb(1, 2, 0))  # to itself
        assert t1.statistics().dropped_unknown == 2
        assert set(t1.statistics().peers) == {2}
        t1.set_peers({2: "n2", 3: "n3"})
        t1.send(3, hb(1, 3, 0))  # a peer, but not running: lost on the way
        await trio.sleep(1)
        assert net.statistics().unreachable == 1


async def test_only_configured_peers_are_heard(autojump_clock: trio.testing.MockClock) -> None:
    inbox = Inbox()
    async with (
        MemoryNetwork() as net,
        net.open_transport(1, inbox.of(1), peers=[2]),
        net.open_transport(2, inbox.of(2)) as t2,
        net.open_transport(3, inbox.of(3)) as t3,
    ):
        t2.send(1, hb(2, 1, 2))
        t3.send(1, hb(3, 1, 3))
        await trio.sleep(1)
        assert inbox.commits(1) == [2]


async def test_drop_rate(autojump_clock: trio.testing.MockClock) -> None:
    inbox = Inbox()
    async with open_nodes(inbox, seed=3, drop_rate=0.5) as (net, t1, _):
        for i in range(400):
            t1.send(2, hb(1, 2, i))
        await trio.sleep(1)
        got = inbox.commits(2)
        assert 120 < len(got) < 280
        assert got == sorted(got)  # losses, no reordering without a delay range
        assert net.statistics().lost == 400 - len(got)
        net.drop_rate = 1.0
        t1.send(2, hb(1, 2, 1000))
        net.drop_rate = 0.0
        t1.send(2, hb(1, 2, 1001))
        await trio.sleep(1)
        assert inbox.commits(2)[-1] == 1001 and 1000 not in inbox.commits(2)


async def test_duplicates(autojump_clock: trio.testing.MockClock) -> None:
    inbox = Inbox()
    async with open_nodes(inbox, seed=1, duplicate_rate=1.0) as (_, t1, _):
        t1.send(2, hb(1, 2, 7))
        await trio.sleep(1)
        assert inbox.commits(2) == [7, 7]


async def test_delay_range_reorders_and_takes_time(autojump_clock: trio.testing.MockClock) -> None:
    inbox = Inbox()
    arrivals: list[float] = []

    def on_messages(src: NodeId, messages: list[AnyMessage]) -> None:
        arrivals.append(trio.current_time())
        inbox.of(2)(src, messages)

    async with (
        MemoryNetwork(seed=5, delay=(0.01, 0.05)) as net,
        net.open_transport(1, inbox.of(1)) as t1,
        net.open_transport(2, on_messages),
    ):
        start = trio.current_time()
        for i in range(50):
            t1.send(2, hb(1, 2, i))
        await trio.sleep(0.005)
        assert inbox.commits(2) == []  # nothing arrives before the minimum delay
        await trio.sleep(1)
        got = inbox.commits(2)
        assert sorted(got) == list(range(50))
        assert got != list(range(50))  # overtaking happened
        assert all(0.01 <= t - start <= 0.05 + 1e-9 for t in arrivals)


async def test_fixed_delay_keeps_order(autojump_clock: trio.testing.MockClock) -> None:
    inbox = Inbox()
    async with open_nodes(inbox, delay=0.02) as (_, t1, _):
        for i in range(20):
            t1.send(2, hb(1, 2, i))
            await trio.sleep(0.001)
        await trio.sleep(1)
        assert inbox.commits(2) == list(range(20))


async def test_partition_and_heal(autojump_clock: trio.testing.MockClock) -> None:
    inbox = Inbox()
    async with open_nodes(inbox, 3) as (net, t1, t2, t3):
        net.partition({1}, {2, 3})
        t1.send(2, hb(1, 2, 1))
        t2.send(1, hb(2, 1, 1))
        t2.send(3, hb(2, 3, 1))  # same side: delivered
        await trio.sleep(1)
        assert inbox.commits(1) == [] and inbox.commits(2) == [] and inbox.commits(3) == [1]
        assert not t1.statistics().peers[2].connected
        assert t2.statistics().peers[3].connected
        assert net.statistics().blocked == 2
        net.heal()
        t1.send(2, hb(1, 2, 2))
        t3.send(1, hb(3, 1, 2))
        await trio.sleep(1)
        assert inbox.commits(2) == [2] and inbox.commits(1) == [2]


async def test_partition_drops_messages_already_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inbox = Inbox()
    async with open_nodes(inbox, delay=0.1) as (net, t1, _):
        t1.send(2, hb(1, 2, 1))
        await trio.sleep(0.05)
        net.partition([1], [2])
        await trio.sleep(1)
        assert inbox.commits(2) == []


async def test_one_way_block_and_isolate(autojump_clock: trio.testing.MockClock) -> None:
    inbox = Inbox()
    async with open_nodes(inbox, 3) as (net, t1, t2, t3):
        net.block(1, 2)
        t1.send(2, hb(1, 2, 1))
        t2.send(1, hb(2, 1, 1))
        await trio.sleep(1)
        assert inbox.commits(2) == [] and inbox.commits(1) == [1]
        net.unblock(1, 2)
        net.isolate(3)
        t1.send(2, hb(1, 2, 2))
        t1.send(3, hb(1, 3, 2))
        t3.send(2, hb(3, 2, 3))
        await trio.sleep(1)
        assert inbox.commits(2) == [2] and inbox.commits(3) == []
        net.reconnect(3)
        t3.send(2, hb(3, 2, 4))
        await trio.sleep(1)
        assert inbox.commits(2) == [2, 4]


async def test_restart_loses_messages_in_flight(autojump_clock: trio.testing.MockClock) -> None:
    inbox = Inbox()
    async with MemoryNetwork(delay=0.1) as net, net.open_transport(1, inbox.of(1)) as t1:
        async with net.open_transport(2, inbox.of(2)):
            t1.send(2, hb(1, 2, 1))
            await trio.sleep(0.05)
        # Node 2 "crashed" and comes back while the message is on the wire.
        async with net.open_transport(2, inbox.of(2)):
            await trio.sleep(1)
            assert inbox.commits(2) == []
            t1.send(2, hb(1, 2, 2))
            await trio.sleep(1)
            assert inbox.commits(2) == [2]
        with pytest.raises(ValueError, match="already"):
            net.attach(1, inbox.of(1))


async def test_bounded_in_flight_queue(autojump_clock: trio.testing.MockClock) -> None:
    inbox = Inbox()
    async with open_nodes(inbox, delay=1.0, queue_size=5) as (_, t1, _):
        for i in range(8):
            t1.send(2, hb(1, 2, i))
        assert t1.statistics().peers[2].queued == 5
        assert t1.statistics().peers[2].dropped == 3
        await trio.sleep(2)
        assert inbox.commits(2) == [0, 1, 2, 3, 4]
        assert t1.statistics().peers[2].queued == 0


async def test_same_seed_same_run(autojump_clock: trio.testing.MockClock) -> None:
    async def run(seed: int) -> list[int]:
        inbox = Inbox()
        async with open_nodes(inbox, seed=seed, drop_rate=0.3, delay=(0, 0.1)) as (_, t1, _):
            for i in range(100):
                t1.send(2, hb(1, 2, i))
            await trio.sleep(1)
            return inbox.commits(2)

    assert await run(11) == await run(11)
    assert await run(11) != await run(12)


async def test_callback_errors_fail_loudly(autojump_clock: trio.testing.MockClock) -> None:
    def broken(src: NodeId, messages: list[AnyMessage]) -> None:
        raise RuntimeError("runtime bug")

    with pytest.raises(RuntimeError, match="runtime bug"):
        async with (
            MemoryNetwork() as net,
            net.open_transport(1, Inbox().of(1)) as t1,
            net.open_transport(2, broken),
        ):
            t1.send(2, hb(1, 2, 0))
            await trio.sleep(1)
