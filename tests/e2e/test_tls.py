"""TLS end to end (issue 13, item 10): a throwaway CA made with the ``openssl``
command, a three-node ``docstore cluster`` whose nodes speak TLS to each other and
to clients, the ``docstore`` command and ``docstore.connect()`` over TLS, and
clients whose TLS setting does not fit refused at once with a plain message.

The short form writes a few documents; ``TRIORAFT_SLOW=1`` writes more.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

import docstore
from docstore.client import TlsError
from tests.conftest import SLOW
from tests.docstore.test_client import Cluster
from tests.e2e import test_cluster_cli
from tests.e2e.test_cluster_cli import ClusterProcess, cluster_dir, run_cli

start_cluster = test_cluster_cli.start_cluster  # the fixture

pytestmark = pytest.mark.slow
WRITES = 200 if SLOW else 10
OPENSSL = shutil.which("openssl")
if OPENSSL is None:  # pragma: no cover - every CI image has it (.ci/run installs it)
    pytest.fail("tests/e2e/test_tls.py needs the openssl command", pytrace=False)


def _openssl(*args: str, cwd: pathlib.Path) -> None:
    assert OPENSSL is not None
    r = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"openssl {' '.join(args)}: {r.stderr}"


def make_ca(directory: pathlib.Path, name: str) -> tuple[pathlib.Path, pathlib.Path]:
    """A self-signed CA: (certificate, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", key.name, "-out", cert.name, "-days", "2",
        "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return cert, key


def make_node_cert(
    directory: pathlib.Path, ca: tuple[pathlib.Path, pathlib.Path]
) -> tuple[pathlib.Path, pathlib.Path]:
    """A certificate for 127.0.0.1 (and localhost), signed by ``ca``: (certificate, key).
    The nodes share it: each serves it and dials the others as 127.0.0.1."""
    cert, key, csr = directory / "node.pem", directory / "node.key", directory / "node.csr"
    ext = directory / "node.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key.name, "-out", csr.name, "-subj", "/CN=127.0.0.1",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr.name, "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-out", cert.name, "-days", "2", "-extfile", ext.name,
        cwd=directory,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def certs(tmp_path: pathlib.Path) -> dict[str, pathlib.Path]:
    pki = tmp_path / "pki"
    ca = make_ca(pki, "ca")
    cert, key = make_node_cert(pki, ca)
    stranger, _ = make_ca(pki / "other", "stranger")  # a CA that signed nothing of ours
    return {"ca": ca[0], "cert": cert, "key": key, "stranger": stranger}


def tls_cluster_dir(tmp_path: pathlib.Path, certs: dict[str, pathlib.Path]) -> pathlib.Path:
    return cluster_dir(
        tmp_path / "tls",
        secret="tls-test-secret",
        token="tls-test-token",
        tls_cert=str(certs["cert"]),
        tls_key=str(certs["key"]),
        tls_ca=str(certs["ca"]),
    )


async def test_a_tls_cluster_serves_the_cli_and_connect_and_refuses_plain_clients(
    start_cluster: Any, tmp_path: pathlib.Path, certs: dict[str, pathlib.Path]
) -> None:
    tls_cluster_dir(tmp_path, certs)
    # `docstore cluster` itself waits for a leader over TLS (its own check of the nodes).
    c: ClusterProcess = start_cluster("tls", fresh=False)
    addrs = ",".join(c.addresses)
    banner = (c.dir.parent / f"{c.dir.name}.out").read_text()
    assert f"--token {c.token} --tls-ca {certs['ca']}" in banner  # how to connect, with TLS
    assert f"ssl_context=ssl.create_default_context(cafile='{certs['ca']}')" in banner
    nowhere = str(tmp_path / "no-cluster-here")  # so the CLI reads nothing from a --dir

    # The CLI: --dir reads tls_ca from cluster.toml; --tls-ca works without it.
    r = run_cli("put", "users", "ann", '{"age": 31}', "--dir", str(c.dir))
    assert r.returncode == 0, r.stderr
    r = run_cli(
        "get", "users", "ann", "--cluster", addrs, "--token", c.token,
        "--tls-ca", str(certs["ca"]), "--dir", nowhere,
    )  # fmt: skip
    assert r.returncode == 0 and '"age": 31' in r.stdout, r.stderr

    # connect() with an SSL context that trusts the CA; the peers replicate over TLS.
    ctx = ssl.create_default_context(cafile=str(certs["ca"]))
    with trio.fail_after(60):
        async with docstore.connect(
            c.addresses, token=c.token, ssl_context=ctx, call_timeout=20
        ) as db:
            users = db.collection("users")
            for i in range(WRITES):
                await users.put(f"u{i}", {"i": i})
            assert await users.count() == WRITES + 1
            while True:  # every node applied everything: the peers talk TLS to each other
                status = await db.status()
                applied = {s.get("applied_index") for s in status}
                if len(status) == 3 and len(applied) == 1 and None not in applied:
                    break
                await trio.sleep(0.1)
            assert sorted(s["role"] for s in status) == ["follower", "follower", "leader"]
        # cluster=DIR reads the TLS settings of cluster.toml as the CLI does.
        async with docstore.connect(cluster=str(c.dir), call_timeout=20) as db:
            assert (await db.collection("users").get("ann") or {}).get("age") == 31

        # A plain client is refused at once, and told why.
        started = time.monotonic()
        with pytest.raises(TlsError, match="speaks TLS: connect with ssl_context"):
            async with docstore.connect(c.addresses, token=c.token, call_timeout=20) as db:
                await db.collection("users").get("ann")
        # A client that does not trust the nodes' CA: the certificate check says so.
        other = ssl.create_default_context(cafile=str(certs["stranger"]))
        with pytest.raises(TlsError, match="CERTIFICATE_VERIFY_FAILED"):
            async with docstore.connect(
                c.addresses, token=c.token, ssl_context=other, call_timeout=20
            ) as db:
                await db.collection("users").get("ann")
        assert time.monotonic() - started < 10  # not the 20 s call timeout, twice

    r = run_cli("get", "users", "ann", "--cluster", addrs, "--token", c.token, "--dir", nowhere)
    assert r.returncode == 3 and r.stderr.count("\n") == 1, r
    assert "speaks TLS" in r.stderr and "--tls-ca" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture
async def plain_node(tmp_path: pathlib.Path) -> AsyncIterator[Cluster]:
    async with trio.open_nursery() as nursery:
        c = Cluster(tmp_path / "plain", nursery, size=1)
        await c.start(1)
        yield c
        nursery.cancel_scope.cancel()


async def test_a_tls_client_of_a_plain_node_is_told_it_does_not_speak_tls(
    plain_node: Cluster, certs: dict[str, pathlib.Path]
) -> None:
    ctx = ssl.create_default_context(cafile=str(certs["ca"]))
    with trio.fail_after(10):
        with pytest.raises(TlsError, match="does not speak TLS"):
            async with docstore.connect(
                plain_node.addresses, token="test-token", ssl_context=ctx, call_timeout=20
            ) as db:
                await db.collection("users").get("ann")


def test_openssl_is_there() -> None:
    # The TLS tests never skip: openssl is part of the machine (see the module).
    assert OPENSSL is not None and os.access(OPENSSL, os.X_OK)
