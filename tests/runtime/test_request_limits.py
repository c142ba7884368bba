"""No single request can stop or freeze a cluster (issue "No request can stop the cluster").

Each test is named after one way a valid client could stop a cluster before:
a learner address the transport cannot parse, a session id the followers'
codec refused, an entry larger than the followers accept, a node id beyond
the wire's range, an error message longer than a response may carry, and a
committed configuration that earlier code let such an address into.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import trio
import trio.testing

from trioraft.core.types import Entry, EntryKind, HardState, Membership
from trioraft.runtime import NodeConfig, error_code, error_response
from trioraft.runtime.errors import OverloadedError
from trioraft.storage.log import FileLogStore
from trioraft.testing.cluster import MemoryCluster
from trioraft.transport.codec import (
    MAX_ENTRY_DATA,
    MAX_SESSION_ID,
    MAX_TEXT,
    decode_frame,
    encode_frame,
)

from .conftest import virtual_time
from .helpers import open_cluster, put
from .realcluster import RealCluster

#: The longest session the docstore server makes: "<principal>/<client_id>".
LONGEST_SESSION = "p" * 256 + "/" + "c" * 256
BAD_ADDRESSES = ["None", "", "host", "host:port", "host:99999", ":7000", "h" * 300 + ":1"]


async def applied_everywhere(c: MemoryCluster, key: str, value: bytes) -> None:
    leader = await c.wait_for_leader()
    for n in c.nodes.values():
        await n.wait_applied(leader.status().commit_index)
        assert await n.read({"op": "get", "key": key}, consistency="local") == value


def write_log_of_earlier_code(data_dir: str, members: Membership) -> None:
    """A log as earlier code left it: a committed CONFIG entry holding ``members``."""
    os.makedirs(data_dir, exist_ok=True)
    log = FileLogStore.open(os.path.join(data_dir, "log"))
    try:
        log.append(
            [
                Entry(1, 1, EntryKind.NOOP),
                Entry(2, 1, EntryKind.CONFIG, members.encode()),
            ]
        )
        log.save_hard_state(HardState(term=1, vote=1, commit=2))
    finally:
        log.close()


# ---------------------------------------------------------------- addresses


async def test_add_learner_with_bad_address_is_refused_and_node_survives(tmp_path: Path) -> None:
    c = RealCluster(tmp_path)  # the WebSocket transport parses peer addresses
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            for n in (1, 2, 3):
                await c.start(nursery, n)
            leader = await c.leader()
            await leader.propose(put("before", b"1"))
            for bad in [*BAD_ADDRESSES, None]:
                with pytest.raises(ValueError, match="address"):
                    await leader.add_learner(4, bad)  # type: ignore[arg-type]
            assert leader.status().learners == ()
            await leader.propose(put("after", b"2"))
            assert all(not n._closed for n in c.nodes.values())
            nursery.cancel_scope.cancel()


async def test_committed_config_with_bad_address_does_not_stop_node_on_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trioraft")
    c = RealCluster(tmp_path)
    # Raw constructor: earlier code checked addresses no further than this.
    members = Membership(
        frozenset({1, 2, 3}),
        learners=frozenset({4}),
        addresses=(*sorted(c.addr.items()), (4, "None")),
    )
    for n in (1, 2, 3):
        write_log_of_earlier_code(c.config(n).data_dir, members)
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            for n in (1, 2, 3):
                await c.start(nursery, n)
            leader = await c.leader()
            assert leader.status().learners == (4,)
            await leader.propose(put("k", b"v"))
            assert await leader.read({"op": "get", "key": "k"}) == b"v"
            assert all(not n._closed for n in c.nodes.values())
            nursery.cancel_scope.cancel()
    for n in (1, 2, 3):
        warnings = [
            r
            for r in caplog.records
            if r.name == f"trioraft.node.{n}" and "'None'" in r.getMessage()
        ]
        assert len(warnings) == 1, warnings  # one clear line, not one per update


@virtual_time(120)
async def test_snapshot_of_config_with_bad_address_installs_on_followers(tmp_path: Path) -> None:
    async with MemoryCluster(
        tmp_path, 3, snapshot_entries=20, snapshot_keep_entries=2, snapshot_chunk_bytes=1024
    ) as c:
        for n in list(c.ids):
            await c.stop(n)
        members = Membership(
            frozenset({1, 2, 3}),
            learners=frozenset({4, 5}),
            addresses=(
                (1, "mem:1"),
                (2, "mem:2"),
                (3, "mem:3"),
                (4, "None"),
                (5, "h" * 300 + ":1"),
            ),
        )
        for n in (1, 2, 3):
            write_log_of_earlier_code(c.node_config(n).data_dir, members)
        for n in (1, 2, 3):
            await c.start(n)
        leader = await c.wait_for_leader()
        victim = next(n for n in c.ids if n != leader.id)
        await c.wipe(victim)
        for i in range(60):
            await leader.propose(put(f"k{i}", b"v"))
        assert leader.statistics().snapshots_taken >= 1
        node = await c.start(victim)
        await node.wait_applied(leader.status().commit_index)
        assert node.statistics().snapshots_installed >= 1
        got = node.membership
        assert got.learners == {4, 5}  # the members stay, their bad addresses do not travel
        assert got.address_map == {1: "mem:1", 2: "mem:2", 3: "mem:3"}
        assert await node.read({"op": "get", "key": "k59"}, consistency="local") == b"v"


# ------------------------------------------------------------- session ids


@virtual_time(120)
async def test_session_id_at_max_client_id_replicates(tmp_path: Path) -> None:
    assert len(LONGEST_SESSION) == MAX_SESSION_ID
    async with open_cluster(tmp_path, 3) as (c, leader):
        await leader.propose(put("a", b"1"), client_id=LONGEST_SESSION, sequence=1)
        await leader.propose(put("b", b"2"), client_id="\U0001d11e" * MAX_SESSION_ID, sequence=1)
        await applied_everywhere(c, "b", b"2")
        with pytest.raises(ValueError, match=str(MAX_SESSION_ID)):
            await leader.propose(put("c", b"3"), client_id=LONGEST_SESSION + "x", sequence=1)
        with pytest.raises(ValueError, match=str(MAX_SESSION_ID)):
            leader.propose_nowait(
                put("c", b"3"), lambda r, e: None, client_id=LONGEST_SESSION + "x"
            )


# ------------------------------------------------------------ entry sizes


@virtual_time(120)
async def test_oversized_proposal_is_refused(tmp_path: Path) -> None:
    async with open_cluster(tmp_path, 3) as (c, leader):
        with pytest.raises(ValueError, match=str(MAX_ENTRY_DATA)) as err:
            await leader.propose(b"x" * (MAX_ENTRY_DATA + 1))
        assert error_code(err.value) == "too_large"
        resp = error_response(7, err.value)
        assert resp.error_code == "too_large"
        assert decode_frame(encode_frame([resp])) == [resp]
        with pytest.raises(ValueError, match=str(MAX_ENTRY_DATA)):
            leader.propose_nowait(b"x" * (MAX_ENTRY_DATA + 1), lambda r, e: None)
        await leader.propose(put("after", b"1"))
        await applied_everywhere(c, "after", b"1")


@virtual_time(300)
async def test_entry_of_max_size_with_longest_session_replicates(tmp_path: Path) -> None:
    async with open_cluster(tmp_path, 3) as (c, leader):
        results: list[object] = []
        for i in range(2):  # queued together: the leader must not batch them into one frame
            leader.propose_nowait(
                bytes([i]) * MAX_ENTRY_DATA,
                lambda r, e: results.append(e or r),
                client_id="\U0001d11e" * MAX_SESSION_ID,
                sequence=i + 1,
            )
        await leader.propose(put("after", b"1"))
        assert len(results) == 2 and not any(isinstance(r, BaseException) for r in results)
        await applied_everywhere(c, "after", b"1")
        assert c.network.statistics().oversized == 0


@virtual_time(300)
async def test_uncommitted_oversized_entry_of_an_earlier_log_heals(tmp_path: Path) -> None:
    # Earlier code appended a 10 MB document sent raw; nodes 1 and 2 hold it,
    # so one of them leads and must replicate it to node 3.
    raw = Entry(2, 1, data=b"d" * 10_000_047, client_id=LONGEST_SESSION, sequence=1)
    async with MemoryCluster(tmp_path, 3) as c:
        for n in list(c.ids):
            await c.stop(n)
        for n in (1, 2, 3):
            os.makedirs(c.node_config(n).data_dir, exist_ok=True)
            log = FileLogStore.open(os.path.join(c.node_config(n).data_dir, "log"))
            try:
                log.append([Entry(1, 1, EntryKind.NOOP), *([raw] if n != 3 else [])])
                log.save_hard_state(HardState(term=1, vote=1, commit=1))
            finally:
                log.close()
        for n in (1, 2, 3):
            await c.start(n)
        leader = await c.wait_for_leader()
        assert leader.id in (1, 2)
        await leader.propose(put("after", b"1"))
        await applied_everywhere(c, "after", b"1")
        assert c.nodes[3].status().last_index >= 3


def test_append_batches_always_fit_a_frame(tmp_path: Path) -> None:
    # A batch may hold max_bytes_per_append plus one entry's worth: refuse
    # settings whose largest AppendEntries a follower would not decode.
    with pytest.raises(ValueError, match="max_bytes_per_append"):
        NodeConfig(node_id=1, data_dir=str(tmp_path), max_bytes_per_append=64 << 20)
    with pytest.raises(ValueError, match="max_entries_per_append"):
        NodeConfig(node_id=1, data_dir=str(tmp_path), max_entries_per_append=100_000)
    NodeConfig(node_id=1, data_dir=str(tmp_path))  # the defaults fit


# --------------------------------------------------------------- node ids


@virtual_time(120)
async def test_add_learner_id_over_2_63_is_refused(tmp_path: Path) -> None:
    async with open_cluster(tmp_path, 3) as (c, leader):
        for bad in (2**63, 0, -1, True, "4", 1.0):
            with pytest.raises(ValueError, match="node id"):
                await leader.add_learner(bad, "mem:9")  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="node id"):
                await leader.promote(bad)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="node id"):
                await leader.remove_node(bad)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="node id"):
                await leader.transfer_leadership(bad)  # type: ignore[arg-type]
        assert leader.status().learners == ()
        await leader.propose(put("after", b"1"))
        await applied_everywhere(c, "after", b"1")


# ------------------------------------------------------------ error texts


def test_error_message_is_cut_to_protocol_limit() -> None:
    resp = error_response(1, ValueError("x" * 1_000_039))
    assert resp.error_code == "bad_request"
    assert len(resp.error_message) <= MAX_TEXT
    assert resp.error_message.startswith("x" * 1000)
    assert "cut" in resp.error_message[-100:]
    assert decode_frame(encode_frame([resp])) == [resp]
    short = error_response(2, ValueError("short"))
    assert short.error_message == "short"


def test_error_code_comes_from_the_exception_class() -> None:
    class Busy(OverloadedError):
        pass

    class Slow(TimeoutError):
        pass

    class Odd(ValueError):
        pass

    assert error_code(Busy("x")) == "overloaded"
    assert error_code(Slow()) == "timeout"
    assert error_code(Odd()) == "bad_request"
    assert error_code(TypeError()) == "bad_request"
    assert error_code(RuntimeError()) == "error"
