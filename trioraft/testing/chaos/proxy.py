"""The fault-injecting TCP proxy: one :class:`Link` per direction ``src -> dst``.

A node sends only on connections it dialled (see
:mod:`trioraft.testing.chaos.routes`), so the proxy of ``(i, j)`` carries
exactly the ``i -> j`` traffic, with the handshake and pings of those
connections: blocking it alone is a real one-way partition.  A link is
``pass``, ``blackhole`` (connections stay open, bytes vanish, new
connections hang: closed when healed) or ``reset`` (connections closed, new
ones refused), and independently ``delay`` (chunks held up to that many
seconds, order kept) and ``flaky`` (each chunk closes the connection with
that probability; TCP cannot lose single chunks without corrupting the
stream, so a loss is a broken connection).

Nothing here knows about Raft: it proxies bytes between two local ports.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Final

import trio

__all__ = ["HOST", "Link", "ProxyNet"]

#: Every process of a chaos run listens on this address.
HOST: Final = "127.0.0.1"


class _Conn:
    __slots__ = ("dead", "scope")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        #: Blackholed: bytes are read and thrown away until it is closed.
        self.dead = False


class Link:
    """The proxy for one direction ``src -> dst`` and its fault settings."""

    def __init__(self, src: int, dst: int, target: int, rng: random.Random) -> None:
        self.src, self.dst, self.target = src, dst, target
        self.rng = rng
        self.state = "pass"  # pass | blackhole | reset
        self.delay = 0.0
        self.flaky = 0.0
        self.conns: set[_Conn] = set()
        self.port = 0

    def block(self, style: str) -> None:
        self.state = style
        for c in list(self.conns):
            if style == "reset":
                c.scope.cancel()
            else:
                c.dead = True

    def heal(self) -> None:
        self.state, self.delay, self.flaky = "pass", 0.0, 0.0
        for c in list(self.conns):
            if c.dead:
                c.scope.cancel()

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await trio.open_tcp_listeners(0, host=HOST)
        self.port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, self._handle, listeners)

    async def _handle(self, down: trio.SocketStream) -> None:
        conn = _Conn()
        self.conns.add(conn)
        try:
            with conn.scope:
                if self.state == "reset":
                    return
                if self.state == "blackhole":
                    conn.dead = True
                    await trio.sleep_forever()
                try:
                    up = await trio.open_tcp_stream(HOST, self.target)
                except OSError:
                    return
                async with up, trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, conn, down, up)
                    nursery.start_soon(self._pump, conn, up, down)
        finally:
            self.conns.discard(conn)
            await down.aclose()

    async def _pump(self, conn: _Conn, src: trio.SocketStream, dst: trio.SocketStream) -> None:
        send, recv = trio.open_memory_channel[tuple[float, bytes]](math.inf)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._deliver, conn, recv, dst)
            async with send:
                last = 0.0
                while True:
                    try:
                        data = await src.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break
                    if not data:
                        break
                    if conn.dead:
                        continue
                    if self.flaky and self.rng.random() < self.flaky:
                        break
                    at = trio.current_time()
                    if self.delay:
                        at += self.rng.uniform(0, self.delay)
                    last = max(last, at)
                    send.send_nowait((last, data))
        # One side ended (or the chunk was "lost"): the connection is over.
        conn.scope.cancel()

    async def _deliver(
        self,
        conn: _Conn,
        recv: trio.MemoryReceiveChannel[tuple[float, bytes]],
        dst: trio.SocketStream,
    ) -> None:
        async with recv:
            async for at, data in recv:
                await trio.sleep_until(at)
                if conn.dead:
                    continue
                try:
                    await dst.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    conn.scope.cancel()
                    return


class ProxyNet:
    """One :class:`Link` per ordered pair of nodes."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.links: dict[tuple[int, int], Link] = {}

    async def start(self, nursery: trio.Nursery, ports: Mapping[int, int]) -> None:
        for i in ports:
            for j, target in ports.items():
                if i != j:
                    link = Link(i, j, target, self.rng)
                    await link.start(nursery)
                    self.links[i, j] = link

    def routes(self, src: int) -> dict[int, int]:
        """``src``'s routes: each other node's real port -> the proxy port towards it."""
        return {link.target: link.port for (i, _), link in self.links.items() if i == src}

    def block(self, src: int, dst: int, style: str) -> None:
        self.links[src, dst].block(style)

    def heal(self) -> None:
        for link in self.links.values():
            link.heal()
