"""The write commands: one function per ``op``, each changing the state through the engine.

Owns what each command means (``put`` ... ``call``, docs/docstore.md lists
them), the table that maps an ``op`` to its function (:data:`OPS`), the
failure of one command of a batch (:class:`_BatchFailure`) and the read-only
view extension handlers get (:class:`_Ctx`).  Every function takes the
:class:`~docstore.engine.state.Engine` applying the command and changes
state only through its journaling primitives (``_coll``, ``_write``), so
:meth:`Engine.apply` can undo a failed command exactly.  Validation of the
command's shape happened before (:func:`validate_command`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from docstore.engine.errors import (
    ConflictError,
    DocstoreError,
    InvalidCommandError,
    LimitError,
    NotFoundError,
    UniqueViolation,
    UnknownCommandError,
)
from docstore.engine.indexes import Collection, Index, expired
from docstore.engine.patch import apply_patch
from docstore.engine.validate import validate_command
from docstore.engine.values import check_document, check_key, check_name, split_path

if TYPE_CHECKING:
    from docstore.engine.state import Engine

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


class _BatchFailure(DocstoreError):
    def __init__(self, exc: DocstoreError, index: int) -> None:
        super().__init__(exc.message, rev=exc.rev)
        self.inner = exc
        self.index = index

    def to_result(self) -> dict[str, Any]:
        out = self.inner.to_result()
        out["index"] = self.index
        return out


def _put(eng: Engine, cmd: dict[str, Any]) -> dict[str, Any]:
    c = eng._coll(cmd.get("coll"))
    key = check_key(cmd.get("key"), eng.limits)
    doc = cmd["doc"]  # validated; _write checks the stored size
    eng._check_conditions(c, key, cmd)
    eng._write(c, key, eng._stored(c, key, doc))
    return {"key": key}


def _insert(eng: Engine, cmd: dict[str, Any]) -> dict[str, Any]:
    c = eng._coll(cmd.get("coll"))
    doc = cmd["doc"]
    key = f"{eng._rev:016x}-{eng._inserted:04x}"
    eng._inserted += 1
    eng._write(c, key, eng._stored(c, key, doc))
    return {"key": key}


def _patch(eng: Engine, cmd: dict[str, Any]) -> dict[str, Any]:
    upsert = cmd.get("upsert", False)
    if not isinstance(upsert, bool):
        raise InvalidCommandError("upsert is true or false")
    c = eng._coll(cmd.get("coll"), create=upsert)
    key = check_key(cmd.get("key"), eng.limits)
    ops = cmd["ops"]
    eng._check_conditions(c, key, cmd)
    cur = eng._live(c, key)
    if cur is None and not upsert:
        raise NotFoundError(f"{c.name}/{key} does not exist", rev=0)
    new = apply_patch(cur if cur is not None else {}, ops)
    check_document(new, eng.limits, size=False)
    eng._write(c, key, eng._stored(c, key, new))
    return {"key": key, "created": cur is None}


def _delete(eng: Engine, cmd: dict[str, Any]) -> dict[str, Any]:
    c = eng._coll(cmd.get("coll"), create=False)
    key = check_key(cmd.get("key"), eng.limits)
    eng._check_conditions(c, key, cmd)
    existed = eng._live(c, key) is not None
    eng._write(c, key, None)
    return {"deleted": existed}


def _update_many(eng: Engine, cmd: dict[str, Any]) -> dict[str, Any]:
    c = eng._coll(cmd.get("coll"), create=False)
    ops = cmd["ops"]
    docs = eng.find(c.name, cmd.get("filter"), now_ms=eng._now)
    for d in docs:
        new = apply_patch(d, ops)
        check_document(new, eng.limits, size=False)
        eng._write(c, d["_key"], eng._stored(c, d["_key"], new))
    return {"matched": len(docs)}


def _delete_many(eng: Engine, cmd: dict[str, Any]) -> dict[str, Any]:
    c = eng._coll(cmd.get("coll"), create=False)
    docs = eng.find(c.name, cmd.get("filter"), now_ms=eng._now)
    for d in docs:
        eng._write(c, d["_key"], None)
    return {"deleted": len(docs)}


def _batch(eng: Engine, cmd: dict[str, Any]) -> dict[str, Any]:
    cmds = cmd.get("commands")
    if not isinstance(cmds, list):
        raise InvalidCommandError("batch commands is a list")
    if len(cmds) > eng.limits.max_batch:
        raise LimitError(f"batch of {len(cmds)} commands, the limit is {eng.limits.max_batch}")
    results = []
    for i, sub in enumerate(cmds):
        try:
            res = eng._exec(sub)
        except DocstoreError as exc:
            exc.add_note(f"batch command #{i}")
            raise _BatchFailure(exc, i) from None
        res["ok"] = True
        results.append(res)
    return {"results": results}


def _create_collection(eng: Engine, cmd: dict[str, Any]) -> dict[str, Any]:
    name = check_name(cmd.get("coll"), "collection", eng.limits)
    tname = cmd.get("type")
    version = 0
    ctype = None
    if tname is not None:
        check_name(tname, "collection type", eng.limits)
        if tname not in eng.extensions["types"]:
            raise UnknownCommandError(f"collection type {tname!r} is not registered")
        version = eng.extensions["types"][tname]
        ctype = eng.registry.type(tname, version)
    existing = eng.colls.get(name)
    if existing is not None:
        if cmd.get("if_not_exists") and existing.type_name == tname:
            return {"created": False}
        raise ConflictError(f"collection {name!r} already exists", rev=0)
    c = Collection(name, tname, version, ctype)
    eng.colls[name] = c
    eng._journal.append(("mkcoll", c))
    return {"created": True}


def _drop_collection(eng: Engine, cmd: dict[str, Any]) -> dict[str, Any]:
    name = check_name(cmd.get("coll"), "collection", eng.limits)
    c = eng.colls.pop(name, None)
    if c is None:
        return {"dropped": False}
    eng._journal.append(("dropcoll", c))
    return {"dropped": True}


def _create_index(eng: Engine, cmd: dict[str, Any]) -> dict[str, Any]:
    c = eng._coll(cmd.get("coll"))
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
    check_name(name, "index", eng.limits)
    existing = c.indexes.get(name)
    if existing is not None:
        if existing.fields == tuple(fields) and existing.unique == unique:
            return {"name": name, "created": False}
        raise InvalidCommandError(f"index {name!r} exists with another definition")
    if len(c.indexes) >= eng.limits.max_indexes:
        raise LimitError(f"{c.name!r} already has {eng.limits.max_indexes} indexes")
    idx = Index(name, tuple(fields), unique)
    for key in c.keys_in_order():
        d = c.docs[key]
        view = c.view(d)
        if unique:
            _, uk = idx.keys(view)
            if uk is not None and uk in idx.uniq and not expired(d, eng._now):
                other = idx.uniq[uk]
                if not expired(c.docs[other], eng._now):
                    raise UniqueViolation(
                        f"cannot build unique index {name!r}: {other!r} and {key!r} share a value"
                    )
        idx.add(key, view)
    c.add_index(idx)
    eng._journal.append(("mkidx", c, idx))
    return {"name": name, "created": True}


def _drop_index(eng: Engine, cmd: dict[str, Any]) -> dict[str, Any]:
    c = eng._coll(cmd.get("coll"), create=False)
    name = check_name(cmd.get("name"), "index", eng.limits)
    idx = c.indexes.pop(name, None)
    if idx is None:
        return {"dropped": False}
    eng._journal.append(("dropidx", c, idx))
    return {"dropped": True}


def _expire(eng: Engine, cmd: dict[str, Any]) -> dict[str, Any]:
    now = cmd.get("now_ms", eng._now)  # by default, as of the entry's (leader's) time
    names = [cmd["coll"]] if cmd.get("coll") is not None else sorted(eng.colls)
    n = 0
    for name in names:
        c = eng.colls.get(name)
        if c is None:
            continue
        for key in sorted(c.expiring):
            if expired(c.docs[key], now):
                eng._write(c, key, None)
                n += 1
    return {"expired": n}


def _register(eng: Engine, cmd: dict[str, Any]) -> dict[str, Any]:
    kind = cmd.get("kind")
    if kind not in ("type", "command"):
        raise InvalidCommandError("register kind is 'type' or 'command'")
    name = check_name(cmd.get("name"), str(kind), eng.limits)
    version = cmd.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidCommandError("extension versions are positive integers")
    table = eng.extensions[f"{kind}s"]
    old = table.get(name)
    if old != version:
        table[name] = version
        eng._journal.append(("reg", f"{kind}s", name, old, version))
        if kind == "type":
            # Collections of this type switch to the new version's code.
            for c in eng.colls.values():
                if c.type_name == name:
                    eng._retype(c, version)
    return {"registered": True, "previous": old}


def _call(eng: Engine, cmd: dict[str, Any]) -> dict[str, Any]:
    name = cmd.get("name")
    version = cmd.get("version")
    if not isinstance(name, str) or name not in eng.extensions["commands"]:
        raise UnknownCommandError(f"command {name!r} is not registered")
    in_force = eng.extensions["commands"][name]
    if version != in_force:
        raise UnknownCommandError(f"command {name!r} is at version {in_force}, not {version!r}")
    handler = eng.registry.command(name, in_force)
    try:
        cmds = handler(_Ctx(eng, eng._rev, eng._now), cmd.get("args"))
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
        validate_command(sub, eng.limits, eng.registry, sizes=False, where=f"{name}[{i}].")
        res = eng._exec(sub)
        res["ok"] = True
        results.append(res)
    return {"results": results}


OPS: dict[str, Callable[[Engine, dict[str, Any]], dict[str, Any]]] = {
    "put": _put,
    "insert": _insert,
    "patch": _patch,
    "delete": _delete,
    "update_many": _update_many,
    "delete_many": _delete_many,
    "batch": _batch,
    "create_collection": _create_collection,
    "drop_collection": _drop_collection,
    "create_index": _create_index,
    "drop_index": _drop_index,
    "expire": _expire,
    "register": _register,
    "call": _call,
}
assert set(OPS) == WRITE_OPS
