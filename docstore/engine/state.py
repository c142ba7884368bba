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

Effects are what the apply log stores and what watchers see;
:meth:`Engine.replay` applies them without re-validating.

This module owns :class:`Engine`: the reads, :meth:`Engine.apply` (validate,
run, roll back or report), the journaling write primitives the commands use,
and replay.  Its parts live beside it: the collections and indexes in
:mod:`docstore.engine.indexes`, what each write command does in
:mod:`docstore.engine.operations`, the journal (undo, effects, changes) in
:mod:`docstore.engine.journal`.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
from collections.abc import Iterator
from typing import Any

from docstore.engine import journal
from docstore.engine.errors import (
    ConflictError,
    DocstoreError,
    InternalError,
    InvalidCommandError,
    LimitError,
    UniqueViolation,
    UnknownCommandError,
    ValidationError,
)
from docstore.engine.filters import compile_filter
from docstore.engine.indexes import Collection, Index, expired, plan, raw_set
from docstore.engine.journal import Applied, Change, JournalEntry
from docstore.engine.operations import OPS, WRITE_OPS
from docstore.engine.registry import Registry
from docstore.engine.validate import must_measure, validate_command
from docstore.engine.values import (
    DEFAULT_LIMITS,
    MISSING,
    Limits,
    canonical,
    check_key,
    check_name,
    check_size,
    check_value,
    get_path,
    normalize_sort,
    show,
    sort_key,
    split_path,
)

__all__ = ["WRITE_OPS", "Applied", "Change", "Collection", "Engine", "Index"]

log = logging.getLogger("docstore.engine")


