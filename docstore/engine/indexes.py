"""Collections and their secondary indexes: the in-memory structures a query plans over.

Owns :class:`Collection` (documents by key, the key order kept lazily, the
keys of documents that expire, the indexes) and :class:`Index`, the one
primitive that changes a collection while keeping all of those in step
(:func:`raw_set`), and the planner that picks candidate keys from the most
selective index (:func:`plan`).  Nothing here validates, journals or knows
about commands: :mod:`docstore.engine.state` and
:mod:`docstore.engine.operations` do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from typing import Any

from docstore.engine.filters import equality_constraints
from docstore.engine.registry import CollectionType
from docstore.engine.values import MISSING, expires_at, get_path, index_key, split_path


class Index:
    """A secondary index on one or more fields (dotted paths or computed names).

    ``entries`` maps an index key to the documents holding it; a field whose
    value is an array is indexed under the array and under each element, so
    equality on an element can use the index.  Documents missing a field are
    not indexed (the planner never uses an index for ``null``).
    """

    __slots__ = ("entries", "fields", "name", "parts", "uniq", "unique")

    def __init__(self, name: str, fields: tuple[str, ...], unique: bool) -> None:
        self.name = name
        self.fields = fields
        self.parts = [split_path(f) for f in fields]
        self.unique = unique
        self.entries: dict[tuple[str, ...], set[str]] = {}
        self.uniq: dict[tuple[str, ...], str] = {}

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "fields": list(self.fields), "unique": self.unique}

    def keys(self, view: dict[str, Any]) -> tuple[list[tuple[str, ...]], tuple[str, ...] | None]:
        """(entry keys, unique key) of a document; ([], None) if a field is missing."""
        per_field: list[list[str]] = []
        whole: list[str] = []
        for parts in self.parts:
            v = get_path(view, parts)
            if v is MISSING:
                return [], None
            k = index_key(v)
            whole.append(k)
            if isinstance(v, list):
                per_field.append([k, *({index_key(x) for x in v} - {k})])
            else:
                per_field.append([k])
        if len(per_field) == 1:
            return [(k,) for k in per_field[0]], tuple(whole)
        return list(product(*per_field)), tuple(whole)

    def add(self, key: str, view: dict[str, Any]) -> None:
        ks, uk = self.keys(view)
        for k in ks:
            self.entries.setdefault(k, set()).add(key)
        if self.unique and uk is not None:
            self.uniq[uk] = key

    def remove(self, key: str, view: dict[str, Any]) -> None:
        ks, uk = self.keys(view)
        for k in ks:
            s = self.entries.get(k)
            if s is not None:
                s.discard(key)
                if not s:
                    del self.entries[k]
        if self.unique and uk is not None and self.uniq.get(uk) == key:
            del self.uniq[uk]


@dataclass(slots=True)
class Collection:
    name: str
    type_name: str | None = None
    type_version: int = 0
    ctype: CollectionType | None = None
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    indexes: dict[str, Index] = field(default_factory=dict)
    sorted_keys: list[str] | None = None
    expiring: set[str] = field(default_factory=set)  # keys of documents with _expires

    def view(self, doc: dict[str, Any]) -> dict[str, Any]:
        if self.ctype is not None and self.ctype.has_computed:
            return {**doc, **self.ctype.compute(doc)}
        return doc

    def add_index(self, idx: Index) -> None:
        """Add ``idx`` keeping ``indexes`` in name order: every choice that walks the
        indexes (which unique violation is reported) must not depend on whether the
        collection was built command by command or restored from a snapshot."""
        self.indexes[idx.name] = idx
        self.indexes = dict(sorted(self.indexes.items()))

    def keys_in_order(self) -> list[str]:
        if self.sorted_keys is None:
            self.sorted_keys = sorted(self.docs)
        return self.sorted_keys


def expired(doc: dict[str, Any], now_ms: int) -> bool:
    """Whether ``doc`` has an ``_expires`` at or before ``now_ms``."""
    exp = expires_at(doc)
    return exp is not None and exp <= now_ms


def raw_set(c: Collection, key: str, new: dict[str, Any] | None) -> None:
    """Store ``new`` (None: delete) under ``key``, keeping indexes, expiry set and key order."""
    old = c.docs.get(key)
    if old is not None:
        if "_expires" in old:
            c.expiring.discard(key)
        if c.indexes:
            v = c.view(old)
            for idx in c.indexes.values():
                idx.remove(key, v)
        if new is None:
            del c.docs[key]
            c.sorted_keys = None
    if new is not None:
        if old is None:
            c.sorted_keys = None
        c.docs[key] = new
        if "_expires" in new and expires_at(new) is not None:
            c.expiring.add(key)
        if c.indexes:
            v = c.view(new)
            for idx in c.indexes.values():
                idx.add(key, v)


def plan(c: Collection, flt: object) -> list[str]:
    """Candidate keys, in key order: from the most selective fitting index, or all."""
    if c.indexes and flt:
        eq = equality_constraints(flt)
        best: set[str] | None = None
        for idx in c.indexes.values():
            if not all(f in eq for f in idx.fields):
                continue
            cand: set[str] = set()
            for combo in product(*(eq[f] for f in idx.fields)):
                cand |= idx.entries.get(tuple(index_key(v) for v in combo), set())
            if best is None or len(cand) < len(best):
                best = cand
        if best is not None:
            return sorted(best)
    return c.keys_in_order()
