"""Builders for command maps, and their validation at the API edge.

Commands are plain maps (JSON and CBOR encodable); docs/docstore.md is the
reference.  The builders exist so that ``db.batch([...])`` reads well::

    await db.batch([
        commands.put("users", "ann", {"n": 1}, if_rev=0),
        commands.patch("counters", "users", {"$inc": {"n": 1}}, upsert=True),
    ])

:func:`validate_command` (from :mod:`docstore.engine.validate`) runs the checks
that need no state, so that a bad command fails before it is sent or logged;
apply runs it again, because a replica cannot trust its input.
"""

from __future__ import annotations

from typing import Any

from docstore.engine.validate import validate_command

__all__ = [
    "batch",
    "call",
    "create_collection",
    "create_index",
    "delete",
    "delete_many",
    "drop_collection",
    "drop_index",
    "expire",
    "insert",
    "patch",
    "put",
    "register",
    "update_many",
    "validate_command",
]


def _conds(
    cmd: dict[str, Any], if_rev: int | None, if_exists: bool | None, if_match: object
) -> dict[str, Any]:
    if if_rev is not None:
        cmd["if_rev"] = if_rev
    if if_exists is not None:
        cmd["if_exists"] = if_exists
    if if_match is not None:
        cmd["if_match"] = if_match
    return cmd


def put(
    coll: str,
    key: str,
    doc: dict[str, Any],
    *,
    if_rev: int | None = None,
    if_exists: bool | None = None,
    if_match: object = None,
) -> dict[str, Any]:
    return _conds({"op": "put", "coll": coll, "key": key, "doc": doc}, if_rev, if_exists, if_match)


def insert(coll: str, doc: dict[str, Any]) -> dict[str, Any]:
    return {"op": "insert", "coll": coll, "doc": doc}


def patch(
    coll: str,
    key: str,
    ops: dict[str, Any],
    *,
    upsert: bool = False,
    if_rev: int | None = None,
    if_exists: bool | None = None,
    if_match: object = None,
) -> dict[str, Any]:
    cmd: dict[str, Any] = {"op": "patch", "coll": coll, "key": key, "ops": ops}
    if upsert:
        cmd["upsert"] = True
    return _conds(cmd, if_rev, if_exists, if_match)


def delete(
    coll: str,
    key: str,
    *,
    if_rev: int | None = None,
    if_exists: bool | None = None,
    if_match: object = None,
) -> dict[str, Any]:
    return _conds({"op": "delete", "coll": coll, "key": key}, if_rev, if_exists, if_match)


def update_many(coll: str, flt: object, ops: dict[str, Any]) -> dict[str, Any]:
    return {"op": "update_many", "coll": coll, "filter": flt, "ops": ops}


def delete_many(coll: str, flt: object) -> dict[str, Any]:
    return {"op": "delete_many", "coll": coll, "filter": flt}


def batch(cmds: list[dict[str, Any]]) -> dict[str, Any]:
    return {"op": "batch", "commands": list(cmds)}


def create_collection(
    coll: str, *, type: str | None = None, if_not_exists: bool = False
) -> dict[str, Any]:
    cmd: dict[str, Any] = {"op": "create_collection", "coll": coll}
    if type is not None:
        cmd["type"] = type
    if if_not_exists:
        cmd["if_not_exists"] = True
    return cmd


def drop_collection(coll: str) -> dict[str, Any]:
    return {"op": "drop_collection", "coll": coll}


def create_index(
    coll: str, fields: list[str] | str, *, unique: bool = False, name: str | None = None
) -> dict[str, Any]:
    cmd: dict[str, Any] = {
        "op": "create_index",
        "coll": coll,
        "fields": [fields] if isinstance(fields, str) else list(fields),
        "unique": unique,
    }
    if name is not None:
        cmd["name"] = name
    return cmd


def drop_index(coll: str, name: str) -> dict[str, Any]:
    return {"op": "drop_index", "coll": coll, "name": name}


def expire(now_ms: int | None = None, coll: str | None = None) -> dict[str, Any]:
    """Delete documents expired by ``now_ms`` (default: the time the command is applied)."""
    cmd: dict[str, Any] = {"op": "expire"}
    if now_ms is not None:
        cmd["now_ms"] = now_ms
    if coll is not None:
        cmd["coll"] = coll
    return cmd


def register(kind: str, name: str, version: int) -> dict[str, Any]:
    return {"op": "register", "kind": kind, "name": name, "version": version}


def call(name: str, version: int, args: object = None) -> dict[str, Any]:
    return {"op": "call", "name": name, "version": version, "args": args}
