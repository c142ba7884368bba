"""The chaos proxy: one direction per link, blackhole, reset, heal."""

from __future__ import annotations

import random

import trio

from trioraft.testing.chaos import HOST, Link


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
