"""JSON values: validation, limits, canonical form, ordering and dotted paths.

Documents are JSON objects: ``None``, ``bool``, ``int``, finite ``float``,
``str``, ``list`` and ``dict`` with string keys.  The canonical form (sorted
keys, no spaces, UTF-8) is what digests, snapshots and index keys are built
from, so two replicas holding equal documents hash the same.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

from docstore.engine.errors import InvalidCommandError, LimitError

RESERVED = ("_key", "_rev", "_expires")
"""Fields the engine owns: the key, the revision, the expiry (ms since epoch)."""

INT_MIN = -(2**64)
INT_MAX = 2**64 - 1
"""Integers in documents, filters and patches: CBOR's range, what every replica can
encode.  Arithmetic that would leave it (``$inc``, ``$mul``) is an error."""

MAX_PATH_BYTES = 1024
MAX_PATH_SEGMENTS = 64
MAX_INDEX_DIGITS = 9
"""Field paths: at most this many UTF-8 bytes and dot-separated segments.  A segment
indexes an array only when it is 1 to ``MAX_INDEX_DIGITS`` ASCII digits (no
document can hold a longer array); any other segment is an object key.  These are
constants, not :class:`Limits`, so that no replica's setting can change a result."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits, enforced by the API before sending and again at apply.

    Example:
        >>> Limits(max_doc_bytes=64 * 1024).max_key_bytes
        256
    """

    max_doc_bytes: int = 1024 * 1024
    max_key_bytes: int = 256
    #: 28 leaves room for what wraps a document on the wire (a batch of puts, a
    #: find's answer, a watch change), whose values nest at most 32 levels.
    max_depth: int = 28
    max_indexes: int = 16
    max_batch: int = 1000
    max_name_bytes: int = 128


DEFAULT_LIMITS = Limits()

_dumps = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def canonical(value: Any) -> str:
    """Canonical JSON text of ``value``."""
    return _dumps(value)


def check_key(key: object, limits: Limits = DEFAULT_LIMITS) -> str:
    if not isinstance(key, str):
        raise InvalidCommandError(f"document keys are strings, got {type(key).__name__}")
    if not key:
        raise InvalidCommandError("document key must not be empty")
    if len(key.encode()) > limits.max_key_bytes:
        raise LimitError(f"key is {len(key.encode())} bytes, the limit is {limits.max_key_bytes}")
    return key


def check_name(name: object, what: str, limits: Limits = DEFAULT_LIMITS) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidCommandError(f"{what} name must be a non-empty string, got {show(name)}")
    if len(name.encode()) > limits.max_name_bytes:
        raise LimitError(f"{what} name longer than {limits.max_name_bytes} bytes")
    if name.startswith("$") or "\x00" in name:
        raise InvalidCommandError(f"{what} name {show(name)} must not start with '$' or hold NUL")
    return name


def check_value(value: object, limits: Limits = DEFAULT_LIMITS, depth: int = 0) -> None:
    """Raise unless ``value`` is plain JSON no deeper than the limit."""
    if depth > limits.max_depth:
        raise LimitError(f"nesting deeper than {limits.max_depth} levels")
    t = type(value)
    if (t is dict or t is list) and value and depth >= limits.max_depth:
        raise LimitError(f"nesting deeper than {limits.max_depth} levels")
    if t is dict:
        for k, v in value.items():  # type: ignore[attr-defined]
            if type(k) is not str:
                raise InvalidCommandError(f"object keys are strings, got {show(k)}")
            tv = type(v)
            if tv is str or tv is bool or v is None or (tv is int and INT_MIN <= v <= INT_MAX):
                continue
            check_value(v, limits, depth + 1)
        return
    if t is list:
        for v in value:  # type: ignore[attr-defined]
            tv = type(v)
            if tv is str or tv is bool or v is None or (tv is int and INT_MIN <= v <= INT_MAX):
                continue
            check_value(v, limits, depth + 1)
        return
    if t is int:
        check_int(value)  # type: ignore[arg-type]
        return
    if value is None or t is str or t is bool:
        return
    if t is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise InvalidCommandError("numbers must be finite (no NaN or Infinity)")
        return
    raise InvalidCommandError(f"{t.__name__} is not a JSON value")


def check_int(v: int) -> int:
    """``v`` if it lies in CBOR's integer range, else :class:`LimitError`."""
    if not INT_MIN <= v <= INT_MAX:
        raise LimitError("integer outside -2**64 .. 2**64-1")
    return v


