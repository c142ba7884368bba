"""No command can stop the cluster: refused before the log, total at apply.

Each command below once stopped every node of a cluster for good: the
server proposed it unvalidated, it committed, every replica's apply raised,
and each replayed it and stopped again at restart.  Two properties close
that class: the server refuses such a command (``bad_request``, naming the
field) before anything is proposed, and a log that already holds one (as an
older version wrote it) applies it as an error result on every replica.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import cbor2
import pytest
import trio

from docstore.server import DEFAULT_CLIENT
from docstore.state_machine import OPEN_SESSION, DocstoreStateMachine, encode_command
from tests.docstore.test_client import TOKEN, Cluster, running
from trioraft.client.connection import Connection, open_client_connection
from trioraft.core.types import Entry, EntryKind, HardState
from trioraft.storage import FileLogStore
from trioraft.transport.messages import ClientRequest

BIG = 2**63

REFUSED = "refused"  # by validation: bad_request at the server, an error result at apply
ERROR = "error"  # valid, but fails on the state: an error result
OK = "ok"  # valid and well defined now (e.g. "²" is an object key, never an index)

#: (name, setup commands, the command that crashed apply, its outcome now).
CRASHERS: list[tuple[str, list[dict[str, Any]], dict[str, Any], str]] = [
    (
        "bytes key in an update_many filter",
        [],
        {"op": "update_many", "coll": "c", "filter": {b"k": 1}, "ops": {"$set": {"c": 1}}},
        REFUSED,
    ),
    (
        "bytes key in a delete_many filter",
        [],
        {"op": "delete_many", "coll": "c", "filter": {b"k": 1}},
        REFUSED,
    ),
    (
        "bytes operator in a nested filter",
        [],
        {"op": "delete_many", "coll": "c", "filter": {"arr": {b"$gt": 1}}},
        REFUSED,
    ),
    (
        "bytes key in if_match",
        [],
        {"op": "put", "coll": "c", "key": "k", "doc": {}, "if_match": {b"x": 1}},
        REFUSED,
    ),
    ("expire of an unhashable collection", [], {"op": "expire", "now_ms": 0, "coll": []}, REFUSED),
    (
        "non-ASCII digit path segment",
        [{"op": "put", "coll": "c", "key": "a", "doc": {"arr": [1, 2]}}],
        {"op": "patch", "coll": "c", "key": "a", "ops": {"$set": {"arr.²": 1}}},
        ERROR,
    ),
    (
        "non-ASCII digit path segment in a filter",
        [{"op": "put", "coll": "c", "key": "a", "doc": {"arr": [1, 2]}}],
        {"op": "update_many", "coll": "c", "filter": {"arr.²": 1}, "ops": {"$set": {"x": 1}}},
        OK,
    ),
    (
        "non-ASCII digit path segment in an index",
        [{"op": "put", "coll": "c", "key": "a", "doc": {"arr": [1, 2]}}],
        {"op": "create_index", "coll": "c", "fields": ["arr.²"]},
        OK,
    ),
    (
        "5000-digit path segment",
        [{"op": "put", "coll": "c", "key": "a", "doc": {"arr": [1, 2]}}],
        {"op": "patch", "coll": "c", "key": "a", "ops": {"$set": {"arr." + "9" * 5000: 1}}},
        REFUSED,  # longer than a path may be
    ),
    (
        "integer past 4300 digits from repeated $mul",
        [{"op": "put", "coll": "c", "key": "n", "doc": {"n": BIG}}],
        {
            "op": "batch",
            "commands": [{"op": "patch", "coll": "c", "key": "n", "ops": {"$mul": {"n": BIG}}}]
            * 300,
        },
        ERROR,
    ),
    (
        "$inc past 2**64-1",
        [{"op": "put", "coll": "c", "key": "m", "doc": {"n": 2**64 - 1}}],
        {"op": "patch", "coll": "c", "key": "m", "ops": {"$inc": {"n": 1}}},
        ERROR,
    ),
    (
        "create_collection of a type no node has code for",
        [{"op": "register", "kind": "type", "name": "ghost", "version": 1}],
        {"op": "create_collection", "coll": "g", "type": "ghost"},
        REFUSED,
    ),
    (
        "call of a command no node has code for",
        [{"op": "register", "kind": "command", "name": "ghost", "version": 1}],
        {"op": "call", "name": "ghost", "version": 1, "args": None},
        REFUSED,
    ),
]


def _poisoned_entries(
    crashers_to_log: list[tuple[str, list[dict[str, Any]], dict[str, Any], str]],
) -> tuple[list[Entry], dict[str, tuple[str, str]]]:
    """The log an older version wrote: a NOOP, then each setup and crasher command as a
    write of its own session (so the result every replica recorded can be read back)."""
    entries = [Entry(1, 1, EntryKind.NOOP)]
    crashers: dict[str, tuple[str, str]] = {}  # session -> (crasher name, outcome now)
    for name, setup, cmd, outcome in crashers_to_log:
        for c in [*setup, cmd]:
            session = f"docstore/legacy-{len(entries)}"
            for seq, data in ((0, OPEN_SESSION), (1, c)):  # open the session, then write
                index = len(entries) + 1
                entries.append(
                    Entry(
                        index,
                        1,
                        data=bytes(cbor2.dumps(data)),
                        client_id=session,
                        sequence=seq,
                        timestamp_ms=1_700_000_000_000 + index,
                    )
                )
        crashers[session] = (name, outcome)
    return entries, crashers


def _write_old_log(data_dir: pathlib.Path, entries: list[Entry]) -> None:
    store = FileLogStore.open(os.path.join(data_dir, "log"))
    try:
        store.append(entries)
        store.save_hard_state(HardState(term=1, vote=1, commit=len(entries)))
    finally:
        store.close()


@pytest.mark.parametrize("crasher", CRASHERS, ids=[c[0] for c in CRASHERS])
async def test_cluster_holding_crashing_entries_restarts_and_answers_them(
    tmp_path: pathlib.Path, crasher: tuple[str, list[dict[str, Any]], dict[str, Any], str]
) -> None:
    entries, crashers = _poisoned_entries([crasher])
    last = entries[-1].index
    async with trio.open_nursery() as nursery:
        c = Cluster(tmp_path, nursery)
        for n in c.addr:
            _write_old_log(tmp_path / f"node{n}", entries)
        await c.start_all()
        with trio.fail_after(30):
            for node in c.nodes.values():
                await node.wait_applied(last)
        machines = [node.state_machine for node in c.nodes.values()]
        assert len({sm.digest() for sm in machines}) == 1  # type: ignore[attr-defined]
        for sm in machines:
            sessions = sm._sessions  # type: ignore[attr-defined]
            for session, (name, outcome) in crashers.items():
                result = sessions[session][1]
                assert result["ok"] is (outcome == OK), (name, result)
                assert sessions[session] == machines[0]._sessions[session]  # type: ignore[attr-defined]
        leader, _ = await _leader_address(c)
        res = await c.nodes[leader].propose(
            encode_command({"op": "put", "coll": "c", "key": "after", "doc": {"v": 1}})
        )
        assert isinstance(res, dict) and res["ok"] is True, res
        nursery.cancel_scope.cancel()


async def _leader_address(c: Cluster) -> tuple[int, str]:
    with trio.fail_after(10):
        leader = await next(iter(c.nodes.values())).wait_for_leader()
    return leader, c.addr[leader]


@asynccontextmanager
async def _leader_connection(
    root: pathlib.Path,
) -> AsyncIterator[tuple[Cluster, int, Connection]]:
    """A running 3-node cluster, its leader and a raw client connection to it.

    One write first, which the service holds until the cluster's settings are
    recorded: until then the leader proposes that record on its own, and the
    log could grow while a test checks that a refused command left it alone.
    """
    async with running(root) as c:
        leader, address = await _leader_address(c)
        async with open_client_connection(
            address, cluster_id="docstore", client_id=DEFAULT_CLIENT, token=TOKEN
        ) as conn:
            warm = {"op": "put", "coll": "warm", "key": "w", "doc": {}}
            resp = await conn.call(ClientRequest(0, "command", warm))
            assert resp.ok and resp.result["ok"], resp  # type: ignore[index]
            yield c, leader, conn


async def test_crashing_commands_are_refused_before_they_reach_the_log(
    tmp_path: pathlib.Path,
) -> None:
    async with _leader_connection(tmp_path) as (c, leader, conn):
        for name, setup, cmd, outcome in CRASHERS:
            for s in setup:
                resp = await conn.call(ClientRequest(0, "command", s))
                if s["op"] == "register":  # no node has the code: refused too
                    assert resp.error_code == "bad_request", (name, resp)
                else:
                    assert resp.ok and resp.result["ok"], (name, resp)  # type: ignore[index]
            before = c.nodes[leader].status().last_index
            resp = await conn.call(ClientRequest(0, "command", cmd))
            assert isinstance(resp.result, dict), (name, resp)
            if outcome == REFUSED:
                assert resp.error_code == "bad_request", (name, resp)
                assert 0 < len(resp.error_message) < 1000, (name, resp)
                assert resp.result["ok"] is False, (name, resp)
                assert c.nodes[leader].status().last_index == before, name
            else:
                assert resp.ok and resp.result["ok"] is (outcome == OK), (name, resp)
        # Queries with the same defects are refused, never raised on.
        for q in (
            {"op": "find", "coll": "c", "filter": {b"k": 1}},
            {"op": "find", "coll": "c", "filter": {"arr." + "9" * 5000: 1}},
            {"op": "find", "coll": "c", "sort": [[b"k", 1]]},
            {"op": "get_multi", "coll": "c", "keys": [b"k"]},
            {"op": "count", "coll": [], "filter": {}},
        ):
            resp = await conn.call(ClientRequest(0, "query", q))
            assert resp.error_code == "bad_request", (q, resp)
        put = {"op": "put", "coll": "c", "key": "ok", "doc": {}}
        resp = await conn.call(ClientRequest(0, "command", put))
        assert resp.ok and resp.result["ok"], resp  # type: ignore[index]
        for node in c.nodes.values():
            assert node.status().role in ("leader", "follower", "candidate")


async def test_watch_filter_with_non_ascii_digit_segment_does_not_stop_apply(
    tmp_path: pathlib.Path,
) -> None:
    sm = DocstoreStateMachine(str(tmp_path / "sm"))
    await sm.start()
    try:
        watcher = sm.watch("c", {"arr.²": 1})
        put = {"op": "put", "coll": "c", "key": "a", "doc": {"arr": [1, 2, 3]}}
        (result,) = await sm.apply([Entry(1, 1, data=encode_command(put))])
        assert isinstance(result, dict) and result["ok"] is True, result
        # "²" is an object key, never an array index: nothing matched, nothing queued.
        with trio.move_on_after(0.01):
            change = await watcher.__anext__()
            raise AssertionError(f"unexpected change {change}")
    finally:
        await sm.close()


async def test_client_cannot_choose_the_time_of_expire(tmp_path: pathlib.Path) -> None:
    # A client-supplied now_ms would delete every TTL document early.
    async with _leader_connection(tmp_path) as (_, _, conn):
        for cmd in (
            {"op": "expire", "now_ms": 2**62},
            {"op": "batch", "commands": [{"op": "expire", "now_ms": 2**62}]},
        ):
            resp = await conn.call(ClientRequest(0, "command", cmd))
            assert resp.error_code == "bad_request" and "now_ms" in resp.error_message
        resp = await conn.call(ClientRequest(0, "command", {"op": "expire"}))
        assert resp.ok and resp.result["ok"], resp  # type: ignore[index]
