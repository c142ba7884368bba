"""The chaos proxy (one direction per link, blackhole, reset, heal) and the routes to it."""

from __future__ import annotations

import random

import trio

from trioraft.testing.chaos.proxy import HOST, Link
from trioraft.testing.chaos.routes import ROUTE_HOST, install_routes


async def echo_server(nursery: trio.Nursery) -> int:
    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                while data := await stream.receive_some(4096):
                    await stream.send_all(data)
            except trio.BrokenResourceError:
                pass

    listeners = await nursery.start(trio.serve_tcp, echo, 0)
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def roundtrip(stream: trio.SocketStream, data: bytes, within: float = 2.0) -> bytes | None:
    """What comes back for ``data`` (b"" when closed), or None when nothing comes."""
    try:
        await stream.send_all(data)
    except trio.BrokenResourceError:
        return b""
    with trio.move_on_after(within):
        try:
            return await stream.receive_some(4096)
        except trio.BrokenResourceError:
            return b""
    return None


async def test_blackhole_and_reset_then_heal() -> None:
    async with trio.open_nursery() as nursery:
        link = Link(1, 2, await echo_server(nursery), random.Random(0))
        await link.start(nursery)
        a = await trio.open_tcp_stream(HOST, link.port)
        assert await roundtrip(a, b"hello") == b"hello"

        link.block("blackhole")  # the open connection stays up, bytes vanish
        assert await roundtrip(a, b"lost", within=0.3) is None
        b = await trio.open_tcp_stream(HOST, link.port)  # a new one hangs
        assert await roundtrip(b, b"lost", within=0.3) is None

        link.heal()  # blackholed connections are closed; new ones work
        assert await roundtrip(a, b"x") == b""
        assert await roundtrip(b, b"x") == b""
        c = await trio.open_tcp_stream(HOST, link.port)
        assert await roundtrip(c, b"again") == b"again"

        link.block("reset")  # open connections close, new ones are refused
        assert await roundtrip(c, b"x") == b""
        d = await trio.open_tcp_stream(HOST, link.port)
        assert await roundtrip(d, b"x") == b""
        link.heal()
        e = await trio.open_tcp_stream(HOST, link.port)
        assert await roundtrip(e, b"back") == b"back"

        for s in (a, b, c, d, e):
            await s.aclose()
        nursery.cancel_scope.cancel()


async def test_delay_keeps_order() -> None:
    async with trio.open_nursery() as nursery:
        link = Link(1, 2, await echo_server(nursery), random.Random(0))
        await link.start(nursery)
        link.delay = 0.05
        async with await trio.open_tcp_stream(HOST, link.port) as s:
            sent = b"".join(b"%d," % i for i in range(200))
            for i in range(200):
                await s.send_all(b"%d," % i)
            got = b""
            with trio.fail_after(5):
                while len(got) < len(sent):
                    got += await s.receive_some(65536)
            assert got == sent
        nursery.cancel_scope.cancel()


async def test_routes_send_a_node_s_connections_through_its_proxy() -> None:
    """Inside a node process, dialling a peer's real port reaches the proxy towards it."""
    async with trio.open_nursery() as nursery:
        real = await echo_server(nursery)
        link = Link(1, 2, real, random.Random(0))
        await link.start(nursery)
        install_routes({real: link.port})
        async with await trio.open_tcp_stream(ROUTE_HOST, real) as s:
            assert await roundtrip(s, b"via proxy") == b"via proxy"
            assert len(link.conns) == 1  # it went through the link ...
            link.block("blackhole")  # ... so blocking the link cuts it
            assert await roundtrip(s, b"lost", within=0.3) is None
        # A port without a route, and a listener's lookup, are the real ones.
        other = await echo_server(nursery)
        async with await trio.open_tcp_stream(ROUTE_HOST, other) as s:
            assert await roundtrip(s, b"direct") == b"direct"
        listeners = await trio.open_tcp_listeners(0, host=ROUTE_HOST)
        assert listeners[0].socket.getsockname()[0] == HOST
        for listener in listeners:
            await listener.aclose()
        nursery.cancel_scope.cancel()
