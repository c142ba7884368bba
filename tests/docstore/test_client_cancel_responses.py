"""Responses to requests sent only for their effect must not clog a client connection.

docstore's watcher sends ``cancel`` with ``Connection.send`` and never reads
its answer.  Unclaimed answers queue for ``Connection.receive``; once
``queue_size`` frames of them were pending, the connection's reader waited
for a reader that never came, and every later call on it hung.
"""

from __future__ import annotations

import trio

from trioraft.client import open_client_connection
from trioraft.runtime import Node
from trioraft.transport.messages import ClientRequest

from .test_protocol_conformance import CLIENT, CLUSTER, TOKEN, node  # noqa: F401


async def test_discarded_responses_do_not_block_later_calls(node: Node) -> None:  # noqa: F811
    async with open_client_connection(
        node.config.address, cluster_id=CLUSTER, client_id=CLIENT, token=TOKEN, queue_size=2
    ) as conn:
        for _ in range(8):  # each answered in its own frame: more than the queue holds
            rid = conn.next_request_id()
            conn.send([ClientRequest(rid, "cancel", {"request_id": 10**6})], discard_responses=True)
            await trio.sleep(0.02)
        with trio.fail_after(5):
            resp = await conn.call(ClientRequest(0, "status"))
        assert resp.ok
