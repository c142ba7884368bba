"""Model-based test: random command programs against a plain-dict reference model.

Each step runs one command on the embedded database and on the model, then
compares results, every document and its revision, and a random find.  Steps
include closing and reopening the database (replaying the data file) and
compaction, so both must preserve contents and revisions exactly.
"""

from __future__ import annotations

import copy
import os
import tempfile
from typing import Any

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import docstore
from docstore import commands as C

KEYS = ["a", "b", "c", "d"]
COLLS = ["p", "q"]
small = st.integers(-3, 3)
fields = st.sampled_from(["x", "y", "u"])
FUTURE = 10**13  # ms: expiry times the wall clock of reads never reaches
docs = st.builds(
    lambda d, exp, lst: {**d, **exp, **lst},
    st.dictionaries(fields, small, max_size=3),
    st.one_of(st.just({}), st.builds(lambda t: {"_expires": FUTURE + t}, st.integers(0, 3))),
    st.one_of(st.just({}), st.builds(lambda v: {"l": v}, st.lists(small, max_size=3))),
)
conds = st.one_of(
    st.just({}),
    st.builds(lambda r: {"if_rev": r}, st.integers(0, 8)),
    st.builds(lambda e: {"if_exists": e}, st.booleans()),
    st.builds(lambda v: {"if_match": {"x": v}}, small),
)
filters = st.one_of(
    st.just({}),
    st.builds(lambda f, v: {f: v}, fields, small),
    st.builds(lambda f, v: {f: {"$gt": v}}, fields, small),
    st.builds(lambda f, v: {f: {"$in": [v, v + 1]}}, fields, small),
    st.builds(lambda f: {f: {"$exists": False}}, fields),
    st.builds(lambda a, b: {"$or": [{"x": a}, {"y": {"$lte": b}}]}, small, small),
)
patch_ops = st.one_of(
    st.builds(lambda f, v: {"$set": {f: v}}, fields, small),
    st.builds(lambda f: {"$unset": {f: True}}, fields),
    st.builds(lambda f, v: {"$inc": {f: v}}, fields, small),
    st.builds(lambda f, v: {"$max": {f: v}}, fields, small),
    st.builds(
        lambda op, v: {op: {"l": v}}, st.sampled_from(["$push", "$addToSet", "$pull"]), small
    ),
)
coll = st.sampled_from(COLLS)
key = st.sampled_from(KEYS)
write_no_drop = st.one_of(
    st.builds(lambda c, k, d, cd: C.put(c, k, d, **cd), coll, key, docs, conds),
    st.builds(lambda c, d: C.insert(c, d), coll, docs),
    st.builds(
        lambda c, k, o, up, cd: C.patch(c, k, o, upsert=up, **cd),
        coll,
        key,
        patch_ops,
        st.booleans(),
        conds,
    ),
    st.builds(lambda c, k, cd: C.delete(c, k, **cd), coll, key, conds),
    st.builds(C.update_many, coll, filters, st.builds(lambda v: {"$inc": {"y": v}}, small)),
    st.builds(C.delete_many, coll, filters),
    st.builds(lambda c: C.create_index(c, ["u"], unique=True), coll),
    st.builds(lambda c: C.drop_index(c, "u"), coll),
    st.builds(lambda c, e: C.create_collection(c, if_not_exists=e), coll, st.booleans()),
    st.builds(lambda t: C.expire(FUTURE + t), st.integers(0, 3)),
)
write = st.one_of(write_no_drop, st.builds(C.drop_collection, coll))
step = st.one_of(
    write,
    write,
    write,
    st.builds(C.batch, st.lists(write_no_drop, max_size=3)),
    st.just({"op": "reopen"}),
    st.just({"op": "compact"}),
)


