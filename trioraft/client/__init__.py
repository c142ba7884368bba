"""trioraft client: remote connections to a cluster's nodes."""

from trioraft.client.connection import (
    ClientConnectionError,
    Connection,
    ConnectionClosedError,
    HandshakeError,
    open_client_connection,
)

__all__ = [
    "ClientConnectionError",
    "Connection",
    "ConnectionClosedError",
    "HandshakeError",
    "open_client_connection",
]
