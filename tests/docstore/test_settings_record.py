"""A new cluster's first client writes apply with the cluster's settings, not the defaults."""

from __future__ import annotations

import functools
import os
import pathlib

import trio

from docstore.server import DocstoreService
from docstore.state_machine import OPEN_SESSION, DocstoreStateMachine
from tests.docstore.test_server_limits import config
from trioraft.runtime import Node, serve_node
from trioraft.transport.memory import MemoryClientConnection
from trioraft.transport.messages import ClientRequest


async def test_first_writes_wait_for_the_settings_record(tmp_path: pathlib.Path) -> None:
    # Entries before the record apply with the built-in settings on every
    # replica, so the server holds a new cluster's first writes until its
    # leader's record is applied: with max_sessions 1, opening a second
    # session evicts the first.  Sent before the record, both stayed open.
    cfg = config(tmp_path)
    sm = DocstoreStateMachine(os.path.join(cfg.data, "docstore"), max_sessions=1)
    service = DocstoreService(sm, cfg)
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(
            functools.partial(serve_node, cfg.node_config(), sm, client_service=service.build)
        )
        with trio.fail_after(10):
            while not node.is_leader:  # noqa: ASYNC110 - state kept by the node's tasks
                await trio.sleep(0.005)
        assert not sm.settings_recorded  # serve()'s leader duties are not running here
        conn = MemoryClientConnection("docstore")
        nursery.start_soon(conn.serve, node.handle_client)
        for rid, session in ((1, "a"), (2, "b")):
            conn.request(ClientRequest(rid, "command", OPEN_SESSION, client_id=session))
        answers = {}
        with trio.fail_after(10):
            while len(answers) < 2:
                for r in await conn.responses():
                    answers[r.request_id] = r
        assert all(r.ok and r.result["ok"] for r in answers.values()), answers  # type: ignore[index]
        assert sm.settings_recorded
        assert (await sm.query({"op": "sessions"}))["value"] == 1  # type: ignore[index]
        conn.hang_up()
        nursery.cancel_scope.cancel()
