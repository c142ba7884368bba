"""The WebSocket transport between real sockets on 127.0.0.1."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import pytest
import trio
import trio.lowlevel

from trioraft.core.types import AppendEntries, Entry, RequestVote, RequestVoteResponse
from trioraft.transport.websocket import open_websocket_transport

from .inbox import Inbox, hb
from .wshelpers import (
    CLUSTER,
    LOCAL,
    SECRET,
    addr,
    eventually,
    fake_listener,
    mesh,
    node,
)


class Forwarder:
    """One fixed address for a peer that restarts: TCP forwarded to wherever it listens now.

    A restarted node binds a fresh port (port 0) while the forwarder's listening
    socket stays open for the whole test, so no test frees a port and binds it
    again (another process may take it in between).  With no target, the
    forwarder accepts and closes at once: to the dialer, the peer is down.
    """

    def __init__(self) -> None:
        self.target: int | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"{LOCAL}:{self.port}"

    async def _handle(self, down: trio.SocketStream) -> None:
        async with down:
            if self.target is None:
                return
            try:
                up = await trio.open_tcp_stream(LOCAL, self.target)
            except OSError:
                return
            async with up, trio.open_nursery() as nursery:

                async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        while data := await src.receive_some(65536):
                            await dst.send_all(data)
                    nursery.cancel_scope.cancel()  # one side hung up: so does the other

                nursery.start_soon(pump, down, up)
                nursery.start_soon(pump, up, down)


@contextlib.asynccontextmanager
async def forwarder() -> AsyncIterator[Forwarder]:
    fwd = Forwarder()
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host=LOCAL)
        fwd.port = listeners[0].socket.getsockname()[1]
        await nursery.start(trio.serve_listeners, fwd._handle, listeners)
        yield fwd
        nursery.cancel_scope.cancel()


async def test_two_nodes_exchange_messages_both_ways() -> None:
    inbox = Inbox()
    async with node(1, inbox) as t1, node(2, inbox, {1: addr(t1)}) as t2:
        t1.set_peers({2: addr(t2)})
        vote = RequestVote(term=2, src=1, dst=2, last_index=5, last_term=1)
        t1.send(2, vote)
        await eventually(lambda: inbox.messages(2) == [vote])
        t2.send(1, RequestVoteResponse(term=2, src=2, dst=1, granted=True))
        await eventually(lambda: len(inbox.messages(1)) == 1)
        for i in range(500):
            t1.send(2, hb(1, 2, i))
            t2.send(1, hb(2, 1, i))
        await eventually(lambda: len(inbox.commits(2)) == 500 and len(inbox.commits(1)) == 500)
        assert inbox.commits(2) == list(range(500))  # one connection: in order
        s1 = t1.statistics()
        assert s1.peers[2].connected and s1.peers[2].inbound
        assert s1.peers[2].sent == 501 and s1.peers[2].received == 501
        assert s1.peers[2].dropped == 0
        # Queued together, sent together: several messages per frame.
        assert s1.frames_out < 100


async def test_three_nodes_all_pairs() -> None:
    inbox = Inbox()
    async with node(1, inbox) as t1, node(2, inbox) as t2, node(3, inbox) as t3:
        ts = {1: t1, 2: t2, 3: t3}
        for t in ts.values():
            t.set_peers({n: addr(o) for n, o in ts.items()})  # own id ignored
        for src, t in ts.items():
            for dst in ts:
                if dst != src:
                    t.send(dst, hb(src, dst, src * 10 + dst))
        await eventually(lambda: all(len(inbox.messages(n)) == 2 for n in ts))
        assert sorted(inbox.commits(1)) == [21, 31]
        assert inbox.commits(2, src=3) == [32]


async def test_large_batches_are_split_below_the_frame_limit() -> None:
    inbox = Inbox()
    limit = 256 * 1024
    async with (
        node(1, inbox, max_frame=limit) as t1,
        node(2, inbox, {1: addr(t1)}, max_frame=limit) as t2,
    ):
        t1.set_peers({2: addr(t2)})
        for i in range(40):  # ~40 KiB each: about 6 per frame
            entry = Entry(i + 1, 1, data=bytes(40_000))
            t1.send(2, AppendEntries(1, 1, 2, i, 1 if i else 0, (entry,), 0))
        await eventually(lambda: len(inbox.messages(2)) == 40)
        assert 7 <= t1.statistics().frames_out <= 40
        # A message larger than any frame is dropped (and logged), not fatal.
        t1.send(2, AppendEntries(1, 1, 2, 0, 0, (Entry(1, 1, data=bytes(limit)),), 0))
        t1.send(2, hb(1, 2, 7))
        await eventually(lambda: inbox.commits(2) == [7])
        assert t1.statistics().peers[2].dropped == 1


async def test_reconnects_after_the_peer_restarts() -> None:
    inbox = Inbox()
    async with forwarder() as fwd, node(1, inbox) as t1:
        t1.set_peers({2: fwd.address})
        async with node(2, inbox, {1: addr(t1)}) as t2:
            fwd.target = t2.port
            t1.send(2, hb(1, 2, 1))
            await eventually(lambda: inbox.commits(2) == [1])
        fwd.target = None
        # Node 2 is down: sends queue up (bounded) or are lost with the connection.
        await eventually(lambda: not t1.statistics().peers[2].connected)
        async with node(2, inbox, {1: addr(t1)}) as t2:
            fwd.target = t2.port
            await eventually(lambda: t1.statistics().peers[2].connected)
            t1.send(2, hb(1, 2, 2))
            t2.send(1, hb(2, 1, 2))
            await eventually(lambda: 2 in inbox.commits(2) and inbox.commits(1) == [2])
            assert t1.statistics().peers[2].connects == 2


async def test_messages_sent_while_the_peer_is_down_are_delivered_later() -> None:
    inbox = Inbox()
    async with forwarder() as fwd, node(1, inbox) as t1:
        t1.set_peers({2: fwd.address})
        for i in range(5):
            t1.send(2, hb(1, 2, i))
        await trio.sleep(0.05)
        async with node(2, inbox, {1: addr(t1)}) as t2:
            fwd.target = t2.port
            await eventually(lambda: inbox.commits(2) == list(range(5)))


async def test_queue_full_drops_and_counts() -> None:
    inbox = Inbox()
    async with node(1, inbox, {2: "127.0.0.1:1"}, queue_size=4) as t1:
        for i in range(10):
            t1.send(2, hb(1, 2, i))
        t1.send(3, hb(1, 3, 0))
        stats = t1.statistics()
        assert stats.peers[2].queued == 4 and stats.peers[2].dropped == 6
        assert not stats.peers[2].connected
        assert stats.dropped_unknown == 1


async def test_set_peers_adds_removes_and_moves() -> None:
    inbox = Inbox()
    async with node(1, inbox) as t1, node(2, inbox, {1: addr(t1)}) as t2:
        t1.set_peers({2: addr(t2)})
        t1.send(2, hb(1, 2, 1))
        await eventually(lambda: inbox.commits(2) == [1])
        t2.send(1, hb(2, 1, 1))
        await eventually(lambda: t1.statistics().peers[2].inbound)
        # Removing node 2 closes its inbound connection too.
        t1.set_peers({})
        assert t1.statistics().peers == {}
        t1.send(2, hb(1, 2, 2))
        assert t1.statistics().dropped_unknown == 1
        await eventually(lambda: not t2.statistics().peers[1].connected)
        # Node 2 moves to a new address.
        async with node(2, inbox, {1: addr(t1)}) as t2b:
            t1.set_peers({2: addr(t2)})
            await eventually(lambda: t1.statistics().peers[2].connected)
            t1.set_peers({2: addr(t2b)})
            assert t1.statistics().peers[2].address == addr(t2b)
            t1.send(2, hb(1, 2, 3))
            await eventually(lambda: 3 in inbox.commits(2))


async def test_on_messages_errors_are_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int] = []

    def flaky(src: int, messages: list[object]) -> None:
        seen.append(len(messages))
        if len(seen) == 1:
            raise RuntimeError("runtime bug")

    inbox = Inbox()
    async with (
        open_websocket_transport(
            node_id=2,
            listen="127.0.0.1:0",
            peers={},
            cluster_id=CLUSTER,
            secret=SECRET,
            on_messages=flaky,  # type: ignore[arg-type]
        ) as t2,
        node(1, inbox, {2: addr(t2)}) as t1,
    ):
        t2.set_peers({1: addr(t1)})
        t1.send(2, hb(1, 2, 1))
        await eventually(lambda: len(seen) == 1)
        t1.send(2, hb(1, 2, 2))
        await eventually(lambda: len(seen) == 2)
    assert "on_messages failed" in caplog.text


async def test_slow_peer_does_not_block_the_others() -> None:
    """Peer 3 authenticates and then never reads: its queue fills and drops; 2 is unaffected."""
    inbox = Inbox()

    async def never_read(sock: object) -> None:
        await trio.sleep_forever()

    async with (
        fake_listener(3, never_read) as port3,
        node(2, inbox) as t2,
        node(1, inbox, queue_size=8) as t1,
    ):
        mesh(t1, t2, n3=f"127.0.0.1:{port3}")
        await eventually(lambda: t1.statistics().peers[3].connected)
        big = AppendEntries(1, 1, 3, 0, 0, (Entry(1, 1, data=bytes(1 << 20)),), 0)
        for i in range(200):  # 200 MiB offered to a peer that reads nothing
            t1.send(3, big)
            t1.send(2, hb(1, 2, i))
            await trio.lowlevel.checkpoint()
        await eventually(lambda: len(inbox.commits(2)) == 200)
        stats = t1.statistics()
        assert stats.peers[3].dropped > 100
        assert stats.peers[3].queued <= 8
        assert stats.peers[2].dropped == 0


def test_bad_arguments() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="secret"):
            async with node(1, Inbox(), secret=b""):
                pass
        with pytest.raises(ValueError, match="host:port"):
            async with node(1, Inbox(), listen="nowhere"):
                pass
        with pytest.raises(ValueError, match="host:port"):
            async with node(1, Inbox(), {2: "no-port"}):
                pass

    trio.run(main)


async def test_logger_name(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trioraft")
    async with node(7, Inbox()):
        pass
    assert any(r.name == "trioraft.transport.7" for r in caplog.records)


async def test_keepalive_notices_a_black_holed_connection() -> None:
    """Node 1 reaches node 2 through a proxy that then silently stops forwarding."""
    inbox = Inbox()
    freezes: list[trio.Event] = []

    async def pump(src: trio.SocketStream, dst: trio.SocketStream, frozen: trio.Event) -> None:
        while data := await src.receive_some(65536):
            if frozen.is_set():
                await trio.sleep_forever()  # neither forward nor close: a black hole
            await dst.send_all(data)

    async with node(2, inbox) as t2, trio.open_nursery() as nursery:

        async def handle(client: trio.SocketStream) -> None:
            frozen = trio.Event()
            freezes.append(frozen)
            upstream = await trio.open_tcp_stream("127.0.0.1", t2.port)
            async with client, upstream, trio.open_nursery() as pumps:
                pumps.start_soon(pump, client, upstream, frozen)
                pumps.start_soon(pump, upstream, client, frozen)

        listeners = await nursery.start(trio.serve_tcp, handle, 0)
        proxy = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        async with node(1, inbox, {2: proxy}, keepalive=0.1) as t1:
            t2.set_peers({1: addr(t1)})
            t1.send(2, hb(1, 2, 1))
            await eventually(lambda: inbox.commits(2) == [1])
            for frozen in freezes:
                frozen.set()
            t1.send(2, hb(1, 2, 2))  # swallowed by the black hole
            # Noticed within about two keepalive periods, not after a close timeout.
            await eventually(lambda: t1.statistics().peers[2].connects == 2, within=0.8)
            t1.send(2, hb(1, 2, 3))
            await eventually(lambda: 3 in inbox.commits(2))
        nursery.cancel_scope.cancel()


async def test_each_batch_is_attributed_to_the_incarnation_its_handshake_presented() -> None:
    inbox = Inbox()
    seen: list[tuple[int, int, bytes]] = []  # (receiver, src, incarnation)

    def on_peer(me: int) -> object:
        return lambda src, inc: seen.append((me, src, inc))

    old, new = b"\x01" * 16, b"\x02" * 16
    async with (
        forwarder() as fwd,
        node(1, inbox, on_peer=on_peer(1), incarnation=b"\x09" * 16) as t1,
    ):
        t1.set_peers({2: fwd.address})
        async with node(2, inbox, {1: addr(t1)}, on_peer=on_peer(2), incarnation=old) as t2:
            fwd.target = t2.port
            t1.send(2, hb(1, 2, 1))
            t2.send(1, hb(2, 1, 1))
            await eventually(lambda: inbox.commits(2) == [1] and inbox.commits(1) == [1])
        # Node 2 comes back from another data directory on the same address.
        async with node(
            2,
            inbox,
            {1: addr(t1)},
            on_peer=on_peer(2),
            incarnation=new,
        ) as t2:
            fwd.target = t2.port
            t2.send(1, hb(2, 1, 2))
            await eventually(lambda: inbox.commits(1) == [1, 2])
    assert (2, 1, b"\x09" * 16) in seen
    from_2 = [inc for me, src, inc in seen if me == 1 and src == 2]
    assert from_2[0] == old and from_2[-1] == new
