"""Reads answered in batches: ``Node.read_many`` and the service's one task per frame of reads.

A batch takes one read point for all its queries, so it keeps ``read``'s
guarantees only if that point is taken after every query was asked: a write
acknowledged before the batch is seen, a leader cut off from its quorum
answers none of it, and a query the state machine refuses fails alone.
"""

from __future__ import annotations

import pathlib

import pytest
import trio

from trioraft.runtime import NotLeaderError
from trioraft.transport.memory import MemoryClientConnection
from trioraft.transport.messages import ClientRequest, ClientResponse

from .conftest import virtual_time
from .helpers import open_cluster, put


def get(key: str) -> dict[str, str]:
    return {"op": "get", "key": key}


@virtual_time(60)
async def test_read_many_sees_acknowledged_writes_and_a_bad_query_fails_alone(
    tmp_path: pathlib.Path,
) -> None:
    async with open_cluster(tmp_path, 3) as (c, leader):
        await leader.propose(put("a", b"1"))
        await leader.propose(put("b", b"2"))
        outcomes = await leader.read_many([get("a"), {"op": "nope"}, get("b"), get("none")])
        assert [r for r, _ in outcomes] == [b"1", None, b"2", None]
        assert [type(e).__name__ if e else None for _, e in outcomes] == [
            None,
            "KVQueryError",
            None,
            None,
        ]
        # Every query counts as an answered read, as one read() each would.
        assert leader.statistics().read_seconds["linearizable"].count == 4
        assert await leader.read_many([], consistency="lease") == []
        follower = next(n for n in c.nodes.values() if n is not leader)
        with pytest.raises(NotLeaderError):
            await follower.read_many([get("a")])
        with pytest.raises(ValueError, match="consistency"):
            await leader.read_many([get("a")], consistency="eventual")


@virtual_time(60)
async def test_read_many_on_a_leader_cut_off_answers_nothing(tmp_path: pathlib.Path) -> None:
    async with open_cluster(tmp_path, 3, proposal_timeout=1.0, check_quorum=False) as (
        c,
        leader,
    ):
        await leader.propose(put("a", b"1"))
        c.network.isolate(leader.id)
        with pytest.raises(TimeoutError, match="read not confirmed"):
            await leader.read_many([get("a"), get("a")])
        assert leader.statistics().read_seconds["linearizable"].count == 0


@virtual_time(60)
async def test_a_frame_of_reads_is_answered_once_each_with_one_read_point_per_consistency(
    tmp_path: pathlib.Path,
) -> None:
    async with open_cluster(tmp_path, 3) as (_, leader), trio.open_nursery() as nursery:
        await leader.propose(put("a", b"1"))
        conn = MemoryClientConnection("app")
        nursery.start_soon(conn.serve, leader.handle_client)
        reads_before = leader._pending._read_ids
        requests = [
            ClientRequest(1, "read", get("a")),
            ClientRequest(2, "read", {"op": "nope"}),
            ClientRequest(3, "read", get("a"), consistency="local"),
            ClientRequest(4, "propose", put("b", b"2")),
            ClientRequest(5, "read", get("a")),
            ClientRequest(6, "read", get("a"), consistency="lease"),
        ]
        conn.request(*requests)
        answers: dict[int, ClientResponse] = {}
        with trio.fail_after(10):
            while len(answers) < len(requests):
                for r in await conn.responses():
                    assert r.request_id not in answers, "answered twice"
                    answers[r.request_id] = r
        assert [answers[i].ok for i in range(1, 7)] == [True, False, True, True, True, True]
        assert answers[2].error_code == "bad_request" and "op" in answers[2].error_message
        assert {answers[i].result for i in (1, 3, 5, 6)} == {b"1"}
        # linearizable (1, 2, 5) and lease (6) took a read point each; local none.
        assert leader._pending._read_ids - reads_before == 2
        conn.hang_up()
        nursery.cancel_scope.cancel()
