"""TLS on the one port: peers and clients over ``wss``, plain connections refused."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from trioraft.client.connection import ClientConnectionError, open_client_connection
from trioraft.transport.base import ClientConnection
from trioraft.transport.messages import ClientRequest, ClientResponse

from .inbox import Inbox, hb
from .wshelpers import CLUSTER, addr, eventually, mesh, node

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None,
    reason="needs the openssl binary to make a self-signed certificate (trustme is not available)",
)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    args = "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1"
    subj = ["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    subprocess.run(
        ["openssl", *args.split(), *subj, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def contexts(certificate: tuple[Path, Path]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert, key = certificate
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


async def answer(conn: ClientConnection) -> None:
    while True:
        for r in await conn.receive():
            conn.send([ClientResponse(r.request_id, True, r.kind)])


async def test_peers_and_clients_over_tls(certificate: tuple[Path, Path]) -> None:
    server_ctx, client_ctx = contexts(certificate)
    inbox = Inbox()
    async with (
        node(
            1,
            inbox,
            client_handler=answer,
            client_tokens={"app": b"tok"},
            ssl_context=server_ctx,
            client_ssl_context=client_ctx,
        ) as t1,
        node(2, inbox, ssl_context=server_ctx, client_ssl_context=client_ctx) as t2,
    ):
        mesh(t1, t2)
        t1.send(2, hb(1, 2, 1))
        t2.send(1, hb(2, 1, 2))
        await eventually(lambda: inbox.commits(2) == [1] and inbox.commits(1) == [2])
        async with open_client_connection(
            addr(t1), cluster_id=CLUSTER, client_id="app", token=b"tok", ssl_context=client_ctx
        ) as conn:
            assert (await conn.call(ClientRequest(0, "status"))).result == "status"
        # Plain TCP against the TLS port, and TLS without trusting the certificate, fail fast.
        for ctx in (None, ssl.create_default_context()):
            with pytest.raises(ClientConnectionError):
                async with open_client_connection(
                    addr(t1),
                    cluster_id=CLUSTER,
                    client_id="app",
                    token=b"tok",
                    ssl_context=ctx,
                    connect_timeout=2,
                ):
                    pass
        await eventually(lambda: t1.statistics().handshakes_rejected >= 2)


async def test_a_server_only_context_needs_a_client_context(
    certificate: tuple[Path, Path],
) -> None:
    server_ctx, _ = contexts(certificate)
    with pytest.raises(ValueError, match="client_ssl_context"):
        async with node(1, Inbox(), ssl_context=server_ctx):
            pass
