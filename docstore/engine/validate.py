"""The one validator of commands and queries, run before proposing and again at apply.

Theory of operation.  A command from outside is untrusted data: a map of any
CBOR values.  :func:`validate_command` checks everything that does not depend
on the state — every field's presence and type, key types (text only, also
inside filters, patches and documents), the path grammar, integer ranges,
sizes, nesting, the extension code this node holds — and raises the
:class:`~docstore.engine.errors.DocstoreError` that apply would return,
its message starting with the field it is about (``commands[2].filter: ...``).

Two callers, one function:

* the cluster server, before it proposes, so that a bad command never
  reaches the log (answered ``bad_request``);
* :meth:`Engine.apply`, before it executes, because a replica cannot trust
  its log (an entry written by an older version, or proposed by another
  program): there the error becomes an error result, identical on every
  replica, and the state is unchanged.

What needs the state (a document's revision, the extension version in force,
a unique index) is checked by the engine while it executes; those checks are
answers (``conflict``, ``unique_violation``, ...), not validation.

:data:`COMMAND_FIELDS` and :data:`QUERY_FIELDS` are the grammar, one line an
op; docs/docstore.md ("Command reference") and docs/protocol.md ("Validation")
describe the same rules in prose.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from docstore.engine.errors import (
    DocstoreError,
    InvalidCommandError,
    LimitError,
    UnknownCommandError,
)
from docstore.engine.filters import compile_filter
from docstore.engine.patch import check_patch
from docstore.engine.registry import Registry
from docstore.engine.values import (
    DEFAULT_LIMITS,
    Limits,
    check_document,
    check_key,
    check_name,
    check_value,
    normalize_sort,
    show,
    split_path,
)

__all__ = [
    "COMMAND_FIELDS",
    "CONSISTENCY",
    "MAX_REVISION",
    "MAX_WATCH_BUFFER",
    "QUERY_FIELDS",
    "WATCH_FIELDS",
    "check_revision",
    "validate_command",
    "validate_query",
    "validate_watch",
]

MAX_REVISION = 2**63 - 1
"""Revisions, timestamps and versions: what a log index or term can be."""

CONSISTENCY = ("linearizable", "lease", "local")

_CONDITIONS = ("if_rev", "if_exists", "if_match")

#: op -> (required fields, optional fields).  Unknown fields are refused.
COMMAND_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "put": (("coll", "key", "doc"), _CONDITIONS),
    "insert": (("coll", "doc"), ()),
    "patch": (("coll", "key", "ops"), ("upsert", *_CONDITIONS)),
    "delete": (("coll", "key"), _CONDITIONS),
    "update_many": (("coll", "ops"), ("filter",)),
    "delete_many": (("coll",), ("filter",)),
    "batch": (("commands",), ()),
    "create_collection": (("coll",), ("type", "if_not_exists")),
    "drop_collection": (("coll",), ()),
    "create_index": (("coll", "fields"), ("unique", "name")),
    "drop_index": (("coll", "name"), ()),
    "expire": ((), ("now_ms", "coll")),
    "register": (("kind", "name", "version"), ()),
    "call": (("name", "version"), ("args",)),
}

_QUERY_COMMON = ("now_ms", "consistency")
QUERY_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "get": (("coll", "key"), _QUERY_COMMON),
    "get_multi": (("coll", "keys"), _QUERY_COMMON),
    "find": (("coll",), ("filter", "sort", "limit", *_QUERY_COMMON)),
    "count": (("coll",), ("filter", *_QUERY_COMMON)),
    "scan": (("coll",), ("prefix", "start", "end", "limit", *_QUERY_COMMON)),
    "collections": ((), _QUERY_COMMON),
    "digest": ((), _QUERY_COMMON),
    "sessions": ((), _QUERY_COMMON),
}

MAX_INDEX_FIELDS = 8
MAX_GET_MULTI = 10_000

#: The fields of a watch request, all optional but ``coll``.
WATCH_FIELDS = frozenset({"coll", "filter", "since_rev", "buffer"})
#: A watcher's buffer holds at most this many changes.
MAX_WATCH_BUFFER = 65_536


def _field(where: str, check: Callable[[], object]) -> None:
    """Run ``check``; prefix the message of the error it raises with ``where``."""
    try:
        check()
    except DocstoreError as exc:
        raise type(exc)(f"{where}: {exc.message}", rev=exc.rev) from None
    except RecursionError:
        raise LimitError(f"{where}: nested too deeply") from None


def _allowed(
    grammar: dict[str, tuple[tuple[str, ...], tuple[str, ...]]],
) -> dict[str, frozenset[str]]:
    return {op: frozenset({"op", *req, *opt}) for op, (req, opt) in grammar.items()}


_COMMAND_ALLOWED = _allowed(COMMAND_FIELDS)
_QUERY_ALLOWED = _allowed(QUERY_FIELDS)


def _shape(
    m: object,
    what: str,
    grammar: dict[str, tuple[tuple[str, ...], tuple[str, ...]]],
    allowed: dict[str, frozenset[str]],
    where: str,
) -> tuple[str, dict[str, Any]]:
    if not isinstance(m, dict):
        raise InvalidCommandError(f"{where or what}: a {what} is an object, got {type(m).__name__}")
    op = m.get("op")
    if type(op) is not str or op not in grammar:
        kind = UnknownCommandError if what == "command" else InvalidCommandError
        raise kind(f"{where}op: unknown {what} op {show(op)}")
    if not allowed[op].issuperset(m):
        for name in m:
            if type(name) is not str:
                raise InvalidCommandError(f"{where}{op}: field names are strings, got {show(name)}")
        raise InvalidCommandError(f"{where}{op}: unknown fields {sorted(set(m) - allowed[op])}")
    for name in grammar[op][0]:
        if name not in m:
            raise InvalidCommandError(f"{where}{op}: {name} is required")
    return op, m


def check_revision(v: object, what: str, *, low: int = 0) -> int:
    """An integer in ``low .. 2**63-1`` (never a bool)."""
    if type(v) is not int or not low <= v <= MAX_REVISION:
        raise InvalidCommandError(f"{what} is an integer in {low} .. 2**63-1, got {show(v)}")
    return v


def _bool(v: object, what: str) -> None:
    if type(v) is not bool:
        raise InvalidCommandError(f"{what} is true or false, got {show(v)}")


#: A plain JSON value's compact JSON text takes at most this many bytes per byte
#: of its CBOR without tags (more than it needs: the true worst is 8).  Counting
#: each item with the comma that follows it in an array or map: a half-precision
#: float is 3 bytes for up to 23 characters and a comma (``-1.7881393432617188e-07``,
#: the worst: 8 per byte); ``false`` 1 byte for 6; a string of n bytes (1 + n
#: with its head) at most 3 + 6n (``\u001f``); an integer at most 4 per byte; an
#: array or a map no more per byte than the worst of its items.
JSON_BYTES_PER_CBOR_BYTE = 10


def sizes_bounded(encoded_size: int, limits: Limits = DEFAULT_LIMITS) -> bool:
    """Whether no document of a command taking ``encoded_size`` bytes of CBOR without
    tags can exceed ``limits.max_doc_bytes`` as JSON, so none needs measuring.

    Example:
        >>> sizes_bounded(200), sizes_bounded(200_000)
        (True, False)
    """
    return encoded_size * JSON_BYTES_PER_CBOR_BYTE <= limits.max_doc_bytes


def must_measure(encoded_size: int | None, limits: Limits = DEFAULT_LIMITS) -> bool:
    """Whether a command's documents must be measured as JSON: its size as CBOR
    without tags is unknown (None) or does not bound them (:func:`sizes_bounded`).

    The one rule the client, the node's check and apply all follow.

    Example:
        >>> must_measure(None), must_measure(200), must_measure(200_000)
        (True, False, True)
    """
    return encoded_size is None or not sizes_bounded(encoded_size, limits)


def validate_command(
    cmd: object,
    limits: Limits = DEFAULT_LIMITS,
    registry: Registry | None = None,
    *,
    sizes: bool = True,
    encoded_size: int | None = None,
    where: str = "",
) -> dict[str, Any]:
    """``cmd``, checked: raise the error apply would give it for what needs no state.

    ``registry``: the extension code this node holds; ``register`` and ``call``
    of code it lacks are refused (None skips that check, as a remote client
    must).  ``sizes=False`` leaves the document size to the write path, which
    measures the stored form.  ``encoded_size``: the command's size as CBOR
    without tags (as a node decodes it from a client); when it bounds every
    document below the limit (:func:`sizes_bounded`), documents are not
    measured.  ``where`` prefixes messages (batch items).

    Example:
        >>> validate_command({"op": "delete", "coll": "c", "key": 1})
        Traceback (most recent call last):
        ...
        docstore.engine.errors.InvalidCommandError: key: document keys are strings, got int
    """
    measure = sizes and must_measure(encoded_size, limits)
    if _plain_put(cmd, limits, measure):
        return cmd  # type: ignore[return-value]
    return _validate(cmd, limits, registry, measure, where)


def _plain_put(c: object, limits: Limits, sizes: bool) -> bool:
    """Whether ``c`` is a put without conditions that :func:`_validate` accepts.

    The common write, checked without the grammar's walk and a call per
    field; its document by :func:`check_document`, as :func:`_validate` does.
    False says nothing about ``c``: :func:`_validate` judges it and names the
    field at fault.  Only what passes every check below is True, so a command
    gets the same answer either way (tests/docstore/test_validate_fast_path.py
    compares them).
    """
    if type(c) is not dict or len(c) != 4:
        return False
    op = c.get("op")
    if type(op) is not str or op != "put":
        return False
    # Four fields, three of them found with the type wanted: op, coll, key and doc.
    doc = c.get("doc")
    if not _plain_coll_key(c.get("coll"), c.get("key"), limits):
        return False
    if type(doc) is not dict:
        return False
    try:
        check_document(doc, limits, size=sizes)  # what _validate runs on it
    except (DocstoreError, RecursionError):
        return False
    return True


def _plain_coll_key(coll: object, key: object, limits: Limits) -> bool:
    """Whether ``coll`` and ``key`` are ASCII strings that check_name and check_key
    accept (ASCII: a string's length is its UTF-8 size); False: ask them."""
    return (
        type(coll) is str
        and coll.isascii()
        and 0 < len(coll) <= limits.max_name_bytes
        and coll[0] != "$"
        and "\x00" not in coll
        and type(key) is str
        and key.isascii()
        and 0 < len(key) <= limits.max_key_bytes
    )


def _validate(
    cmd: object,
    limits: Limits,
    registry: Registry | None,
    sizes: bool,
    where: str,
) -> dict[str, Any]:
    """:func:`validate_command` for every command (the one grammar); ``sizes``:
    whether documents are measured, as :func:`validate_command` decided."""
    op, c = _shape(cmd, "command", COMMAND_FIELDS, _COMMAND_ALLOWED, where)
    field = "op"  # the field being checked, named in the error
    try:
        if "coll" in c:
            field = "coll"
            check_name(c["coll"], "collection", limits)
        if "key" in c:
            field = "key"
            check_key(c["key"], limits)
        if "doc" in c:
            field = "doc"
            check_document(c["doc"], limits, size=sizes)
        if "ops" in c:
            field = "ops"
            check_patch(c["ops"])
        if "filter" in c:
            field = "filter"
            compile_filter(c["filter"])
        if not _FLAGS.isdisjoint(c):
            field = "op"
            _conditions_and_flags(c, where)
    except DocstoreError as exc:
        if field == "op":  # _conditions_and_flags names its own field
            raise
        raise type(exc)(f"{where}{field}: {exc.message}", rev=exc.rev) from None
    except RecursionError:
        raise LimitError(f"{where}{field}: nested too deeply") from None
    if op == "batch":
        subs = c["commands"]
        if where:
            raise InvalidCommandError(f"{where}batch: a batch cannot contain a batch")
        if not isinstance(subs, list):
            raise InvalidCommandError("commands: a batch's commands are a list")
        if len(subs) > limits.max_batch:
            raise LimitError(f"commands: {len(subs)} commands, the limit is {limits.max_batch}")
        for i, sub in enumerate(subs):
            validate_command(sub, limits, registry, sizes=sizes, where=f"commands[{i}].")
    elif op in _RARE_OPS:
        _RARE_OPS[op](c, limits, registry, where)
    return c


_FLAGS = frozenset({*_CONDITIONS, "upsert", "if_not_exists", "unique"})


def _conditions_and_flags(c: dict[str, Any], w: str) -> None:
    if c.get("if_rev") is not None:
        _field(f"{w}if_rev", lambda: check_revision(c["if_rev"], "if_rev"))
    if c.get("if_exists") is not None:
        _field(f"{w}if_exists", lambda: _bool(c["if_exists"], "if_exists"))
    if "if_match" in c:
        _field(f"{w}if_match", lambda: compile_filter(c["if_match"]))
    for flag in ("upsert", "if_not_exists", "unique"):
        if flag in c:
            _field(f"{w}{flag}", lambda flag=flag: _bool(c[flag], flag))  # type: ignore[misc]


def _create_collection(
    c: dict[str, Any], limits: Limits, registry: Registry | None, w: str
) -> None:
    tname = c.get("type")
    if tname is not None:
        _field(f"{w}type", lambda: check_name(tname, "collection type", limits))
        if registry is not None and not registry.has_type(tname):
            raise UnknownCommandError(f"{w}type: this node has no code for type {show(tname)}")


def _create_index(c: dict[str, Any], limits: Limits, registry: Registry | None, w: str) -> None:
    _field(f"{w}fields", lambda: _index_fields(c["fields"]))
    if c.get("name") is not None:
        _field(f"{w}name", lambda: check_name(c["name"], "index", limits))
    else:
        fields = c["fields"]
        default = fields if isinstance(fields, str) else "+".join(fields)
        _field(f"{w}fields", lambda: check_name(default, "index", limits))


def _drop_index(c: dict[str, Any], limits: Limits, registry: Registry | None, w: str) -> None:
    _field(f"{w}name", lambda: check_name(c["name"], "index", limits))


def _expire(c: dict[str, Any], limits: Limits, registry: Registry | None, w: str) -> None:
    if "now_ms" in c:
        _field(f"{w}now_ms", lambda: check_revision(c["now_ms"], "now_ms"))


def _register(c: dict[str, Any], limits: Limits, registry: Registry | None, w: str) -> None:
    kind = c["kind"]
    if kind not in ("type", "command"):
        raise InvalidCommandError(f"{w}kind: 'type' or 'command', got {show(kind)}")
    _field(f"{w}name", lambda: check_name(c["name"], str(kind), limits))
    _field(f"{w}version", lambda: check_revision(c["version"], "version", low=1))
    if registry is not None and not registry.has(str(kind), c["name"], c["version"]):
        raise UnknownCommandError(
            f"{w}name: this node has no code for {kind} {show(c['name'])} version {c['version']}"
        )


def _call(c: dict[str, Any], limits: Limits, registry: Registry | None, w: str) -> None:
    _field(f"{w}name", lambda: check_name(c["name"], "command", limits))
    _field(f"{w}version", lambda: check_revision(c["version"], "version", low=1))
    _field(f"{w}args", lambda: check_value(c.get("args"), limits))
    if registry is not None and not registry.has("command", c["name"], c["version"]):
        raise UnknownCommandError(
            f"{w}name: this node has no code for command {show(c['name'])} version {c['version']}"
        )


_RARE_OPS: dict[str, Callable[[dict[str, Any], Limits, Registry | None, str], None]] = {
    "create_collection": _create_collection,
    "create_index": _create_index,
    "drop_index": _drop_index,
    "expire": _expire,
    "register": _register,
    "call": _call,
}


def _index_fields(fields: object) -> None:
    items = [fields] if isinstance(fields, str) else fields
    if not isinstance(items, list) or not items or len(items) > MAX_INDEX_FIELDS:
        raise InvalidCommandError(f"a list of 1 to {MAX_INDEX_FIELDS} field paths")
    for f in items:
        split_path(f)
    if len(set(items)) != len(items):
        raise InvalidCommandError("index fields repeat")


def validate_query(q: object, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """``q``, checked: raise the error a read of it would give, for what needs no state."""
    if (
        type(q) is dict
        and len(q) == 3
        and type(op := q.get("op")) is str
        and op == "get"
        and _plain_coll_key(q.get("coll"), q.get("key"), limits)
    ):
        return q  # a plain get, as _validate_query would find it (every read runs this twice)
    return _validate_query(q, limits)


def _validate_query(q: object, limits: Limits) -> dict[str, Any]:
    """:func:`validate_query` for every query (the one grammar)."""
    _, m = _shape(q, "query", QUERY_FIELDS, _QUERY_ALLOWED, "")
    # A get's fields are checked without _field's closures (every read runs this
    # twice: the node before the read, the state machine at it); same messages.
    field = "coll"
    try:
        if "coll" in m:
            check_name(m["coll"], "collection", limits)
        if "key" in m:
            field = "key"
            check_key(m["key"], limits)
    except DocstoreError as exc:
        raise type(exc)(f"{field}: {exc.message}", rev=exc.rev) from None
    if "keys" in m:
        keys = m["keys"]
        if not isinstance(keys, list) or len(keys) > MAX_GET_MULTI:
            raise InvalidCommandError(f"keys: a list of at most {MAX_GET_MULTI} keys")
        for i, k in enumerate(keys):
            _field(f"keys[{i}]", lambda k=k: check_key(k, limits))  # type: ignore[misc]
    if "filter" in m:
        _field("filter", lambda: compile_filter(m["filter"]))
    if "sort" in m:
        _field("sort", lambda: normalize_sort(m["sort"]))
    if m.get("limit") is not None:
        _field("limit", lambda: check_revision(m["limit"], "limit"))
    for name in ("prefix", "start", "end"):
        v = m.get(name)
        if v is not None and not isinstance(v, str):
            raise InvalidCommandError(f"{name}: a string, got {show(v)}")
    if "now_ms" in m:
        _field("now_ms", lambda: check_revision(m["now_ms"], "now_ms"))
    if "consistency" in m and m["consistency"] not in CONSISTENCY:
        got = show(m["consistency"])
        raise InvalidCommandError(f"consistency: one of {CONSISTENCY}, got {got}")
    return m


def validate_watch(w: object, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """``w``, a watch request (``coll``, ``filter``, ``since_rev``, ``buffer``), checked."""
    if not isinstance(w, dict):
        fields = ", ".join(sorted(WATCH_FIELDS))
        raise InvalidCommandError(f"payload: a watch takes a map of {fields}")
    unknown = sorted(show(k) for k in w if k not in WATCH_FIELDS)
    if unknown:
        raise InvalidCommandError(f"{unknown[0]}: not a field of a watch")
    _field("coll", lambda: check_name(w.get("coll"), "collection", limits))
    if "filter" in w:
        _field("filter", lambda: compile_filter(w["filter"]))
    if w.get("since_rev") is not None:
        _field("since_rev", lambda: check_revision(w["since_rev"], "since_rev"))
    buffer = w.get("buffer")
    if buffer is not None and (type(buffer) is not int or not 1 <= buffer <= MAX_WATCH_BUFFER):
        got = show(buffer)
        raise InvalidCommandError(f"buffer: an integer in 1 .. {MAX_WATCH_BUFFER}, got {got}")
    return w
