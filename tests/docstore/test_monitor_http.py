"""The monitor's HTTP server in-process: request parsing and the per-connection rules."""

from __future__ import annotations

from typing import cast

import pytest
import trio
import trio.testing

from docstore.monitor import (
    MAX_CONNECTIONS,
    MAX_HEAD,
    REQUEST_TIMEOUT,
    HttpError,
    Monitor,
    parse_request,
)
from trioraft.runtime import Node


def test_a_plain_get_parses_and_loses_its_query() -> None:
    req = parse_request(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*")
    assert (req.method, req.path, req.headers["accept"]) == ("GET", "/metrics", "*/*")
    assert parse_request(b"HEAD / HTTP/1.0").method == "HEAD"  # 1.0 needs no Host


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET / HTTP/1.1", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b", 400),
        (b"GET  / HTTP/1.1\r\nHost: a", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\n: empty", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nName : space", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked", 400),
        (b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a", 400),
        (b"GET *\x01 HTTP/1.1\r\nHost: a", 400),
        (b"PUT / HTTP/1.1\r\nHost: a", 405),
        (b"GET / HTTP/1.1\r\nHost: a" + b"\r\nX: y" * 70, 431),
    ],
)
def test_malformed_heads_are_refused_with_the_right_status(head: bytes, status: int) -> None:
    with pytest.raises(HttpError) as info:
        parse_request(head)
    assert info.value.status == status


async def exchange(monitor: Monitor, request: bytes, *, close: bool = True) -> bytes:
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(monitor.handle, server)
        if request:
            await client.send_all(request)
        if close:
            await client.send_eof()
        raw = b""
        while data := await client.receive_some(65536):
            raw += data
    return raw


def bare_monitor() -> Monitor:
    # The error paths never touch the node.
    return Monitor(cast(Node, object()), {})


async def test_a_client_that_sends_nothing_gets_408_after_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    raw = await exchange(bare_monitor(), b"GET / HT", close=False)
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert trio.current_time() - start == pytest.approx(REQUEST_TIMEOUT, abs=0.01)


async def test_an_oversized_head_is_431_and_a_route_error_is_500_never_a_crash() -> None:
    m = bare_monitor()
    raw = await exchange(m, b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD + 10))
    assert raw.startswith(b"HTTP/1.1 431 ")
    # /status on something that is not a node: the route fails, the server answers 500.
    raw = await exchange(m, b"GET /status HTTP/1.1\r\nHost: a\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 500 ")


async def test_connections_over_the_limit_get_503() -> None:
    m = bare_monitor()
    m._open = MAX_CONNECTIONS  # as if that many were being served
    raw = await exchange(m, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 503 ") and m.refused == 1
    m._open = 0
    raw = await exchange(m, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 ") and raw.endswith(b"\r\n\r\nok\n")
