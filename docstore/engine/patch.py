"""Patches: ``{"$set": {"a.b": 1}, "$inc": {"n": 2}, "$push": {"tags": "x"}, ...}``.

Operators: ``$set $unset $inc $mul $min $max $push $pull $addToSet``.  Each
takes a map from dotted path to argument.  ``$push`` and ``$addToSet`` take a
value or ``{"$each": [...]}``; ``$pull`` takes a value (removes equal
elements) or an operator expression such as ``{"$gte": 5}`` (removes elements
matching it).  A patch is validated as a whole before it touches anything and
applied to a copy, so a failing patch leaves the document unchanged.
"""

from __future__ import annotations

import math
from typing import Any

from docstore.engine.errors import InvalidCommandError, LimitError
from docstore.engine.filters import compile_filter
from docstore.engine.values import (
    INT_MAX,
    INT_MIN,
    MISSING,
    RESERVED,
    check_expires,
    check_value,
    clone,
    get_path,
    json_equal,
    set_path,
    show,
    sort_key,
    split_path,
    unset_path,
)

PATCH_OPS = frozenset(
    {"$set", "$unset", "$inc", "$mul", "$min", "$max", "$push", "$pull", "$addToSet"}
)


def check_patch(ops: object) -> dict[str, dict[str, Any]]:
    """Validate the shape of a patch; returns it."""
    if not isinstance(ops, dict) or not ops:
        raise InvalidCommandError("a patch is a non-empty object of operators")
    for op, fields in ops.items():
        if op not in PATCH_OPS:
            raise InvalidCommandError(f"unknown patch operator {show(op)}")
        if not isinstance(fields, dict) or not fields:
            raise InvalidCommandError(f"{op} takes a non-empty object of paths")
        for path, arg in fields.items():
            parts = split_path(path)
            if parts[0] in ("_key", "_rev"):
                raise InvalidCommandError(f"{show(path)} is set by the database")
            check_value(arg)
            if op in ("$inc", "$mul") and (
                isinstance(arg, bool) or not isinstance(arg, (int, float))
            ):
                raise InvalidCommandError(f"{op} takes a number for {show(path)}")
            if op == "$pull" and _is_expr(arg):
                compile_filter({"x": arg})
            if (
                op in ("$push", "$addToSet")
                and isinstance(arg, dict)
                and "$each" in arg
                and (set(arg) != {"$each"} or not isinstance(arg["$each"], list))
            ):
                raise InvalidCommandError(f"{op} {{'$each': [...]}} takes a list only")
    return ops


def _is_expr(arg: Any) -> bool:
    return isinstance(arg, dict) and bool(arg) and all(k.startswith("$") for k in arg)


def _each(arg: Any) -> list[Any]:
    if isinstance(arg, dict) and "$each" in arg:
        return list(arg["$each"])
    return [arg]


def _arith(op: str, path: str, cur: int | float, arg: int | float) -> int | float:
    """``cur + arg`` or ``cur * arg``, refused when it leaves the value range."""
    if type(cur) is int and type(arg) is int:
        # Both in range, so the result has at most 129 bits: cheap to compute and check.
        r: int | float = cur + arg if op == "$inc" else cur * arg
        if not INT_MIN <= r <= INT_MAX:
            raise LimitError(f"{op} on {show(path)} leaves the integer range -2**64 .. 2**64-1")
        return r
    try:
        r = float(cur) + float(arg) if op == "$inc" else float(cur) * float(arg)
    except OverflowError:
        r = math.inf
    if not math.isfinite(r):
        raise LimitError(f"{op} on {show(path)} gives a number that is not finite")
    return r


def apply_patch(doc: dict[str, Any], ops: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Return a patched copy of ``doc`` (which is not modified)."""
    out: dict[str, Any] = clone(doc)
    for op, fields in ops.items():
        for path, arg in fields.items():
            parts = split_path(path)
            cur = get_path(out, parts)
            if op == "$set":
                set_path(out, parts, clone(arg))
            elif op == "$unset":
                unset_path(out, parts)
            elif op in ("$inc", "$mul"):
                if cur is MISSING:
                    set_path(out, parts, arg if op == "$inc" else 0)
                elif isinstance(cur, bool) or not isinstance(cur, (int, float)):
                    raise InvalidCommandError(f"{op} on {show(path)}, which is not a number")
                else:
                    set_path(out, parts, _arith(op, path, cur, arg))
            elif op in ("$min", "$max"):
                if cur is MISSING:
                    set_path(out, parts, clone(arg))
                else:
                    a, c = sort_key(arg), sort_key(cur)
                    if (op == "$min" and a < c) or (op == "$max" and a > c):
                        set_path(out, parts, clone(arg))
            elif op in ("$push", "$addToSet"):
                if cur is MISSING:
                    cur = []
                    set_path(out, parts, cur)
                elif not isinstance(cur, list):
                    raise InvalidCommandError(f"{op} on {show(path)}, which is not an array")
                for item in _each(arg):
                    if op == "$push" or not any(json_equal(item, x) for x in cur):
                        cur.append(clone(item))
            elif op == "$pull":
                if cur is MISSING:
                    continue
                if not isinstance(cur, list):
                    raise InvalidCommandError(f"$pull on {show(path)}, which is not an array")
                if _is_expr(arg):
                    pred = compile_filter({"x": arg})
                    cur[:] = [x for x in cur if not pred({"x": x})]
                else:
                    cur[:] = [x for x in cur if not json_equal(x, arg)]
    check_expires(out)
    for r in RESERVED[:2]:
        if r in out and not isinstance(out[r], (str, int)):
            raise InvalidCommandError(f"{r} is set by the database")
    return out
