"""What a newcomer meets first (issue 13): documented commands work, failures are fast and plain.

A client pointed at a cluster that is not running says so at once; a wrong
token says "token rejected"; ``connect`` finds its token by itself.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import AsyncIterator

import pytest
import trio

import docstore
from tests.docstore.test_client import TOKEN, Cluster
from trioraft.testing.chaos.run import free_ports


@pytest.fixture
async def one_node(tmp_path: pathlib.Path) -> AsyncIterator[Cluster]:
    async with trio.open_nursery() as nursery:
        c = Cluster(tmp_path, nursery, size=1)
        await c.start(1)
        yield c
        nursery.cancel_scope.cancel()


async def test_no_node_listening_fails_at_once_and_says_so() -> None:
    addresses = [f"127.0.0.1:{p}" for p in free_ports(2)]
    start = trio.current_time()
    with pytest.raises(docstore.UnavailableError) as info:
        async with docstore.connect(addresses, token=TOKEN) as db:
            await db.collection("users").get("ann")
    assert trio.current_time() - start < 2
    assert str(info.value).endswith(
        f"no node at {addresses[0]}, {addresses[1]}: is `docstore cluster` running?"
    )


async def test_one_node_down_of_several_is_still_retried(one_node: Cluster) -> None:
    down = f"127.0.0.1:{free_ports(1)[0]}"
    async with docstore.connect([down, *one_node.addresses], token=TOKEN) as db:
        await db.collection("users").put("ann", {"age": 31})
        ann = await db.collection("users").get("ann")
        assert ann is not None and ann["age"] == 31


async def test_status_with_no_cluster_running_fails_at_once() -> None:
    addresses = [f"127.0.0.1:{p}" for p in free_ports(2)]
    start = trio.current_time()
    with pytest.raises(docstore.UnavailableError, match="is `docstore cluster` running"):
        async with docstore.connect(addresses, token=TOKEN) as db:
            await db.status()
    assert trio.current_time() - start < 2


async def test_a_wrong_token_reads_token_rejected(
    one_node: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trioraft")
    with pytest.raises(docstore.ClusterError, match="token rejected"):
        async with docstore.connect(one_node.addresses, token="not-the-token") as db:
            await db.collection("users").get("ann")
    # The client refused the node (its proof did not verify under the wrong
    # token); the node's log says so, not that the node refused a connection.
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("trioraft.transport")]
    assert any("the dialer at 127.0.0.1" in m and "refused a connection to" in m for m in logged)
    assert not any("refused a connection from" in m for m in logged), logged


async def test_serve_logs_its_start_line_below_warning(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    # `docstore serve` prints the line itself; logged at WARNING it showed twice.
    caplog.set_level(logging.WARNING)
    async with trio.open_nursery() as nursery:
        await Cluster(tmp_path, nursery, size=1).start(1)
        nursery.cancel_scope.cancel()
    assert not [r for r in caplog.records if "serving on" in r.getMessage()]


async def _round_trip(db: docstore.RemoteDatabase) -> None:
    await db.collection("users").put("ann", {"age": 31})
    ann = await db.collection("users").get("ann")
    assert ann is not None and ann["age"] == 31


async def test_connect_takes_the_token_from_the_environment(
    one_node: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCSTORE_TOKEN", TOKEN)
    async with docstore.connect(one_node.addresses) as db:
        await _round_trip(db)


async def test_connect_reads_a_cluster_directory(
    one_node: Cluster, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from docstore.clusterfile import write_cluster_file  # the file `docstore cluster` writes

    monkeypatch.delenv("DOCSTORE_TOKEN", raising=False)
    info = {"cluster_id": "docstore", "secret": "s3cret", "token": TOKEN, "nodes": one_node.addr}
    (tmp_path / "docstore-data").mkdir()
    write_cluster_file(str(tmp_path / "docstore-data"), info)
    async with docstore.connect(cluster=tmp_path / "docstore-data") as db:
        await _round_trip(db)
    with pytest.raises(ValueError, match=r"cluster\.toml"):
        async with docstore.connect(cluster=tmp_path / "nowhere"):
            pass


async def test_connect_takes_a_uri(one_node: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCSTORE_TOKEN", raising=False)
    down = f"127.0.0.1:{free_ports(1)[0]}"
    async with docstore.connect(f"docstore://{TOKEN}@{down},{one_node.addresses[0]}") as db:
        await _round_trip(db)


async def test_connect_without_any_token_says_where_to_put_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DOCSTORE_TOKEN", raising=False)
    with pytest.raises(ValueError, match="DOCSTORE_TOKEN"):
        async with docstore.connect("127.0.0.1:1"):
            pass
