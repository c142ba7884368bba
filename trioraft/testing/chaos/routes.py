"""Peer routes inside a node process: dial the proxy, not the peer.

A node's peers are known by ``ROUTE_HOST:port`` (their real port); every
process of a run resolves that name itself.  :func:`install_routes` sets
Trio's hostname resolver for the node process so that a lookup of
``ROUTE_HOST`` with a peer's real port answers the port of the proxy from
this node to that peer.  So every connection the node dials, to bootstrap
peers and to members added later alike, goes through its own proxy, and
the node runs unchanged: no transport hook, nothing of the runtime's
internals, any program that dials with ``trio.open_tcp_stream`` will do
(``trioraft.serve_node`` with your own state machine, ``docstore.server.serve``).

Listening and numeric addresses are left alone (Trio resolves numeric hosts
without the resolver), so a node listens on its real port and the harness
reaches every node directly.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any, Final

import trio

from trioraft.testing.chaos.proxy import HOST

__all__ = ["ROUTE_HOST", "RoutingResolver", "install_routes"]

#: The host name nodes know each other by (plain ``localhost`` elsewhere).
ROUTE_HOST: Final = "localhost"


class RoutingResolver(trio.abc.HostnameResolver):
    """``ROUTE_HOST`` is ``HOST``; with a routed port, it is that port's proxy."""

    def __init__(self, routes: Mapping[int, int]) -> None:
        #: A peer's real port -> the port of the proxy towards it.
        self.routes = dict(routes)

    async def getaddrinfo(
        self,
        host: bytes | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[Any]:
        name = host.decode() if isinstance(host, bytes) else host
        if name != ROUTE_HOST or family not in (0, socket.AF_INET):
            return await trio.to_thread.run_sync(
                socket.getaddrinfo, host, port, family, type, proto, flags
            )
        number = int(port) if port is not None else 0
        if not flags & socket.AI_PASSIVE:
            number = self.routes.get(number, number)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (HOST, number))]

    async def getnameinfo(
        self, sockaddr: tuple[str, int] | tuple[str, int, int, int], flags: int
    ) -> tuple[str, str]:
        return await trio.to_thread.run_sync(socket.getnameinfo, sockaddr, flags)


def install_routes(routes: Mapping[int, int]) -> RoutingResolver:
    """Route this Trio run's connections to ``ROUTE_HOST:port`` through ``routes``."""
    resolver = RoutingResolver(routes)
    trio.socket.set_custom_hostname_resolver(resolver)
    return resolver