class Model:
    """The reference: dicts of dicts, no indexes, no cleverness."""

    def __init__(self) -> None:
        self.colls: dict[str, dict[str, dict[str, Any]]] = {}
        self.unique: dict[str, bool] = {}
        self.rev = 0

    def apply(self, cmd: dict[str, Any]) -> dict[str, Any]:
        saved = copy.deepcopy((self.colls, self.unique))
        rev = self.rev + 1
        self.changed = False
        self.inserted = 0
        try:
            res = self._one(cmd, rev)
        except _Fail as f:
            self.colls, self.unique = saved
            return {"ok": False, "error": f.code}
        if self.changed:
            self.rev = rev
        return {"ok": True, **res}

    def _match(self, d: dict[str, Any], flt: dict[str, Any]) -> bool:
        for f, spec in flt.items():
            if f == "$or":
                if not any(self._match(d, s) for s in spec):
                    return False
                continue
            v = d.get(f)
            if isinstance(spec, dict):
                ((op, arg),) = spec.items()
                if op == "$exists":
                    ok = (f in d) == arg
                elif f not in d:
                    ok = False
                elif op == "$gt":
                    ok = v > arg
                elif op == "$lte":
                    ok = v <= arg
                else:
                    ok = v in arg
            else:
                ok = f in d and v == spec
            if not ok:
                return False
        return True

    def _put(self, c: str, k: str, d: dict[str, Any], rev: int) -> None:
        if self.unique.get(c) and "u" in d:
            for ok, od in self.colls.get(c, {}).items():
                if ok != k and od.get("u") == d["u"]:
                    raise _Fail("unique_violation")
        self.colls.setdefault(c, {})[k] = {**d, "_key": k, "_rev": rev}
        self.changed = True

    def _conds(self, c: str, k: str, cmd: dict[str, Any]) -> None:
        cur = self.colls.get(c, {}).get(k)
        if "if_rev" in cmd and cmd["if_rev"] != (cur["_rev"] if cur else 0):
            raise _Fail("conflict")
        if "if_exists" in cmd and cmd["if_exists"] != (cur is not None):
            raise _Fail("conflict")
        if "if_match" in cmd and (cur is None or not self._match(cur, cmd["if_match"])):
            raise _Fail("conflict")

    def _one(self, cmd: dict[str, Any], rev: int) -> dict[str, Any]:
        op = cmd["op"]
        c = cmd.get("coll", "")
        if op == "put":
            self._conds(c, cmd["key"], cmd)
            self._put(c, cmd["key"], cmd["doc"], rev)
        elif op == "insert":
            k = f"{rev:016x}-{self.inserted:04x}"
            self.inserted += 1
            self._put(c, k, cmd["doc"], rev)
        elif op == "patch":
            self._conds(c, cmd["key"], cmd)
            cur = self.colls.get(c, {}).get(cmd["key"])
            if cur is None and not cmd.get("upsert"):
                raise _Fail("not_found")
            d = {k: v for k, v in (cur or {}).items() if k not in ("_key", "_rev")}
            ((pop, args),) = cmd["ops"].items()
            ((f, v),) = args.items()
            if pop == "$set":
                d[f] = v
            elif pop == "$unset":
                d.pop(f, None)
            elif pop == "$inc":
                d[f] = d.get(f, 0) + v
            elif pop == "$max":
                d[f] = max(d[f], v) if f in d else v
            elif pop in ("$push", "$addToSet"):
                if f in d and not isinstance(d[f], list):
                    raise _Fail("invalid")
                lst = d.setdefault(f, [])
                if pop == "$push" or v not in lst:
                    lst.append(v)
            elif pop == "$pull" and f in d:
                d[f] = [x for x in d[f] if x != v]
            self.colls.setdefault(c, {})
            self._put(c, cmd["key"], d, rev)
        elif op == "delete":
            self._conds(c, cmd["key"], cmd)
            existed = self.colls.get(c, {}).pop(cmd["key"], None) is not None
            self.changed |= existed
            return {"deleted": existed}
        elif op == "update_many":
            hits = [d for d in self.colls.get(c, {}).values() if self._match(d, cmd["filter"])]
            for d in sorted(hits, key=lambda d: d["_key"]):
                nd = {k: v for k, v in d.items() if k not in ("_key", "_rev")}
                nd["y"] = nd.get("y", 0) + cmd["ops"]["$inc"]["y"]
                self._put(c, d["_key"], nd, rev)
            return {"matched": len(hits)}
        elif op == "delete_many":
            hits = [k for k, d in self.colls.get(c, {}).items() if self._match(d, cmd["filter"])]
            for k in hits:
                del self.colls[c][k]
                self.changed = True
            return {"deleted": len(hits)}
        elif op == "create_index":
            vals = [d["u"] for d in self.colls.get(c, {}).values() if "u" in d]
            if len(vals) != len(set(vals)):
                raise _Fail("unique_violation")
            if not self.unique.get(c):
                self.changed = True
            self.colls.setdefault(c, {})
            self.unique[c] = True
        elif op == "drop_index":
            dropped = bool(self.unique.pop(c, False))
            self.changed |= dropped
            return {"dropped": dropped}
        elif op == "create_collection":
            if c in self.colls:
                if cmd.get("if_not_exists"):
                    return {}
                raise _Fail("conflict")
            self.colls[c] = {}
            self.changed = True
        elif op == "expire":
            for name in sorted(self.colls):
                for k, d in list(self.colls[name].items()):
                    if d.get("_expires", cmd["now_ms"] + 1) <= cmd["now_ms"]:
                        del self.colls[name][k]
                        self.changed = True
        elif op == "drop_collection":
            if c in self.colls:
                del self.colls[c]
                self.unique.pop(c, None)
                self.changed = True
        elif op == "batch":
            return {"results": [{"ok": True, **self._one(sub, rev)} for sub in cmd["commands"]]}
        return {}


class _Fail(Exception):
    def __init__(self, code: str) -> None:
        self.code = code


async def run_program(path: str, program: list[dict[str, Any]]) -> None:
    model = Model()
    db_cm = docstore.open(path, expire_interval=None)
    db = await db_cm.__aenter__()
    try:
        for i, cmd in enumerate(program):
            if cmd["op"] == "reopen":
                await db_cm.__aexit__(None, None, None)
                db_cm = docstore.open(path, expire_interval=None)
                db = await db_cm.__aenter__()
            elif cmd["op"] == "compact":
                await db.compact()
            else:
                want = model.apply(cmd)
                try:
                    got = await db.execute(cmd)
                except docstore.DocstoreError as exc:
                    got = {"ok": False, "error": exc.code}
                assert got["ok"] == want["ok"], (i, cmd, got, want)
                if not got["ok"]:
                    assert got["error"] == want["error"], (i, cmd, got, want)
                for name in ("deleted", "matched"):
                    if name in want:
                        assert got[name] == want[name], (i, cmd, got, want)
            assert db.rev == model.rev, (i, cmd)
            assert await db.collections() == sorted(model.colls), (i, cmd)
            for c in COLLS:
                got_docs = await db.collection(c).scan()
                want_docs = sorted(model.colls.get(c, {}).values(), key=lambda d: d["_key"])
                assert got_docs == want_docs, (i, cmd)
                for flt in ({"u": 1}, {"x": {"$gt": 0}}, {"y": {"$in": [0, 1]}}):
                    found = await db.collection(c).find(flt)
                    assert found == [d for d in want_docs if model._match(d, flt)], (i, flt)
    finally:
        await db_cm.__aexit__(None, None, None)


@settings(max_examples=int(os.environ.get("DOCSTORE_MODEL_EXAMPLES", "150")), deadline=None)
@given(st.lists(step, max_size=25))
def test_database_matches_model(program: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        trio.run(run_program, d, program)
