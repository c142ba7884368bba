"""Filters: MongoDB-style query documents compiled to predicates.

``{"age": {"$gte": 18}, "tags": "x", "$or": [{"a.b": 1}, {"c": {"$exists": false}}]}``

Field operators: ``$eq $ne $gt $gte $lt $lte $in $nin $exists $not``; logical:
``$and $or $not`` (``$not`` at the top negates a whole filter).  A bare value
means ``$eq``.  When the field holds an array, ``$eq $gt ... $in`` match if
the array itself or any element matches; ``$ne`` and ``$nin`` are their
negations.  Range operators only compare values of the same type class
(numbers with numbers, strings with strings).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from docstore.engine.errors import InvalidCommandError
from docstore.engine.values import (
    MISSING,
    check_value,
    get_path,
    index_key,
    json_equal,
    rank,
    show,
    split_path,
)

Predicate = Callable[[dict[str, Any]], bool]
ValuePred = Callable[[Any], bool]

_RANGE: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}
FIELD_OPS = frozenset({"$eq", "$ne", "$in", "$nin", "$exists", "$not", *_RANGE})


def _any(v: Any, test: ValuePred) -> bool:
    if test(v):
        return True
    return isinstance(v, list) and any(test(x) for x in v)


def _eq(target: Any) -> ValuePred:
    return lambda v: v is not MISSING and _any(v, lambda x: json_equal(x, target))


def _in(targets: list[Any]) -> ValuePred:
    keys = {index_key(t) for t in targets}
    has_null = any(t is None for t in targets)

    def test(v: Any) -> bool:
        if v is MISSING:
            return has_null
        return _any(v, lambda x: index_key(x) in keys)

    return test


def _range(op: str, target: Any) -> ValuePred:
    cmp = _RANGE[op]
    r = rank(target)
    if r not in (1, 2):
        raise InvalidCommandError(f"{op} compares numbers or strings, got {show(target)}")

    def one(x: Any) -> bool:
        return rank(x) == r and bool(cmp(x, target))

    return lambda v: v is not MISSING and _any(v, one)


def _text_keys(m: dict[Any, Any], what: str) -> None:
    for k in m:
        if type(k) is not str:
            raise InvalidCommandError(f"{what} keys are strings, got {show(k)}")


def _field_pred(spec: Any) -> ValuePred:
    """Predicate on a field's value (MISSING when absent)."""
    if isinstance(spec, dict):
        _text_keys(spec, "filter")
    if not (isinstance(spec, dict) and spec and any(k.startswith("$") for k in spec)):
        check_value(spec)
        if spec is None:  # {"f": null} matches null or missing, as in MongoDB
            return lambda v: v is MISSING or v is None or (isinstance(v, list) and None in v)
        return _eq(spec)
    if not all(k.startswith("$") for k in spec):
        raise InvalidCommandError(f"cannot mix operators and fields in {show(spec)}")
    preds: list[ValuePred] = []
    for op, arg in spec.items():
        if op not in FIELD_OPS:
            raise InvalidCommandError(f"unknown operator {show(op)}")
        if op == "$eq":
            preds.append(_field_pred({"$in": [arg]}) if arg is None else _eq(_checked(arg)))
        elif op == "$ne":
            preds.append(_negate(_field_pred({"$eq": arg})))
        elif op in ("$in", "$nin"):
            if not isinstance(arg, list):
                raise InvalidCommandError(f"{op} takes a list, got {show(arg)}")
            check_value(arg)
            preds.append(_in(arg) if op == "$in" else _negate(_in(arg)))
        elif op == "$exists":
            if not isinstance(arg, bool):
                raise InvalidCommandError("$exists takes true or false")
            preds.append(_exists(arg))
        elif op == "$not":
            if not isinstance(arg, dict):
                raise InvalidCommandError("$not takes an operator expression")
            preds.append(_negate(_field_pred(arg if arg else {"$exists": True})))
        else:
            preds.append(_range(op, _checked(arg)))
    if len(preds) == 1:
        return preds[0]
    return _all(preds)


def _negate(p: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: not p(v)


def _exists(want: bool) -> ValuePred:
    return lambda v: (v is not MISSING) == want


def _all(preds: list[Callable[[Any], bool]]) -> Callable[[Any], bool]:
    return lambda v: all(p(v) for p in preds)


def _any_of(preds: list[Predicate]) -> Predicate:
    return lambda d: any(p(d) for p in preds)


def _at(parts: list[str], vp: ValuePred) -> Predicate:
    return lambda d: vp(get_path(d, parts))


def _checked(v: Any) -> Any:
    check_value(v)
    return v


def compile_filter(flt: object) -> Predicate:
    """Compile a filter; raises :class:`InvalidCommandError` if malformed.

    Example:
        >>> compile_filter({"n": {"$gt": 1}})({"n": 2})
        True
    """
    if flt is None:
        return lambda d: True
    if not isinstance(flt, dict):
        raise InvalidCommandError(f"a filter is an object, got {type(flt).__name__}")
    _text_keys(flt, "filter")
    preds: list[Predicate] = []
    for key, spec in flt.items():
        if key in ("$and", "$or"):
            if not isinstance(spec, list) or not spec:
                raise InvalidCommandError(f"{key} takes a non-empty list of filters")
            subs = [compile_filter(s) for s in spec]
            preds.append(_all(subs) if key == "$and" else _any_of(subs))
        elif key == "$not":
            preds.append(_negate(compile_filter(spec)))
        elif key.startswith("$"):
            raise InvalidCommandError(f"unknown top-level operator {show(key)}")
        else:
            preds.append(_at(split_path(key), _field_pred(spec)))
    if not preds:
        return lambda d: True
    if len(preds) == 1:
        return preds[0]
    return _all(preds)


def equality_constraints(flt: object) -> dict[str, list[Any]]:
    """Fields the filter pins to one of a few non-null values (for index selection).

    A document can only match if its field equals (or, for arrays, contains)
    one of the listed values.
    """
    out: dict[str, list[Any]] = {}
    if not isinstance(flt, dict):
        return out
    for key, spec in flt.items():
        if not isinstance(key, str):
            continue
        if key == "$and" and isinstance(spec, list):
            for sub in spec:
                for k, v in equality_constraints(sub).items():
                    out.setdefault(k, v)
        elif key.startswith("$"):
            continue
        elif isinstance(spec, dict) and spec and all(str(k).startswith("$") for k in spec):
            if "$eq" in spec and spec["$eq"] is not None:
                out[key] = [spec["$eq"]]
            elif (
                "$in" in spec
                and isinstance(spec["$in"], list)
                and spec["$in"]
                and None not in spec["$in"]
            ):
                out[key] = list(spec["$in"])
        elif spec is not None and (not isinstance(spec, dict) or spec):
            out[key] = [spec]
    return out