class Engine:
    """All collections, their indexes and the extensions in force."""

    def __init__(self, registry: Registry | None = None, limits: Limits = DEFAULT_LIMITS) -> None:
        self.registry = registry or Registry()
        self.limits = limits
        self.colls: dict[str, Collection] = {}
        self.extensions: dict[str, dict[str, int]] = {"types": {}, "commands": {}}
        self._journal: list[JournalEntry] = []
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
        if d is None or (now_ms and "_expires" in d and expired(d, now_ms)):
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
        keys = plan(c, flt)
        out: list[dict[str, Any]] = []
        computed = c.ctype is not None and c.ctype.has_computed
        for k in keys:
            d = c.docs[k]
            if now_ms and "_expires" in d and expired(d, now_ms):
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
            if now_ms and "_expires" in d and expired(d, now_ms):
                continue
            out.append(d)
        return out

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

    def apply(
        self, cmd: object, rev: int, now_ms: int = 0, *, encoded_size: int | None = None
    ) -> Applied:
        """Apply one command at revision ``rev``; total: never raises for any ``cmd``.

        The command is validated first (:func:`validate_command`, the same
        function the server runs before proposing); a bad command, a failed
        condition, or extension code this process lacks is an error result
        with nothing changed.  Only the environment (``MemoryError``) escapes.
        Anything else that goes wrong is a bug: logged, rolled back and
        answered ``internal``, the same on every replica running this code.

        ``encoded_size``: the command's size as CBOR without tags, when the
        caller knows it (the state machine, from the entry): when it bounds
        the stored document of a put without conditions (:func:`must_measure`),
        that document is not measured.
        """
        return Applied(*self.apply_parts(cmd, rev, now_ms, encoded_size=encoded_size))

    def apply_parts(
        self, cmd: object, rev: int, now_ms: int = 0, *, encoded_size: int | None = None
    ) -> tuple[dict[str, Any], list[list[Any]], list[Change]]:
        """:meth:`apply`'s result, effects and changes, as a tuple.

        What a replica calls for every entry: building the frozen
        :class:`Applied` that holds them costs as much as a put's journal.
        """
        self._journal = []
        self._rev = rev
        self._now = now_ms
        self._inserted = 0
        try:
            validate_command(cmd, self.limits, self.registry, sizes=False)
            if type(cmd) is dict and len(cmd) == 4 and cmd["op"] == "put":
                # Validated, so exactly op, coll, key and doc: a put without conditions.
                result = self._plain_put(cmd, measure=must_measure(encoded_size, self.limits))
            else:
                result = self._exec(cmd, top=True)
        except DocstoreError as exc:
            self._rollback()
            return exc.to_result(), [], []
        except RecursionError:
            self._rollback()
            return LimitError("command nested too deeply").to_result(), [], []
        except MemoryError:
            raise
        except Exception as exc:
            log.exception("apply at revision %d failed; answered as an internal error", rev)
            self._rollback()
            err = InternalError(f"the command could not be applied: {show(exc, 200)}")
            return err.to_result(), [], []
        entries, self._journal = self._journal, []
        result["ok"] = True
        result["rev"] = rev
        return result, journal.effects(entries), journal.changes(entries, rev)

    def _rollback(self) -> None:
        journal.rollback(self._journal, self.colls, self.extensions)
        self._journal = []

    def _exec(self, cmd: object, top: bool = False) -> dict[str, Any]:
        if not isinstance(cmd, dict):
            raise InvalidCommandError(f"a command is an object, got {type(cmd).__name__}")
        op = cmd.get("op")
        handler = OPS.get(op) if isinstance(op, str) else None
        if handler is None:
            raise UnknownCommandError(f"unknown command op {op!r}")
        if op == "batch" and not top:
            raise InvalidCommandError("a batch cannot contain a batch")
        out: dict[str, Any] = handler(self, cmd)
        return out

    def _plain_put(self, cmd: dict[str, Any], *, measure: bool) -> dict[str, Any]:
        """What :func:`~docstore.engine.operations._put` does with a validated put
        without conditions (``_put`` would find none to check).

        ``measure=False``: the command's CBOR size bounds the stored document's
        JSON size.  It does: the document's JSON takes at most
        ``JSON_BYTES_PER_CBOR_BYTE`` bytes per byte of its CBOR; ``_key``
        (``2 + 6n`` bytes of JSON for ``n`` bytes of key, which take ``1 + n``
        of CBOR) and ``_rev`` (a log index: 19 digits) add at most
        ``2 + 6n + 35`` bytes, less than what the key and the command's other
        fields (op, coll and their names: 23 bytes at least) add to the bound.
        tests/docstore/test_plain_put_path.py compares this with the general path.
        """
        c = self._coll(cmd["coll"])
        key = check_key(cmd["key"], self.limits)  # as _put does, whatever validated it
        self._write(c, key, self._stored(c, key, cmd["doc"]), measure=measure)
        return {"key": key}

    # -- primitives (every mutation goes through these) -----------------

    def _write(
        self, c: Collection, key: str, new: dict[str, Any] | None, *, measure: bool = True
    ) -> None:
        if new is not None:
            if measure:
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
                    if expired(hdoc, self._now):
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
        raw_set(c, key, new)

    def _coll(self, name: object, create: bool = True) -> Collection:
        if type(name) is str:
            c = self.colls.get(name)
            if c is not None:  # its name was checked when it was created
                return c
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
        if d is not None and expired(d, self._now):
            return None
        return d

    def _check_conditions(self, c: Collection, key: str, cmd: dict[str, Any]) -> None:
        if _NO_CONDITIONS.issuperset(cmd):  # the common case: an unconditional write
            return
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
        if type(doc) is dict and "_key" not in doc and "_rev" not in doc:
            out = doc.copy()  # what the comprehension below gives, for a third of the cost
        else:
            out = {k: v for k, v in doc.items() if k not in ("_key", "_rev")}
        out["_key"] = key
        out["_rev"] = self._rev
        return out

    def _retype(self, c: Collection, version: int) -> None:
        ctype = self.registry.type(c.type_name or "", version)
        c.type_version = version
        c.ctype = ctype
        for idx in c.indexes.values():
            idx.entries.clear()
            idx.uniq.clear()
            for k in c.keys_in_order():
                idx.add(k, c.view(c.docs[k]))

    # ------------------------------------------------------------------
    # Replay (data file records, snapshots): effects, trusted, no checks
    # ------------------------------------------------------------------

    def replay(self, effects: list[list[Any]]) -> None:
        for fx in effects:
            kind = fx[0]
            if kind == "put":
                c = self._replay_coll(fx[1])
                raw_set(c, fx[2], fx[3])
            elif kind == "del":
                c = self._replay_coll(fx[1])
                raw_set(c, fx[2], None)
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


#: The fields of a put, patch or delete that are not conditions (``if_rev``,
#: ``if_exists``, ``if_match``): a command holding only these has none to check.
_NO_CONDITIONS = frozenset({"op", "coll", "key", "doc", "ops", "upsert"})


def _or_none(v: Any) -> Any:
    return None if v is MISSING else v


def _check_limit(limit: object) -> int | None:
    if limit is None:
        return None
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise InvalidCommandError("limit is a non-negative integer")
    return limit