def show(v: object, width: int = 60) -> str:
    """``repr(v)`` cut to ``width`` characters: error messages never echo a huge input."""
    if isinstance(v, int) and not -(10**width) < v < 10**width:
        return f"<integer of about {v.bit_length() * 3 // 10} digits>"
    try:
        r = repr(v)
    except Exception:  # a pathological value; say what it is, not what it holds
        return f"<{type(v).__name__}>"
    return r if len(r) <= width else r[: width - 3] + "..."


def check_document(
    doc: object, limits: Limits = DEFAULT_LIMITS, *, size: bool = True
) -> dict[str, Any]:
    """Validate a user document (a JSON object); returns it."""
    if not isinstance(doc, dict):
        raise InvalidCommandError(f"a document is a JSON object, got {type(doc).__name__}")
    check_value(doc, limits)
    if size:
        check_size(doc, limits)
    check_expires(doc)
    return doc


def check_expires(doc: dict[str, Any]) -> None:
    """``_expires``, when present, is an integer (ms since the epoch); ``null`` is not."""
    if "_expires" in doc and type(doc["_expires"]) is not int:
        raise InvalidCommandError("_expires must be an integer (ms since the epoch)")


def expires_at(doc: dict[str, Any]) -> int | None:
    """When ``doc`` expires, or None.  A non-integer ``_expires`` (kept by a version
    that did not refuse it) means never, so reads and expiry never trip on it."""
    exp = doc.get("_expires")
    return exp if type(exp) is int else None


def compact_json(*, allow_nan: bool = True) -> Callable[[Any], str]:
    """A function giving the compact JSON text of a value (``,`` and ``:``, UTF-8 kept),
    as ``json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode`` does.

    Built once: ``JSONEncoder.encode`` builds its C encoder on every call, which
    costs as much as encoding a small document.  Without a circular-reference
    check: the values it is given were checked to nest at most
    :attr:`Limits.max_depth` levels (a cycle fails that check first).
    """
    if c_make_encoder is None:  # pragma: no cover - CPython has the C encoder
        return json.JSONEncoder(
            separators=(",", ":"), ensure_ascii=False, allow_nan=allow_nan
        ).encode
    encoder = c_make_encoder(
        None,  # no circular-reference markers
        json.JSONEncoder().default,  # non-JSON values: its TypeError
        encode_basestring,
        None,
        ":",
        ",",
        False,
        False,
        allow_nan,
    )

    def dumps(value: Any) -> str:
        return "".join(encoder(value, 0))

    return dumps


_dumps_fast = compact_json()


