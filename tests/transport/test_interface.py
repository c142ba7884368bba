"""Both transports implement the interface the runtime programs against (checked by mypy too)."""

from __future__ import annotations

from trioraft.transport.base import ClientConnection, Transport, TransportStatistics
from trioraft.transport.memory import MemoryNetwork
from trioraft.transport.websocket import _ServerClientConnection, open_websocket_transport

from .wshelpers import CLUSTER, SECRET


def _accepts_transport(t: Transport) -> TransportStatistics:
    return t.statistics()


def _accepts_client_connection(c: ClientConnection) -> str:
    return c.client_id


def _static_checks(conn: _ServerClientConnection) -> None:
    # mypy checks this structural assignment; it is never called.
    _accepts_client_connection(conn)


async def test_memory_and_websocket_transports_fit_the_protocol() -> None:
    async with MemoryNetwork() as net, net.open_transport(1, lambda src, ms: None) as t:
        assert _accepts_transport(t).peers == {}
    async with open_websocket_transport(
        node_id=1,
        listen="127.0.0.1:0",
        peers={},
        cluster_id=CLUSTER,
        secret=SECRET,
        on_messages=lambda src, ms: None,
    ) as ws:
        assert _accepts_transport(ws).frames_out == 0
