"""Read queries as plain maps (what a remote client sends; docs/docstore.md).

``{"op": "get", "coll": c, "key": k}`` -> document or null;
``{"op": "find", "coll": c, "filter": f, "sort": s, "limit": n}`` -> documents;
``{"op": "scan", "coll": c, "prefix": p, "start": a, "end": b, "limit": n}``;
``{"op": "count", "coll": c, "filter": f}`` -> int;
``{"op": "collections"}`` -> names; ``{"op": "digest"}`` -> hex string.
``now_ms`` (optional) is the reader's clock: documents expired by then are hidden.
"""

from __future__ import annotations

from typing import Any

from docstore.engine.errors import InvalidCommandError
from docstore.engine.state import Engine
from docstore.engine.validate import validate_query

QUERY_OPS = frozenset({"get", "find", "scan", "count", "collections", "digest"})


def run_query(engine: Engine, q: object, now_ms: int = 0) -> Any:
    """Answer ``q``; raises :class:`InvalidCommandError` if malformed.  Results are shared
    with the state: copy before mutating."""
    q = validate_query(q, engine.limits)
    op = q["op"]
    if op not in QUERY_OPS:
        raise InvalidCommandError(f"op: {op!r} is not a query of the engine")
    now = q.get("now_ms", now_ms)
    if op == "digest":
        return engine.digest()
    if op == "collections":
        return sorted(engine.colls)
    coll = q["coll"]
    if op == "get":
        return engine.get(coll, q["key"], now_ms=now)
    if op == "find":
        return engine.find(
            coll, q.get("filter"), sort=q.get("sort"), limit=q.get("limit"), now_ms=now
        )
    if op == "count":
        return engine.count(coll, q.get("filter"), now_ms=now)
    return engine.scan(
        coll,
        prefix=q.get("prefix"),
        start=q.get("start"),
        end=q.get("end"),
        limit=q.get("limit"),
        now_ms=now,
    )