def check_size(doc: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> None:
    size = len(_dumps_fast(doc).encode())
    if size > limits.max_doc_bytes:
        raise LimitError(f"document is {size} bytes, the limit is {limits.max_doc_bytes}")


def clone(value: Any) -> Any:
    """A deep copy of a JSON value (much faster than copy.deepcopy)."""
    t = type(value)
    if t is dict:
        out = value.copy()
        for k, v in out.items():
            tv = type(v)
            if tv is dict or tv is list:
                out[k] = clone(v)
        return out
    if t is list:
        return [clone(v) if type(v) is dict or type(v) is list else v for v in value]
    return value


# --------------------------------------------------------------------------
# Ordering.  Types rank null < numbers < strings < objects < arrays < booleans
# (as in MongoDB); a missing field sorts as null.
# --------------------------------------------------------------------------


def rank(v: Any) -> int:
    if v is None:
        return 0
    if isinstance(v, bool):
        return 5
    if isinstance(v, (int, float)):
        return 1
    if isinstance(v, str):
        return 2
    if isinstance(v, dict):
        return 3
    return 4


def sort_key(v: Any) -> tuple[int, Any]:
    r = rank(v)
    if r in (3, 4):
        return (r, canonical(v))
    if r == 0:
        return (0, 0)
    return (r, v)


def json_equal(a: Any, b: Any) -> bool:
    """Equality that keeps ``true`` and ``1`` apart (Python does not)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if rank(a) != rank(b):
        return False
    return bool(a == b)


def normalize_sort(sort: object) -> list[tuple[str, int]]:
    """``"age"``, ``"-age"``, ``[["age", -1], ["name", 1]]`` -> ``[("age", -1), ...]``."""
    if sort is None:
        return []
    if isinstance(sort, str):
        path, direction = (sort[1:], -1) if sort.startswith("-") else (sort, 1)
        split_path(path)
        return [(path, direction)]
    if not isinstance(sort, (list, tuple)):
        raise InvalidCommandError("sort is a field, or a list of [field, 1 | -1]")
    out: list[tuple[str, int]] = []
    for item in sort:
        if isinstance(item, str):
            out.extend(normalize_sort(item))
            continue
        if (
            not isinstance(item, (list, tuple))
            or len(item) != 2
            or item[1] not in (1, -1)
            or isinstance(item[1], bool)
        ):
            raise InvalidCommandError(f"bad sort item {show(item)}")
        split_path(item[0])
        out.append((item[0], item[1]))
    return out


def index_key(v: Any) -> str:
    """The hashable form of a value in an index.

    Injective up to JSON equality (``1`` and ``1.0`` share a key, ``true``
    and ``1`` do not) and cheap for scalars, which are most index values.
    """
    t = type(v)
    if t is str:
        return "s" + v  # type: ignore[no-any-return]
    if t is int:
        return "n" + str(v)
    if t is bool:
        return "t" if v else "f"
    if v is None:
        return "z"
    if t is float:
        return "n" + (str(int(v)) if v.is_integer() else repr(v))
    return "j" + canonical(_norm(v))


def _norm(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_norm(x) for x in v]
    return v


# --------------------------------------------------------------------------
# Dotted paths: "a.b.0.c" walks objects by key and arrays by index.
# --------------------------------------------------------------------------

MISSING: Any = object()


def split_path(path: object) -> list[str]:
    """The segments of a dotted field path; :class:`InvalidCommandError` if malformed."""
    if not isinstance(path, str) or not path:
        raise InvalidCommandError(f"a field path is a non-empty string, got {show(path)}")
    if len(path) > MAX_PATH_BYTES // 4 and len(path.encode()) > MAX_PATH_BYTES:
        raise LimitError(f"field path longer than {MAX_PATH_BYTES} bytes")
    parts = path.split(".")
    if len(parts) > MAX_PATH_SEGMENTS:
        raise LimitError(f"field path of more than {MAX_PATH_SEGMENTS} segments")
    if any(not p for p in parts):
        raise InvalidCommandError(f"field path {show(path)} has an empty segment")
    if any(p.startswith("$") for p in parts):
        raise InvalidCommandError(f"field path {show(path)} has a segment starting with '$'")
    return parts


def array_index(segment: str) -> int:
    """The array index a path segment names, or -1 if it names none.

    Only ASCII digits count (``"²"`` and ``"٣"`` are object keys, never indexes),
    and at most :data:`MAX_INDEX_DIGITS` of them.
    """
    if segment.isdigit() and segment.isascii() and len(segment) <= MAX_INDEX_DIGITS:
        return int(segment)
    return -1


def get_path(doc: Any, parts: list[str]) -> Any:
    """The value at ``parts`` or :data:`MISSING`."""
    cur = doc
    for p in parts:
        if isinstance(cur, dict):
            if p not in cur:
                return MISSING
            cur = cur[p]
        elif isinstance(cur, list):
            i = array_index(p)
            if not 0 <= i < len(cur):
                return MISSING
            cur = cur[i]
        else:
            return MISSING
    return cur


def _parent(doc: dict[str, Any], parts: list[str], create: bool) -> Any:
    cur: Any = doc
    for p in parts[:-1]:
        if isinstance(cur, dict):
            nxt = cur.get(p, MISSING)
            if nxt is MISSING:
                if not create:
                    return MISSING
                nxt = cur[p] = {}
            cur = nxt
        elif isinstance(cur, list) and 0 <= array_index(p) < len(cur):
            cur = cur[array_index(p)]
        else:
            if not create:
                return MISSING
            raise InvalidCommandError(f"cannot descend into a {type(cur).__name__} at {show(p)}")
    return cur


def set_path(doc: dict[str, Any], parts: list[str], value: Any) -> None:
    parent = _parent(doc, parts, create=True)
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list) and 0 <= array_index(last) < len(parent):
        parent[array_index(last)] = value
    else:
        raise InvalidCommandError(
            f"cannot set {show('.'.join(parts))}: parent is not an object "
            "(or the index is past the array's end)"
        )


def unset_path(doc: dict[str, Any], parts: list[str]) -> None:
    parent = _parent(doc, parts, create=False)
    if isinstance(parent, dict):
        parent.pop(parts[-1], None)
    elif isinstance(parent, list) and 0 <= array_index(parts[-1]) < len(parent):
        parent[array_index(parts[-1])] = None  # arrays keep their length, as in MongoDB
