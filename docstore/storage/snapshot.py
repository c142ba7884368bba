"""Snapshot files: the whole state at one applied log id.

Layout (docs/docstore.md has the byte-level description)::

    b"DSSNAP01"
    record  header   JSON {"format": 1, "index", "term", "gen", "extensions",
                           "collections": [{name, type, type_version, indexes}],
                           "sessions": [[client_id, sequence, result, last_used_ms], ...],
                           "time_ms": the replicated clock (absent in older files)}
    record  document JSON [collection, document]     (collections by name, keys in order;
                                                      the document's fields as written)
    ...
    record  trailer  JSON {"end": true, "documents": n, "sha256": hex of all bytes before it}

Records are framed like the data file (length, CRC32).  Reading verifies
every CRC, the trailer hash and the document count; any damage is a
:class:`trioraft.SnapshotError`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from docstore.engine.errors import CorruptionError
from docstore.engine.registry import Registry
from docstore.engine.state import Engine
from docstore.engine.values import Limits
from docstore.storage.records import frame, parse
from trioraft.statemachine import SnapshotError

MAGIC = b"DSSNAP01"
FORMAT = 1
_dumps = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode
#: Documents keep their field order (a user's object is ordered for them).
_dumps_doc = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A decoded snapshot: the engine rebuilt from it plus the adapter's fields."""

    index: int
    term: int
    gen: int
    engine: Engine
    sessions: list[list[Any]]
    time_ms: int = 0  # the replicated clock (older snapshots lack it)
    settings: dict[str, Any] | None = None  # the cluster's recorded settings, if any


def encode(
    engine: Engine,
    index: int,
    term: int,
    gen: int,
    sessions: list[list[Any]],
    time_ms: int = 0,
    settings: dict[str, Any] | None = None,
) -> tuple[list[bytes], str, int]:
    """Serialise the state; returns (chunks, sha256 hex of the whole file, size).

    Runs in one go without yielding, so it captures exactly one state.
    """
    header = {
        "format": FORMAT,
        "index": index,
        "term": term,
        "gen": gen,
        "extensions": engine.extensions,
        "collections": [engine.collection_meta(engine.colls[n]) for n in sorted(engine.colls)],
        "sessions": sessions,
        "time_ms": time_ms,
        "settings": settings,
    }
    chunks = [MAGIC, frame(_dumps(header).encode())]
    count = 0
    for coll, doc in engine.iter_documents():
        chunks.append(frame(_dumps_doc([coll, doc]).encode()))
        count += 1
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    chunks.append(
        frame(_dumps({"end": True, "documents": count, "sha256": h.hexdigest()}).encode())
    )
    whole = hashlib.sha256()
    size = 0
    for c in chunks:
        whole.update(c)
        size += len(c)
    return chunks, whole.hexdigest(), size


def decode(data: bytes, name: str, registry: Registry | None, limits: Limits) -> Snapshot:
    """Verify and load a snapshot; raises SnapshotError on any damage."""
    try:
        res = parse(data, MAGIC, name)
    except CorruptionError as exc:
        raise SnapshotError(str(exc)) from None
    if res.torn or len(res.records) < 2:
        raise SnapshotError(f"{name}: truncated snapshot")
    try:
        header = json.loads(res.records[0])
        trailer = json.loads(res.records[-1])
    except ValueError as exc:
        raise SnapshotError(f"{name}: undecodable header or trailer: {exc}") from None
    if not isinstance(trailer, dict) or trailer.get("end") is not True:
        raise SnapshotError(f"{name}: missing trailer")
    body_end = len(data) - (8 + len(res.records[-1]))
    if hashlib.sha256(data[:body_end]).hexdigest() != trailer.get("sha256"):
        raise SnapshotError(f"{name}: checksum mismatch")
    if trailer.get("documents") != len(res.records) - 2:
        raise SnapshotError(f"{name}: document count mismatch")
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SnapshotError(f"{name}: unsupported snapshot format {header!r:.80}")
    engine = Engine(registry, limits)
    try:
        engine.replay(list(_effects(header, res.records[1:-1])))
        index, term, gen = int(header["index"]), int(header["term"]), int(header["gen"])
        sessions = list(header["sessions"])
        time_ms = int(header.get("time_ms", 0))
        settings = header.get("settings")
        if settings is not None and not isinstance(settings, dict):
            raise TypeError("settings is a map")
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise SnapshotError(f"{name}: malformed snapshot contents: {exc!r}") from None
    return Snapshot(index, term, gen, engine, sessions, time_ms, settings)


def _effects(header: dict[str, Any], docs: list[bytes]) -> Iterator[list[Any]]:
    for kind in ("types", "commands"):
        for n, v in sorted(header["extensions"][kind].items()):
            yield ["reg", kind, n, v]
    colls = header["collections"]
    for meta in colls:
        yield ["mkcoll", meta["name"], meta["type"], meta["type_version"]]
    for raw in docs:
        coll, doc = json.loads(raw)
        yield ["put", coll, doc["_key"], doc]
    for meta in colls:  # indexes last: one build per index instead of per document
        for spec in meta["indexes"]:
            yield ["mkidx", meta["name"], spec["name"], spec["fields"], spec["unique"]]
