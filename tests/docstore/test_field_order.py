"""Documents keep their fields in the order they were written (issue 13, item 8).

JSON objects are ordered for their users: a document put as ``{"z", "a", "m"}``
comes back as ``{"z", "a", "m"}`` from every path that stores it and loads it
again: the state machine's snapshots (a backup, a follower's install, its own
base after compaction), the embedded data file after compaction, and the log's
command encoding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import docstore
from docstore import commands as C
from docstore.state_machine import DocstoreStateMachine, decode_command, encode_command
from trioraft.core.types import Entry

#: Fields deliberately out of sorted order, at the top level and nested.
DOC: dict[str, Any] = {
    "zeta": 1,
    "alpha": {"yankee": [1, {"oscar": 1, "bravo": 2}], "echo": None},
    "mike": "m",
    "_private": 0,
    "Alpha": True,
}


def fields(value: Any) -> Any:
    """The key order of every object in ``value``, recursively."""
    if isinstance(value, dict):
        return [(k, fields(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [fields(v) for v in value]
    return None


def user_fields(doc: dict[str, Any]) -> Any:
    return fields({k: v for k, v in doc.items() if k not in ("_key", "_rev")})


def test_the_log_encoding_keeps_field_order() -> None:
    cmd = C.put("users", "ann", DOC)
    assert fields(decode_command(encode_command(cmd))) == fields(cmd)


async def _get(sm: DocstoreStateMachine, key: str) -> dict[str, Any]:
    res = await sm.query({"op": "get", "coll": "users", "key": key})
    assert isinstance(res, dict) and res["ok"], res
    value = res["value"]
    assert isinstance(value, dict)
    return value


async def test_state_machine_snapshot_and_restart_keep_field_order(tmp_path: Path) -> None:
    sm = DocstoreStateMachine(str(tmp_path / "a"))
    await sm.start()
    patch = C.patch("users", "ann", {"$set": {"kilo": 1, "bravo": 2}})
    await sm.apply(
        [
            Entry(1, 1, data=encode_command(C.put("users", "ann", DOC))),
            Entry(2, 1, data=encode_command(patch)),
        ]
    )
    before = await _get(sm, "ann")
    assert user_fields(before)[: len(DOC)] == fields(DOC)
    info = await sm.write_snapshot(str(tmp_path / "snap"))
    await sm.close()

    other = DocstoreStateMachine(str(tmp_path / "b"))
    await other.start()
    await other.restore_snapshot(str(tmp_path / "snap"), info)  # a follower's install
    assert fields(await _get(other, "ann")) == fields(before)
    await other.close()
    again = DocstoreStateMachine(str(tmp_path / "b"))  # its base snapshot, on restart
    await again.start()
    assert fields(await _get(again, "ann")) == fields(before)
    await again.close()


async def test_embedded_database_keeps_field_order_through_compaction(tmp_path: Path) -> None:
    async with docstore.open(str(tmp_path / "db")) as db:
        await db.collection("users").put("ann", DOC)
        await db.compact()
    async with docstore.open(str(tmp_path / "db")) as db:
        doc = await db.collection("users").get("ann")
        assert doc is not None and user_fields(doc) == fields(DOC)
