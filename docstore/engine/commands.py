"""Builders for command maps, and their validation at the API edge.

Commands are plain maps (JSON and CBOR encodable); docs/docstore.md is the
reference.  The builders exist so that ``db.batch([...])`` reads well::

    await db.batch([
        commands.put("users", "ann", {"n": 1}, if_rev=0),
        commands.patch("counters", "users", {"$inc": {"n": 1}}, upsert=True),
    ])

:func:`validate_command` runs the checks that need no state (shape, limits,
filters, patches) so that a bad command fails before it is sent or logged;
apply runs them again, because a replica cannot trust its input.
"""

from __future__ import annotations

from typing import Any

from docstore.engine.errors import InvalidCommandError, LimitError, UnknownCommandError
from docstore.engine.filters import compile_filter
from docstore.engine.patch import check_patch
from docstore.engine.state import WRITE_OPS
from docstore.engine.values import DEFAULT_LIMITS, Limits, check_document, check_key, check_name


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


def expire(now_ms: int, coll: str | None = None) -> dict[str, Any]:
    cmd: dict[str, Any] = {"op": "expire", "now_ms": now_ms}
    if coll is not None:
        cmd["coll"] = coll
    return cmd


def register(kind: str, name: str, version: int) -> dict[str, Any]:
    return {"op": "register", "kind": kind, "name": name, "version": version}


def call(name: str, version: int, args: object = None) -> dict[str, Any]:
    return {"op": "call", "name": name, "version": version, "args": args}


def validate_command(
    cmd: object, limits: Limits = DEFAULT_LIMITS, *, _nested: bool = False
) -> None:
    """Raise the error apply would give for a malformed command (state-free checks)."""
    if not isinstance(cmd, dict):
        raise InvalidCommandError(f"a command is an object, got {type(cmd).__name__}")
    op = cmd.get("op")
    if op not in WRITE_OPS:
        raise UnknownCommandError(f"unknown command op {op!r}")
    if op == "batch":
        if _nested:
            raise InvalidCommandError("a batch cannot contain a batch")
        subs = cmd.get("commands")
        if not isinstance(subs, list):
            raise InvalidCommandError("batch commands is a list")
        if len(subs) > limits.max_batch:
            raise LimitError(f"batch of {len(subs)} commands, the limit is {limits.max_batch}")
        for sub in subs:
            validate_command(sub, limits, _nested=True)
        return
    if "coll" in cmd or op not in ("expire", "register", "call"):
        check_name(cmd.get("coll"), "collection", limits)
    if "key" in cmd or op in ("put", "patch", "delete"):
        check_key(cmd.get("key"), limits)
    if op in ("put", "insert"):
        check_document(cmd.get("doc"), limits)
    if op in ("patch", "update_many"):
        check_patch(cmd.get("ops"))
    if "filter" in cmd:
        compile_filter(cmd["filter"])
    if "if_match" in cmd:
        compile_filter(cmd["if_match"])
