"""The document state and the deterministic command interpreter.

Theory of operation.  :meth:`Engine.apply` takes a command (a plain map, see
docs/docstore.md), the revision it gets (the Raft log index, or the local
sequence when embedded) and the time it was accepted (the leader's clock, in
ms).  It either succeeds, returning a result map and the list of *effects*
(``["put", coll, key, doc]``, ``["del", coll, key]``, ...), or fails with an
error result and changes nothing.  Every mutation goes through a few
primitives that record the old value in a journal, so a failure half-way
through a batch is undone exactly.  Nothing here reads a clock, draws a
random number or does I/O: the same commands at the same revisions give the
same state on every replica.

Effects are what the embedded data file stores and what watchers see;
:meth:`Engine.replay` applies them without re-validating.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import product
from typing import Any

from docstore.engine.errors import (
    ConflictError,
    DocstoreError,
    InternalError,
    InvalidCommandError,
    LimitError,
    NotFoundError,
    UniqueViolation,
    UnknownCommandError,
    ValidationError,
)
from docstore.engine.filters import compile_filter, equality_constraints
from docstore.engine.patch import apply_patch
from docstore.engine.registry import CollectionType, Registry
from docstore.engine.validate import validate_command
from docstore.engine.values import (
    DEFAULT_LIMITS,
    MISSING,
    Limits,
    canonical,
    check_document,
    check_key,
    check_name,
    check_size,
    check_value,
    expires_at,
    get_path,
    index_key,
    normalize_sort,
    show,
    sort_key,
    split_path,
)

log = logging.getLogger("docstore.engine")

WRITE_OPS = frozenset(
    {
        "put",
        "insert",
        "patch",
        "delete",
        "update_many",
        "delete_many",
        "batch",
        "create_collection",
        "drop_collection",
        "create_index",
        "drop_index",
        "expire",
        "register",
        "call",
    }
)
CONDITIONS = ("if_rev", "if_exists", "if_match")


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


@dataclass(frozen=True, slots=True)
class Change:
    """One document change, as watchers see it."""

    rev: int
    coll: str
    key: str
    op: str  # "put" | "delete" | "drop" (the whole collection)
    doc: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {"rev": self.rev, "coll": self.coll, "key": self.key, "op": self.op, "doc": self.doc}


@dataclass(frozen=True, slots=True)
class Applied:
    """The outcome of one command: its result map and the effects it made."""

    result: dict[str, Any]
    effects: list[list[Any]]
    changes: list[Change]

    @property
    def ok(self) -> bool:
        return self.result.get("ok") is True


def _expired(doc: dict[str, Any], now_ms: int) -> bool:
    exp = expires_at(doc)
    return exp is not None and exp <= now_ms


class _Ctx:
    """The read-only view handed to extension command handlers."""

    def __init__(self, engine: Engine, rev: int, now_ms: int) -> None:
        self._engine = engine
        self.rev = rev
        self.now_ms = now_ms

    def get(self, coll: str, key: str) -> dict[str, Any] | None:
        return self._engine.get(coll, key, now_ms=self.now_ms)

    def find(self, coll: str, flt: object = None) -> list[dict[str, Any]]:
        return self._engine.find(coll, flt, now_ms=self.now_ms)


class Engine:
    """All collections, their indexes and the extensions in force."""

    def __init__(self, registry: Registry | None = None, limits: Limits = DEFAULT_LIMITS) -> None:
        self.registry = registry or Registry()
        self.limits = limits
        self.colls: dict[str, Collection] = {}
        self.extensions: dict[str, dict[str, int]] = {"types": {}, "commands": {}}
        self._journal: list[tuple[Any, ...]] = []
        self._rev = 0
        self._now = 0
        self._inserted = 0

    # ------------------------------------------------------------------
    # Reads
    # ------------------------------------------------------------------

    def get(self, coll: str, key: str, *, now_ms: int = 0) -> dict[str, Any] | None:
        c = self.colls.get(coll)
        if c is None:
            return None
        d = c.docs.get(key)
        if d is None or (now_ms and "_expires" in d and _expired(d, now_ms)):
            return None
        return d

    def find(
        self,
        coll: str,
        flt: object = None,
        *,
        sort: object = None,
        limit: object = None,
        now_ms: int = 0,
    ) -> list[dict[str, Any]]:
        c = self.colls.get(coll)
        pred = compile_filter(flt)
        sort_spec = normalize_sort(sort)
        lim = _check_limit(limit)
        if c is None:
            return []
        keys = self._plan(c, flt)
        out: list[dict[str, Any]] = []
        computed = c.ctype is not None and c.ctype.has_computed
        for k in keys:
            d = c.docs[k]
            if now_ms and "_expires" in d and _expired(d, now_ms):
                continue
            if pred(c.view(d) if computed else d):
                out.append(d)
                if lim is not None and not sort_spec and len(out) >= lim:
                    break
        for path, direction in reversed(sort_spec):
            parts = split_path(path)
            out.sort(key=lambda d: sort_key(_or_none(get_path(d, parts))), reverse=direction < 0)
        return out if lim is None else out[:lim]

    def count(self, coll: str, flt: object = None, *, now_ms: int = 0) -> int:
        return len(self.find(coll, flt, now_ms=now_ms))

    def scan(
        self,
        coll: str,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        limit: object = None,
        now_ms: int = 0,
    ) -> list[dict[str, Any]]:
        """Documents in key order: ``prefix``, and/or ``start <= key < end``."""
        for name, v in (("prefix", prefix), ("start", start), ("end", end)):
            if v is not None and not isinstance(v, str):
                raise InvalidCommandError(f"scan {name} must be a string")
        lim = _check_limit(limit)
        c = self.colls.get(coll)
        if c is None:
            return []
        import bisect

        keys = c.keys_in_order()
        lo = start if start is not None else ""
        if prefix is not None and prefix > lo:
            lo = prefix
        i = bisect.bisect_left(keys, lo)
        out: list[dict[str, Any]] = []
        while i < len(keys) and (lim is None or len(out) < lim):
            k = keys[i]
            i += 1
            if end is not None and k >= end:
                break
            if prefix is not None and not k.startswith(prefix):
                break
            d = c.docs[k]
            if now_ms and "_expires" in d and _expired(d, now_ms):
                continue
            out.append(d)
        return out

    def _plan(self, c: Collection, flt: object) -> list[str]:
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

    def digest(self) -> str:
        """SHA-256 of the whole state in canonical order (compare replicas with it)."""
        h = hashlib.sha256()
        h.update(canonical(self.extensions).encode())
        for name in sorted(self.colls):
            c = self.colls[name]
            h.update(canonical(self.collection_meta(c)).encode())
            for k in c.keys_in_order():
                h.update(b"\n")
                h.update(canonical(c.docs[k]).encode())
        return h.hexdigest()

    def collection_meta(self, c: Collection) -> dict[str, Any]:
        return {
            "name": c.name,
            "type": c.type_name,
            "type_version": c.type_version,
            "indexes": [c.indexes[n].spec() for n in sorted(c.indexes)],
        }

    def iter_documents(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every document, collections by name and documents by key."""
        for name in sorted(self.colls):
            c = self.colls[name]
            for k in c.keys_in_order():
                yield name, c.docs[k]

    # ------------------------------------------------------------------
    # Apply
    # ------------------------------------------------------------------

    def apply(self, cmd: object, rev: int, now_ms: int = 0) -> Applied:
        """Apply one command at revision ``rev``; total: never raises for any ``cmd``.

        The command is validated first (:func:`validate_command`, the same
        function the server runs before proposing); a bad command, a failed
        condition, or extension code this process lacks is an error result
        with nothing changed.  Only the environment (``MemoryError``) escapes.
        Anything else that goes wrong is a bug: logged, rolled back and
        answered ``internal``, the same on every replica running this code.
        """
        self._journal = []
        self._rev = rev
        self._now = now_ms
        self._inserted = 0
        try:
            validate_command(cmd, self.limits, self.registry, sizes=False)
            result = self._exec(cmd, top=True)
        except DocstoreError as exc:
            self._rollback()
            return Applied(exc.to_result(), [], [])
        except RecursionError:
            self._rollback()
            return Applied(LimitError("command nested too deeply").to_result(), [], [])
        except MemoryError:
            raise
        except Exception as exc:
            log.exception("apply at revision %d failed; answered as an internal error", rev)
            self._rollback()
            err = InternalError(f"the command could not be applied: {show(exc, 200)}")
            return Applied(err.to_result(), [], [])
        journal, self._journal = self._journal, []
        result["ok"] = True
        result["rev"] = rev
        return Applied(result, _effects(journal), _changes(journal, rev))

    def _rollback(self) -> None:
        for entry in reversed(self._journal):
            kind = entry[0]
            if kind == "doc":
                _, c, key, old, _new = entry
                self._raw_set(c, key, old)
            elif kind == "mkcoll":
                del self.colls[entry[1].name]
            elif kind == "dropcoll":
                self.colls[entry[1].name] = entry[1]
            elif kind == "mkidx":
                del entry[1].indexes[entry[2].name]
            elif kind == "dropidx":
                entry[1].add_index(entry[2])
            elif kind == "reg":
                _, k, name, old, _new = entry
                if old is None:
                    del self.extensions[k][name]
                else:
                    self.extensions[k][name] = old
        self._journal = []

    def _exec(self, cmd: object, top: bool = False) -> dict[str, Any]:
        if not isinstance(cmd, dict):
            raise InvalidCommandError(f"a command is an object, got {type(cmd).__name__}")
        op = cmd.get("op")
        handler = _OPS.get(op) if isinstance(op, str) else None
        if handler is None:
            raise UnknownCommandError(f"unknown command op {op!r}")
        if op == "batch" and not top:
            raise InvalidCommandError("a batch cannot contain a batch")
        out: dict[str, Any] = handler(self, cmd)
        return out

    # -- primitives (every mutation goes through these) -----------------

    def _raw_set(self, c: Collection, key: str, new: dict[str, Any] | None) -> None:
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

    def _write(self, c: Collection, key: str, new: dict[str, Any] | None) -> None:
        if new is not None:
            check_size(new, self.limits)
            view = new
            if c.ctype is not None:
                # User code, run before anything changes: what it raises is this
                # command's error result, and the rollback never has to call it.
                try:
                    c.ctype.validate(new)
                    if c.ctype.has_computed:
                        view = c.view(new)
                        check_value(view, self.limits)
                except DocstoreError:
                    raise
                except Exception as exc:
                    raise ValidationError(
                        f"collection type {c.type_name!r} failed on {show(key)}: {show(exc)}"
                    ) from None
            if c.indexes:
                for idx in c.indexes.values():
                    if not idx.unique:
                        continue
                    _, uk = idx.keys(view)
                    holder = idx.uniq.get(uk) if uk is not None else None
                    if holder is None or holder == key:
                        continue
                    hdoc = c.docs[holder]
                    if _expired(hdoc, self._now):
                        self._write(c, holder, None)
                        continue
                    raise UniqueViolation(
                        f"unique index {idx.name!r} of {c.name!r} already holds this value "
                        f"(document {holder!r})",
                        rev=hdoc["_rev"],
                    )
        old = c.docs.get(key)
        if old is None and new is None:
            return
        self._journal.append(("doc", c, key, old, new))
        self._raw_set(c, key, new)

    def _coll(self, name: object, create: bool = True) -> Collection:
        n = check_name(name, "collection", self.limits)
        c = self.colls.get(n)
        if c is None:
            if not create:
                return Collection(n)  # detached and empty: reads nothing, writes nothing
            c = Collection(n)
            self.colls[n] = c
            self._journal.append(("mkcoll", c))
        return c

    def _live(self, c: Collection, key: str) -> dict[str, Any] | None:
        d = c.docs.get(key)
        if d is not None and _expired(d, self._now):
            return None
        return d

    def _check_conditions(self, c: Collection, key: str, cmd: dict[str, Any]) -> None:
        cur = self._live(c, key)
        cur_rev = cur["_rev"] if cur is not None else 0
        if_rev = cmd.get("if_rev")
        if if_rev is not None:
            if not isinstance(if_rev, int) or isinstance(if_rev, bool) or if_rev < 0:
                raise InvalidCommandError("if_rev is a revision number (0: must not exist)")
            if if_rev != cur_rev:
                raise ConflictError(
                    f"{c.name}/{key} is at revision {cur_rev}, not {if_rev}", rev=cur_rev
                )
        if_exists = cmd.get("if_exists")
        if if_exists is not None:
            if not isinstance(if_exists, bool):
                raise InvalidCommandError("if_exists is true or false")
            if if_exists != (cur is not None):
                state = "exists" if cur is not None else "does not exist"
                raise ConflictError(f"{c.name}/{key} {state}", rev=cur_rev)
        if "if_match" in cmd:
            pred = compile_filter(cmd["if_match"])
            if cur is None or not pred(c.view(cur)):
                raise ConflictError(
                    f"{c.name}/{key} does not match the if_match filter", rev=cur_rev
                )

    def _stored(self, c: Collection, key: str, doc: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in doc.items() if k not in ("_key", "_rev")}
        out["_key"] = key
        out["_rev"] = self._rev
        return out

    # -- commands -------------------------------------------------------

    def _put(self, cmd: dict[str, Any]) -> dict[str, Any]:
        c = self._coll(cmd.get("coll"))
        key = check_key(cmd.get("key"), self.limits)
        doc = cmd["doc"]  # validated; _write checks the stored size
        self._check_conditions(c, key, cmd)
        self._write(c, key, self._stored(c, key, doc))
        return {"key": key}

    def _insert(self, cmd: dict[str, Any]) -> dict[str, Any]:
        c = self._coll(cmd.get("coll"))
        doc = cmd["doc"]
        key = f"{self._rev:016x}-{self._inserted:04x}"
        self._inserted += 1
        self._write(c, key, self._stored(c, key, doc))
        return {"key": key}

    def _patch(self, cmd: dict[str, Any]) -> dict[str, Any]:
        upsert = cmd.get("upsert", False)
        if not isinstance(upsert, bool):
            raise InvalidCommandError("upsert is true or false")
        c = self._coll(cmd.get("coll"), create=upsert)
        key = check_key(cmd.get("key"), self.limits)
        ops = cmd["ops"]
        self._check_conditions(c, key, cmd)
        cur = self._live(c, key)
        if cur is None and not upsert:
            raise NotFoundError(f"{c.name}/{key} does not exist", rev=0)
        new = apply_patch(cur if cur is not None else {}, ops)
        check_document(new, self.limits, size=False)
        self._write(c, key, self._stored(c, key, new))
        return {"key": key, "created": cur is None}

    def _delete(self, cmd: dict[str, Any]) -> dict[str, Any]:
        c = self._coll(cmd.get("coll"), create=False)
        key = check_key(cmd.get("key"), self.limits)
        self._check_conditions(c, key, cmd)
        existed = self._live(c, key) is not None
        self._write(c, key, None)
        return {"deleted": existed}

    def _update_many(self, cmd: dict[str, Any]) -> dict[str, Any]:
        c = self._coll(cmd.get("coll"), create=False)
        ops = cmd["ops"]
        docs = self.find(c.name, cmd.get("filter"), now_ms=self._now)
        for d in docs:
            new = apply_patch(d, ops)
            check_document(new, self.limits, size=False)
            self._write(c, d["_key"], self._stored(c, d["_key"], new))
        return {"matched": len(docs)}

    def _delete_many(self, cmd: dict[str, Any]) -> dict[str, Any]:
        c = self._coll(cmd.get("coll"), create=False)
        docs = self.find(c.name, cmd.get("filter"), now_ms=self._now)
        for d in docs:
            self._write(c, d["_key"], None)
        return {"deleted": len(docs)}

    def _batch(self, cmd: dict[str, Any]) -> dict[str, Any]:
        cmds = cmd.get("commands")
        if not isinstance(cmds, list):
            raise InvalidCommandError("batch commands is a list")
        if len(cmds) > self.limits.max_batch:
            raise LimitError(f"batch of {len(cmds)} commands, the limit is {self.limits.max_batch}")
        results = []
        for i, sub in enumerate(cmds):
            try:
                res = self._exec(sub)
            except DocstoreError as exc:
                exc.add_note(f"batch command #{i}")
                raise _BatchFailure(exc, i) from None
            res["ok"] = True
            results.append(res)
        return {"results": results}

    def _create_collection(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name = check_name(cmd.get("coll"), "collection", self.limits)
        tname = cmd.get("type")
        version = 0
        ctype = None
        if tname is not None:
            check_name(tname, "collection type", self.limits)
            if tname not in self.extensions["types"]:
                raise UnknownCommandError(f"collection type {tname!r} is not registered")
            version = self.extensions["types"][tname]
            ctype = self.registry.type(tname, version)
        existing = self.colls.get(name)
        if existing is not None:
            if cmd.get("if_not_exists") and existing.type_name == tname:
                return {"created": False}
            raise ConflictError(f"collection {name!r} already exists", rev=0)
        c = Collection(name, tname, version, ctype)
        self.colls[name] = c
        self._journal.append(("mkcoll", c))
        return {"created": True}

    def _drop_collection(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name = check_name(cmd.get("coll"), "collection", self.limits)
        c = self.colls.pop(name, None)
        if c is None:
            return {"dropped": False}
        self._journal.append(("dropcoll", c))
        return {"dropped": True}

    def _create_index(self, cmd: dict[str, Any]) -> dict[str, Any]:
        c = self._coll(cmd.get("coll"))
        fields = cmd.get("fields")
        if isinstance(fields, str):
            fields = [fields]
        if not isinstance(fields, list) or not fields or len(fields) > 8:
            raise InvalidCommandError("index fields is a list of 1 to 8 field paths")
        for f in fields:
            split_path(f)
        if len(set(fields)) != len(fields):
            raise InvalidCommandError("index fields repeat")
        unique = cmd.get("unique", False)
        if not isinstance(unique, bool):
            raise InvalidCommandError("unique is true or false")
        name = cmd.get("name") or "+".join(fields)
        check_name(name, "index", self.limits)
        existing = c.indexes.get(name)
        if existing is not None:
            if existing.fields == tuple(fields) and existing.unique == unique:
                return {"name": name, "created": False}
            raise InvalidCommandError(f"index {name!r} exists with another definition")
        if len(c.indexes) >= self.limits.max_indexes:
            raise LimitError(f"{c.name!r} already has {self.limits.max_indexes} indexes")
        idx = Index(name, tuple(fields), unique)
        for key in c.keys_in_order():
            d = c.docs[key]
            view = c.view(d)
            if unique:
                _, uk = idx.keys(view)
                if uk is not None and uk in idx.uniq and not _expired(d, self._now):
                    other = idx.uniq[uk]
                    if not _expired(c.docs[other], self._now):
                        raise UniqueViolation(
                            f"cannot build unique index {name!r}: {other!r} and {key!r} "
                            "share a value"
                        )
            idx.add(key, view)
        c.add_index(idx)
        self._journal.append(("mkidx", c, idx))
        return {"name": name, "created": True}

    def _drop_index(self, cmd: dict[str, Any]) -> dict[str, Any]:
        c = self._coll(cmd.get("coll"), create=False)
        name = check_name(cmd.get("name"), "index", self.limits)
        idx = c.indexes.pop(name, None)
        if idx is None:
            return {"dropped": False}
        self._journal.append(("dropidx", c, idx))
        return {"dropped": True}

    def _expire(self, cmd: dict[str, Any]) -> dict[str, Any]:
        now = cmd.get("now_ms", self._now)  # by default, as of the entry's (leader's) time
        names = [cmd["coll"]] if cmd.get("coll") is not None else sorted(self.colls)
        n = 0
        for name in names:
            c = self.colls.get(name)
            if c is None:
                continue
            for key in sorted(c.expiring):
                if _expired(c.docs[key], now):
                    self._write(c, key, None)
                    n += 1
        return {"expired": n}

    def _register(self, cmd: dict[str, Any]) -> dict[str, Any]:
        kind = cmd.get("kind")
        if kind not in ("type", "command"):
            raise InvalidCommandError("register kind is 'type' or 'command'")
        name = check_name(cmd.get("name"), str(kind), self.limits)
        version = cmd.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise InvalidCommandError("extension versions are positive integers")
        table = self.extensions[f"{kind}s"]
        old = table.get(name)
        if old != version:
            table[name] = version
            self._journal.append(("reg", f"{kind}s", name, old, version))
            if kind == "type":
                # Collections of this type switch to the new version's code.
                for c in self.colls.values():
                    if c.type_name == name:
                        self._retype(c, version)
        return {"registered": True, "previous": old}

    def _retype(self, c: Collection, version: int) -> None:
        ctype = self.registry.type(c.type_name or "", version)
        c.type_version = version
        c.ctype = ctype
        for idx in c.indexes.values():
            idx.entries.clear()
            idx.uniq.clear()
            for k in c.keys_in_order():
                idx.add(k, c.view(c.docs[k]))

    def _call(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name = cmd.get("name")
        version = cmd.get("version")
        if not isinstance(name, str) or name not in self.extensions["commands"]:
            raise UnknownCommandError(f"command {name!r} is not registered")
        in_force = self.extensions["commands"][name]
        if version != in_force:
            raise UnknownCommandError(f"command {name!r} is at version {in_force}, not {version!r}")
        handler = self.registry.command(name, in_force)
        try:
            cmds = handler(_Ctx(self, self._rev, self._now), cmd.get("args"))
        except DocstoreError:
            raise
        except Exception as exc:  # user code: its failure is this command's result
            raise InvalidCommandError(f"command {name!r} failed: {exc!r}") from None
        if not isinstance(cmds, list):
            raise InvalidCommandError(f"command {name!r} must return a list of commands")
        results = []
        for i, sub in enumerate(cmds):
            if isinstance(sub, dict) and sub.get("op") in ("batch", "call"):
                raise InvalidCommandError("a command handler returns plain commands")
            validate_command(sub, self.limits, self.registry, sizes=False, where=f"{name}[{i}].")
            res = self._exec(sub)
            res["ok"] = True
            results.append(res)
        return {"results": results}

    # ------------------------------------------------------------------
    # Replay (data file records, snapshots): effects, trusted, no checks
    # ------------------------------------------------------------------

    def replay(self, effects: list[list[Any]]) -> None:
        for fx in effects:
            kind = fx[0]
            if kind == "put":
                c = self._replay_coll(fx[1])
                self._raw_set(c, fx[2], fx[3])
            elif kind == "del":
                c = self._replay_coll(fx[1])
                self._raw_set(c, fx[2], None)
            elif kind == "mkcoll":
                tname, version = fx[2], fx[3]
                ctype = self.registry.type(tname, version) if tname is not None else None
                c = self._replay_coll(fx[1])
                c.type_name, c.type_version, c.ctype = tname, version, ctype
            elif kind == "dropcoll":
                self.colls.pop(fx[1], None)
            elif kind == "mkidx":
                c = self._replay_coll(fx[1])
                idx = Index(fx[2], tuple(fx[3]), bool(fx[4]))
                for k in c.keys_in_order():
                    idx.add(k, c.view(c.docs[k]))
                c.add_index(idx)
            elif kind == "dropidx":
                self._replay_coll(fx[1]).indexes.pop(fx[2], None)
            elif kind == "reg":
                self.extensions[fx[1]][fx[2]] = fx[3]
                if fx[1] == "types":
                    for c in self.colls.values():
                        if c.type_name == fx[2]:
                            self._retype(c, fx[3])
            else:
                raise ValueError(f"unknown effect {kind!r}")

    def _replay_coll(self, name: str) -> Collection:
        c = self.colls.get(name)
        if c is None:
            c = self.colls[name] = Collection(name)
        return c

    def state_effects(self) -> Iterator[list[Any]]:
        """The whole state as effects, canonical order (for compaction and snapshots)."""
        for kind in ("types", "commands"):
            for name, v in sorted(self.extensions[kind].items()):
                yield ["reg", kind, name, v]
        for name in sorted(self.colls):
            c = self.colls[name]
            yield ["mkcoll", name, c.type_name, c.type_version]
            for k in c.keys_in_order():
                yield ["put", name, k, c.docs[k]]
            for iname in sorted(c.indexes):
                idx = c.indexes[iname]
                yield ["mkidx", name, iname, list(idx.fields), idx.unique]


class _BatchFailure(DocstoreError):
    def __init__(self, exc: DocstoreError, index: int) -> None:
        super().__init__(exc.message, rev=exc.rev)
        self.inner = exc
        self.index = index

    def to_result(self) -> dict[str, Any]:
        out = self.inner.to_result()
        out["index"] = self.index
        return out


def _effects(journal: list[tuple[Any, ...]]) -> list[list[Any]]:
    out: list[list[Any]] = []
    for e in journal:
        kind = e[0]
        if kind == "doc":
            _, c, key, _old, new = e
            out.append(["put", c.name, key, new] if new is not None else ["del", c.name, key])
        elif kind == "mkcoll":
            out.append(["mkcoll", e[1].name, e[1].type_name, e[1].type_version])
        elif kind == "dropcoll":
            out.append(["dropcoll", e[1].name])
        elif kind == "mkidx":
            out.append(["mkidx", e[1].name, e[2].name, list(e[2].fields), e[2].unique])
        elif kind == "dropidx":
            out.append(["dropidx", e[1].name, e[2].name])
        elif kind == "reg":
            out.append(["reg", e[1], e[2], e[4]])
    return out


def _changes(journal: list[tuple[Any, ...]], rev: int) -> list[Change]:
    out: list[Change] = []
    for e in journal:
        if e[0] == "doc":
            _, c, key, _old, new = e
            out.append(
                Change(
                    rev,
                    c.name,
                    key,
                    "put" if new is not None else "delete",
                    new if new is not None else _old,
                )
            )
        elif e[0] == "dropcoll":
            out.append(Change(rev, e[1].name, "", "drop", None))
    return out


def _or_none(v: Any) -> Any:
    return None if v is MISSING else v


def _check_limit(limit: object) -> int | None:
    if limit is None:
        return None
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise InvalidCommandError("limit is a non-negative integer")
    return limit


_OPS: dict[str, Any] = {
    "put": Engine._put,
    "insert": Engine._insert,
    "patch": Engine._patch,
    "delete": Engine._delete,
    "update_many": Engine._update_many,
    "delete_many": Engine._delete_many,
    "batch": Engine._batch,
    "create_collection": Engine._create_collection,
    "drop_collection": Engine._drop_collection,
    "create_index": Engine._create_index,
    "drop_index": Engine._drop_index,
    "expire": Engine._expire,
    "register": Engine._register,
    "call": Engine._call,
}
assert set(_OPS) == WRITE_OPS
_ = ValidationError  # re-exported for collection types' validate()
