"""Nasty docstore commands, queries and log entries, each labelled with its class.

Theory of operation.  One generator, two sources of choices.  :class:`Nasty`
builds every command of docs/docstore.md ("Command reference") and every
query, first plausible (they hit real documents: :data:`SETUP` puts a list at
``arr``, ``2**64-1`` at ``n``), then bent by one *class* of nastiness: byte
string keys anywhere, path segments that ``int()`` accepts but that are not
ASCII digits, integers at and past the CBOR range, ``$inc``/``$mul`` chains,
NaN, wrong field types, unknown fields, deep nesting, over-long names,
nested batches, extension names no node has code for, ...  Every decision
goes through a :class:`Chooser`:

* :class:`RandomChooser` (a seeded ``random.Random``) for the live fuzz of
  a cluster (``tests/chaos/docstore_fuzz.py``): a seed replays a run;
* :class:`DrawChooser` (a Hypothesis ``draw``) for the property tests
  (``tests/docstore/test_apply_total.py``): each choice is a Hypothesis
  draw, so a failure shrinks to the simplest command of its class (options
  are listed simplest first).

Every item is a :class:`Case`: the class label and the value, so that a run
can count what it sent and what came back per class.  Nothing here imports
the engine: the generator must not share the code it attacks.
"""

from __future__ import annotations

import copy
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import cbor2
from hypothesis import strategies as st

from docstore.engine.validate import COMMAND_FIELDS
from trioraft.transport.codec import ProtocolError, decode_frame, encode_frame
from trioraft.transport.messages import ClientResponse

T = TypeVar("T")

COLLS = ("c", "d")
KEYS = ("a", "b", "k")
FIELDS = ("n", "arr", "s", "o.x", "arr.0", "o", "big", "neg", "f", "o.arr.0")

#: The state every sequence starts from: the documents the nasty paths and
#: arithmetic are aimed at.
SETUP: list[dict[str, Any]] = [
    {
        "op": "put",
        "coll": "c",
        "key": "a",
        "doc": {
            "n": 2**64 - 1,
            "arr": [1, 2, 3],
            "s": "x",
            "o": {"x": 1, "arr": [[1], 2]},
            "big": 2**63,
            "neg": -(2**64),
            "f": 1e308,
        },
    },
    {"op": "put", "coll": "c", "key": "b", "doc": {"n": 5, "arr": [3, "x", None], "s": "y"}},
    {"op": "create_index", "coll": "c", "fields": ["n"]},
    {"op": "put", "coll": "d", "key": "k", "doc": {"arr": [], "n": -(2**64), "_expires": 10**13}},
]


def sweep_commands(coll: str) -> list[dict[str, Any]]:
    """Writes that touch every document of ``coll``: whatever a nasty command managed to
    store, these must answer (an error result, never ``internal``) and stay agreed."""
    return [
        {"op": "update_many", "coll": coll, "filter": {}, "ops": {"$set": {"swept": 1}}},
        {"op": "delete_many", "coll": coll, "filter": {"swept": {"$ne": 1}}},
        {"op": "create_index", "coll": coll, "fields": ["s", "n"], "name": "sweep"},
        {
            "op": "update_many",
            "coll": coll,
            "filter": {"arr": {"$exists": True}},
            "ops": {"$inc": {"n": 1}},
        },
        {"op": "expire", "now_ms": 10**13 + 1, "coll": coll},
    ]


def sweep_queries(coll: str, keys: Sequence[str] = KEYS) -> list[dict[str, Any]]:
    """Reads that touch every document of ``coll`` (with and without a reader's clock)."""
    out: list[dict[str, Any]] = [
        {"op": "find", "coll": coll},
        {"op": "find", "coll": coll, "filter": {"n": {"$gte": 0}}, "sort": "-n"},
        {"op": "find", "coll": coll, "sort": [["arr", 1], ["o.x", -1]], "now_ms": 10**12},
        {"op": "count", "coll": coll, "filter": {"$or": [{"s": "x"}, {"arr.0": 1}]}},
        {"op": "scan", "coll": coll, "now_ms": 1},
        {"op": "get_multi", "coll": coll, "keys": list(keys)},
    ]
    out += [{"op": "get", "coll": coll, "key": k, "now_ms": 10**12} for k in keys]
    return out


#: Extension code the property tests' registry holds (see :func:`make_registry`).
KNOWN_TYPES = ("acct",)
KNOWN_COMMANDS = ("echo", "find", "boom")
UNKNOWN_NAMES = ("ghost", "zz")

#: Codes an error result of apply (or of a query) may carry (docs/docstore.md),
#: plus any other answer code the engine defines (see :func:`answer_codes`).
DOCUMENTED_CODES = frozenset(
    {
        "conflict",
        "unique_violation",
        "not_found",
        "invalid",
        "limit",
        "validation",
        "unknown_command",
        "stale_sequence",
        "registry",
        "resync_required",
    }
)
#: Never an answer to a command: a bug owned up to, or a broken replica.
NOT_ANSWERS = frozenset({"internal", "error", "corruption", "closed"})


def answer_codes() -> frozenset[str]:
    """The documented codes and those of the engine's other error classes, minus
    :data:`NOT_ANSWERS` (``internal`` is the engine owning up to a bug)."""
    from docstore.engine.errors import DocstoreError

    found: set[str] = set()
    todo = [DocstoreError]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        found.add(str(cls.code))
    return frozenset((found | DOCUMENTED_CODES) - NOT_ANSWERS)


COMMAND_CLASSES = (
    "valid",
    "bytes-key",
    "path-digits",
    "path-grammar",
    "int-range",
    "arith",
    "float",
    "type",
    "shape",
    "nesting",
    "size",
    "batch",
    "registry",
    "ttl",
    "operator",
    "index",
    "arbitrary",
)
#: ``NASTY_SKIP=ttl,arith`` leaves classes out (to look past a known bug by hand).
SKIP = frozenset(filter(None, os.environ.get("NASTY_SKIP", "").split(",")))
ACTIVE_COMMAND_CLASSES = tuple(c for c in COMMAND_CLASSES if c not in SKIP) or COMMAND_CLASSES
QUERY_CLASSES = (
    "valid",
    "bytes-key",
    "path-digits",
    "path-grammar",
    "int-range",
    "float",
    "type",
    "shape",
    "nesting",
    "size",
    "operator",
)

# ----------------------------------------------------------------------------
# The nasty constants, simplest first (Hypothesis shrinks towards the front).
# ----------------------------------------------------------------------------

#: Segments ``int()`` accepts (or nearly) that are not 1-9 ASCII digits.
DIGIT_SEGMENTS = (
    "²",
    "٣",
    "\uff11",  # fullwidth one
    "๓",
    "߁",
    "1_0",
    " 1",
    "1 ",
    "+1",
    "-1",
    "01",
    "9" * 10,
    "0" * 12,
    "1" * 5000,
    "٣" * 4400,
)
GRAMMAR_PATHS = (
    "",
    ".",
    "a..b",
    ".a",
    "a.",
    "$a",
    "a.$b",
    "arr.$",
    "a\x00b",
    "_key",
    "_rev",
    "_key.x",
    "_expires",
    "x" * 1100,
    ".".join(["a"] * 70),
    "é" * 300,
)
BIG_INTS = (
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64 - 1,
    2**64,
    -(2**64),
    -(2**64) - 1,
    2**128,
    -(2**200),
    10**1000,
)
FLOATS = (math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324, 0.5)
WRONG: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    -1,
    1.5,
    "",
    "x",
    b"x",
    [],
    [1],
    {},
    {"a": 1},
    2**64 - 1,
)
BYTE_KEYS = (b"k", b"$gt", b"", b"\xff", b"op", b"$set")
LONG_NAMES = (
    "c" * 129,
    "é" * 65,
    "$c",
    "c\x00",
    "",
    "k" * 257,
    "é" * 129,
    "😀" * 65,
)
PLAIN: tuple[Any, ...] = (
    0,
    1,
    -1,
    2,
    "x",
    "y",
    None,
    True,
    False,
    1.5,
    [],
    {},
    [1, 2],
    "a",
    [3, "x"],
)


class Chooser(Protocol):
    """Where every decision of the generator comes from."""

    def integer(self, lo: int, hi: int) -> int: ...

    def chance(self, percent: int) -> bool: ...

    def pick(self, options: Sequence[T]) -> T: ...

    def blob(self, max_size: int) -> bytes: ...


class RandomChooser:
    """Choices from a seeded :class:`random.Random` (the live fuzz)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def chance(self, percent: int) -> bool:
        return self.rng.randrange(100) < percent

    def pick(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]

    def blob(self, max_size: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, max_size))


class DrawChooser:
    """Choices drawn by Hypothesis: they shrink to the first option, the low bound, False."""

    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any]) -> None:
        self.draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return int(self.draw(st.integers(lo, hi)))

    def chance(self, percent: int) -> bool:
        return bool(self.draw(st.integers(0, 99)) >= 100 - percent)

    def pick(self, options: Sequence[T]) -> T:
        i: int = self.draw(st.integers(0, len(options) - 1))
        return options[i]

    def blob(self, max_size: int) -> bytes:
        return bytes(self.draw(st.binary(max_size=max_size)))


@dataclass(frozen=True, slots=True)
class Case:
    """One generated command, query, watch payload or raw entry, with its class."""

    label: str
    value: Any


def deep(depth: int, leaf: Any = 1, kind: str = "dict") -> Any:
    """A value nested ``depth`` levels (``{"a": {"a": ... leaf}}`` or ``[[... leaf]]``)."""
    v = leaf
    for _ in range(depth):
        v = {"a": v} if kind == "dict" else [v]
    return v


def all_dicts(v: Any, out: list[dict[Any, Any]] | None = None) -> list[dict[Any, Any]]:
    """Every map inside ``v`` (``v`` itself first), depth first."""
    out = [] if out is None else out
    if isinstance(v, dict):
        out.append(v)
        for x in v.values():
            all_dicts(x, out)
    elif isinstance(v, list):
        for x in v:
            all_dicts(x, out)
    return out


class Nasty:
    """The generator (see the module docstring).

    Example:
        gen = Nasty(RandomChooser(random.Random(7)))
        case = gen.command()        # Case("path-digits", {"op": "patch", ...})
    """

    def __init__(self, choose: Chooser) -> None:
        self.c = choose

    def pick(self, options: Sequence[T]) -> T:
        """One of ``options``; a fresh copy if it is a container (they get mutated)."""
        v = self.c.pick(options)
        return copy.deepcopy(v) if isinstance(v, (dict, list)) else v

    # ------------------------------------------------------------ plausible parts

    def coll(self) -> str:
        return self.pick(COLLS)

    def key(self) -> str:
        return self.pick(KEYS)

    def field(self) -> str:
        return self.pick(FIELDS)

    def plain(self) -> Any:
        return self.pick(PLAIN)

    def doc(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, make in (
            ("n", lambda: self.c.integer(-3, 9)),
            ("arr", lambda: [self.plain() for _ in range(self.c.integer(0, 3))]),
            ("s", lambda: self.pick(("x", "y", "z"))),
            ("o", lambda: {"x": self.plain(), "arr": [1, [2]]}),
            ("t", lambda: self.pick((True, False))),
        ):
            if self.c.chance(50):
                out[name] = make()
        return out

    def filter(self, depth: int = 0) -> dict[str, Any]:
        f = self.field()
        kind = self.c.integer(0, 9 if depth < 2 else 6)
        if kind == 0:
            return {}
        if kind == 1:
            return {f: self.plain()}
        if kind == 2:
            return {f: {self.pick(("$gt", "$gte", "$lt", "$lte")): self.pick((1, "x", 2.5))}}
        if kind == 3:
            return {f: {self.pick(("$in", "$nin")): [self.plain(), self.plain()]}}
        if kind == 4:
            return {f: {"$exists": self.pick((True, False))}}
        if kind == 5:
            return {f: {"$ne": self.plain()}}
        if kind == 6:
            return {f: {"$not": {"$gt": 1}}}
        if kind == 7:
            return {"$or": [self.filter(depth + 1), self.filter(depth + 1)]}
        if kind == 8:
            return {"$and": [self.filter(depth + 1)]}
        return {"$not": self.filter(depth + 1)}

    def ops(self) -> dict[str, Any]:
        f = self.field()
        op = self.pick(
            ("$set", "$unset", "$inc", "$mul", "$min", "$max", "$push", "$addToSet", "$pull")
        )
        arg: Any
        if op in ("$inc", "$mul"):
            arg = self.pick((1, 2, -1, 0, 0.5))
        elif op in ("$push", "$addToSet"):
            arg = self.pick((self.plain(), {"$each": [1, 2]}))
        elif op == "$pull":
            arg = self.pick((self.plain(), {"$gte": 2}))
        else:
            arg = self.plain()
        out = {op: {f: arg}}
        if self.c.chance(30):
            out.setdefault("$set", {})["s"] = "patched"
        return out

    def conditions(self) -> dict[str, Any]:
        which = self.c.integer(0, 3)
        if which == 1:
            return {"if_rev": self.c.integer(0, 6)}
        if which == 2:
            return {"if_exists": self.pick((True, False))}
        if which == 3:
            return {"if_match": self.filter()}
        return {}

    def plausible(self, op: str) -> dict[str, Any]:
        """A well-formed command of ``op`` (it may still fail on the state)."""
        coll, key = self.coll(), self.key()
        if op == "put":
            return {"op": "put", "coll": coll, "key": key, "doc": self.doc(), **self.conditions()}
        if op == "insert":
            return {"op": "insert", "coll": coll, "doc": self.doc()}
        if op == "patch":
            cmd: dict[str, Any] = {"op": "patch", "coll": coll, "key": key, "ops": self.ops()}
            if self.c.chance(50):
                cmd["upsert"] = True
            return {**cmd, **self.conditions()}
        if op == "delete":
            return {"op": "delete", "coll": coll, "key": key, **self.conditions()}
        if op == "update_many":
            return {"op": "update_many", "coll": coll, "filter": self.filter(), "ops": self.ops()}
        if op == "delete_many":
            return {"op": "delete_many", "coll": coll, "filter": self.filter()}
        if op == "batch":
            n = self.c.integer(0, 3)
            return {"op": "batch", "commands": [self.plausible(self.simple_op()) for _ in range(n)]}
        if op == "create_collection":
            cmd = {"op": "create_collection", "coll": self.pick((*COLLS, "e"))}
            if self.c.chance(40):
                cmd["type"] = self.pick((*KNOWN_TYPES, *UNKNOWN_NAMES))
            if self.c.chance(40):
                cmd["if_not_exists"] = True
            return cmd
        if op == "drop_collection":
            return {"op": "drop_collection", "coll": self.pick((*COLLS, "e"))}
        if op == "create_index":
            cmd = {"op": "create_index", "coll": coll, "fields": [self.field()]}
            if self.c.chance(30):
                cmd["unique"] = True
            if self.c.chance(30):
                cmd["name"] = self.pick(("i1", "i2"))
            return cmd
        if op == "drop_index":
            return {"op": "drop_index", "coll": coll, "name": self.pick(("n", "i1", "arr"))}
        if op == "expire":
            cmd = {"op": "expire"}
            if self.c.chance(60):
                cmd["now_ms"] = self.pick((0, 10**13, 10**14))
            if self.c.chance(40):
                cmd["coll"] = coll
            return cmd
        if op == "register":
            kind = self.pick(("type", "command"))
            names = KNOWN_TYPES if kind == "type" else KNOWN_COMMANDS
            return {
                "op": "register",
                "kind": kind,
                "name": self.pick((*names, *UNKNOWN_NAMES)),
                "version": self.pick((1, 2)),
            }
        assert op == "call", op
        name = self.pick((*KNOWN_COMMANDS, *UNKNOWN_NAMES))
        args: Any = self.filter() if name == "find" else [self.plausible(self.simple_op())]
        return {"op": "call", "name": name, "version": self.pick((1, 2)), "args": args}

    def simple_op(self) -> str:
        return self.pick(("put", "patch", "insert", "delete", "update_many", "delete_many"))

    # ------------------------------------------------------------------ commands

    def command(self, label: str | None = None) -> Case:
        """A command of class ``label`` (default: a class picked at random)."""
        label = label or self.pick(ACTIVE_COMMAND_CLASSES)
        make: Callable[[], Any] = getattr(self, "_c_" + label.replace("-", "_"))
        return Case(label, make())

    def any_op(self) -> str:
        return self.pick(COMMAND_OPS)

    def _c_valid(self) -> Any:
        return self.plausible(self.any_op())

    def _c_bytes_key(self) -> Any:
        op = self.pick(("update_many", "delete_many", "put", "patch", "insert", "call", "batch"))
        cmd = self.plausible(op)
        if op == "put" and "if_match" not in cmd:
            cmd["if_match"] = {self.field(): self.plain()}
        if op in ("update_many", "delete_many") and not cmd["filter"]:
            cmd["filter"] = {self.field(): {"$gt": 1}}
        targets = all_dicts(cmd)
        target = self.pick(targets[1:] or targets)
        bkey = self.pick(BYTE_KEYS)
        if target and self.c.chance(70):
            old = self.pick(list(target))
            value = target.pop(old)
            bkey = old.encode() if isinstance(old, str) else bkey
            target[bkey] = value
        else:
            target[bkey] = self.plain()
        return cmd

    def digit_path(self) -> str:
        seg = self.pick(DIGIT_SEGMENTS)
        shape = self.c.integer(0, 3)
        if shape == 0:
            return f"{self.pick(('arr', 'o.arr', 'o'))}.{seg}"
        if shape == 1:
            return seg
        if shape == 2:
            return f"arr.{seg}.x"
        return f"o.arr.{seg}.0"

    def _bent_path_command(self, path: Callable[[], Any]) -> Any:
        where = self.c.integer(0, 7)
        coll = self.pick(COLLS)
        if where == 0:
            op = self.pick(("$set", "$unset", "$inc", "$push", "$pull", "$max", "$addToSet"))
            arg = 1 if op != "$pull" else self.pick((1, {"$gte": 1}))
            cmd: dict[str, Any] = {
                "op": "patch",
                "coll": coll,
                "key": self.key(),
                "ops": {op: {path(): arg}},
            }
            if self.c.chance(50):
                cmd["upsert"] = True
            return cmd
        if where == 1:
            return {
                "op": "update_many",
                "coll": coll,
                "filter": {path(): self.pick((1, {"$gt": 0}, {"$exists": True}))},
                "ops": {"$set": {"c": 1}},
            }
        if where == 2:
            return {"op": "update_many", "coll": coll, "filter": {}, "ops": {"$set": {path(): 1}}}
        if where == 3:
            return {"op": "delete_many", "coll": coll, "filter": {path(): {"$ne": 9}}}
        if where == 4:
            return {
                "op": "put",
                "coll": coll,
                "key": self.key(),
                "doc": {},
                "if_match": {path(): 1},
            }
        if where == 5:
            return {"op": "create_index", "coll": coll, "fields": [path()]}
        if where == 6:
            return {"op": "create_index", "coll": coll, "fields": path(), "unique": True}
        return {"op": "batch", "commands": [self.plausible("put"), self._bent_path_command(path)]}

    def _c_path_digits(self) -> Any:
        return self._bent_path_command(self.digit_path)

    def _c_path_grammar(self) -> Any:
        return self._bent_path_command(lambda: self.pick(GRAMMAR_PATHS))

    def big_int(self) -> int:
        return self.pick(BIG_INTS)

    def _c_int_range(self) -> Any:
        n = self.big_int()
        coll, key = self.coll(), self.key()
        where = self.c.integer(0, 10)
        if where == 0:
            return {"op": "put", "coll": coll, "key": key, "doc": {"n": n}}
        if where == 1:
            return {"op": "put", "coll": coll, "key": key, "doc": {}, "if_rev": n}
        if where == 2:
            return {"op": "patch", "coll": "c", "key": "a", "ops": {self.arith_op(): {"n": n}}}
        if where == 3:
            return {"op": "delete_many", "coll": coll, "filter": {"n": {"$gt": n}}}
        if where == 4:
            return {
                "op": "update_many",
                "coll": coll,
                "filter": {"n": n},
                "ops": {"$set": {"m": n}},
            }
        if where == 5:
            return {"op": "expire", "now_ms": n}
        if where == 6:
            kind = self.pick(("type", "command"))
            name = self.pick(KNOWN_TYPES if kind == "type" else KNOWN_COMMANDS)
            return {"op": "register", "kind": kind, "name": name, "version": n}
        if where == 7:
            return {"op": "call", "name": "echo", "version": n, "args": []}
        if where == 8:
            return {"op": "put", "coll": coll, "key": key, "doc": {"_expires": n}}
        if where == 9:
            return {"op": "patch", "coll": "c", "key": "a", "ops": {"$set": {"o.x": [n]}}}
        return {"op": "delete", "coll": coll, "key": key, "if_match": {"arr": {"$in": [n]}}}

    def arith_op(self) -> str:
        return self.pick(("$inc", "$mul", "$min", "$max", "$set", "$push"))

    def _c_arith(self) -> Any:
        field = self.pick(("n", "neg", "big", "f", "o.x", "arr.0"))
        op = self.pick(("$inc", "$mul"))
        arg = self.pick((1, -1, 2, -2, 2**64 - 1, -(2**64), 0.5, 1e308, 2**63))
        one = {"op": "patch", "coll": "c", "key": "a", "ops": {op: {field: arg}}}
        shape = self.c.integer(0, 4)
        if shape == 0:
            return one
        if shape == 1:
            return {"op": "batch", "commands": [one] * self.c.integer(2, 40)}
        if shape == 2:
            # Crasher 5 on the unfixed engine: past 4,300 digits inside one batch.
            start = {"op": "put", "coll": "c", "key": "z", "doc": {"n": 10**1000}}
            mul = {"op": "patch", "coll": "c", "key": "z", "ops": {"$mul": {"n": 10**1000}}}
            return {"op": "batch", "commands": [start] + [mul] * self.c.integer(1, 6)}
        if shape == 3:
            mul = {"op": "patch", "coll": "c", "key": "a", "ops": {"$mul": {"n": 2**64 - 1}}}
            return {"op": "batch", "commands": [mul] * self.c.integer(2, 240)}
        return {"op": "update_many", "coll": "c", "filter": {}, "ops": {op: {field: arg}}}

    def _c_float(self) -> Any:
        x = self.pick(FLOATS)
        coll, key = self.coll(), self.key()
        where = self.c.integer(0, 7)
        if where == 0:
            return {"op": "put", "coll": coll, "key": key, "doc": {"f": x}}
        if where == 1:
            return {"op": "patch", "coll": "c", "key": "a", "ops": {self.arith_op(): {"f": x}}}
        if where == 2:
            return {"op": "delete_many", "coll": coll, "filter": {"f": {"$lt": x}}}
        if where == 3:
            return {"op": "put", "coll": coll, "key": key, "doc": {}, "if_rev": x}
        if where == 4:
            return {"op": "expire", "now_ms": x}
        if where == 5:
            return {"op": "register", "kind": "command", "name": "echo", "version": x}
        if where == 6:
            return {"op": "put", "coll": coll, "key": key, "doc": {"_expires": x}}
        return {
            "op": "update_many",
            "coll": coll,
            "filter": {"arr": x},
            "ops": {"$pull": {"arr": x}},
        }

    def _c_type(self) -> Any:
        cmd = self.plausible(self.any_op())
        fields = [k for k in cmd if k != "op"] or ["op"]
        cmd[self.pick(fields)] = self.pick(WRONG)
        return cmd

    def _c_shape(self) -> Any:
        which = self.c.integer(0, 9)
        if which == 0:
            return self.pick((None, 1, "put", b"put", [], ["op", "put"], 1.5, True))
        if which == 1:
            return {}
        if which == 2:
            return {"op": self.pick(("nope", "", "PUT", "get", "find", "put ", "_exec"))}
        if which == 3:
            cmd = self.plausible(self.any_op())
            cmd[self.pick(("extra", "_rev", "OP", "op2", "commands", "filter"))] = 1
            return cmd
        if which == 4:
            cmd = self.plausible(self.any_op())
            fields = [k for k in cmd if k != "op"]
            if fields:
                del cmd[self.pick(fields)]
            return cmd
        if which == 5:
            return {"op": b"put", "coll": "c", "key": "k", "doc": {}}
        if which == 6:
            return {"op": ["put"], "coll": "c", "key": "k", "doc": {}}
        if which == 7:
            return {"op": "digest"}
        if which == 8:
            odd: dict[Any, Any] = {"op": "put", "coll": "c", "key": "k", "doc": {}}
            odd[self.pick(("", 1, None))] = 1
            return odd
        return [self.plausible("put")]

    def _c_nesting(self) -> Any:
        d = self.pick((31, 32, 33, 40, 120))
        kind = self.pick(("dict", "list"))
        where = self.c.integer(0, 7)
        coll, key = self.coll(), self.key()
        if where == 0:
            return {"op": "put", "coll": coll, "key": key, "doc": {"v": deep(d, 1, kind)}}
        if where == 1:
            flt: Any = {"n": 1}
            for _ in range(d):
                flt = {"$and": [flt]}
            return {"op": "delete_many", "coll": coll, "filter": flt}
        if where == 2:
            flt = {"n": 1}
            for _ in range(d):
                flt = {"$not": flt}
            return {"op": "update_many", "coll": coll, "filter": flt, "ops": {"$set": {"x": 1}}}
        if where == 3:
            return {"op": "patch", "coll": "c", "key": "a", "ops": {"$set": {"o": deep(d)}}}
        if where == 4:
            return {"op": "put", "coll": coll, "key": key, "doc": {}, "if_match": {"o": deep(d)}}
        if where == 5:
            return {"op": "call", "name": "echo", "version": 1, "args": deep(d, [], kind)}
        if where == 6:
            return {"op": "delete_many", "coll": coll, "filter": {"arr": {"$in": [deep(d)]}}}
        return {"op": "patch", "coll": "c", "key": "a", "ops": {"$push": {"arr": deep(d, 1, kind)}}}

    def _c_size(self) -> Any:
        name = self.pick(LONG_NAMES)
        where = self.c.integer(0, 6)
        if where == 0:
            return {"op": "put", "coll": self.coll(), "key": name, "doc": {}}
        if where == 1:
            return {"op": "put", "coll": name, "key": "k", "doc": {}}
        if where == 2:
            return {"op": "create_index", "coll": "c", "fields": ["n"], "name": name}
        if where == 3:
            return {"op": "register", "kind": "command", "name": name, "version": 1}
        if where == 4:
            return {"op": "put", "coll": "c", "key": "k", "doc": {"s": "x" * (1 << 20)}}
        if where == 5:
            return {"op": "patch", "coll": "c", "key": "k", "ops": {"$set": {name or "q": 1}}}
        return {"op": "create_collection", "coll": name}

    def _c_batch(self) -> Any:
        which = self.c.integer(0, 6)
        if which == 0:
            return {"op": "batch", "commands": [{"op": "batch", "commands": []}]}
        if which == 1:
            put = {"op": "put", "coll": "c", "key": "k", "doc": {}}
            return {"op": "batch", "commands": [put] * self.pick((1000, 1001))}
        if which == 2:
            cmds = [self.plausible(self.simple_op()) for _ in range(self.c.integer(0, 3))]
            bad = self.command(self.pick(COMMAND_CLASSES[1:])).value
            cmds.insert(self.c.integer(0, len(cmds)), bad)
            return {"op": "batch", "commands": cmds}
        if which == 3:
            return {
                "op": "batch",
                "commands": [self._c_registry(), self._c_registry(), self.plausible("call")],
            }
        if which == 4:
            return {"op": "batch", "commands": self.pick(({}, None, "x", [None], [[]]))}
        if which == 5:
            inner = {"op": "batch", "commands": [self.plausible("put")]}
            return {"op": "call", "name": "echo", "version": 1, "args": [inner]}
        return {"op": "batch", "commands": [self.plausible("insert")] * self.c.integer(1, 20)}

    def _c_registry(self) -> Any:
        which = self.c.integer(0, 5)
        name = self.pick((*UNKNOWN_NAMES, *KNOWN_TYPES, *KNOWN_COMMANDS))
        version = self.pick((1, 2, 0, -1, 2**63 - 1, True))
        if which == 0:
            kind = self.pick(("type", "command", "types", "", None, b"type"))
            return {"op": "register", "kind": kind, "name": name, "version": version}
        if which == 1:
            return {"op": "create_collection", "coll": self.pick(("e", "c")), "type": name}
        if which == 2:
            return {"op": "call", "name": name, "version": version, "args": []}
        if which == 3:
            reg = {"op": "register", "kind": "type", "name": name, "version": 1}
            make = {"op": "create_collection", "coll": "e", "type": name}
            return {
                "op": "batch",
                "commands": [reg, make, {"op": "insert", "coll": "e", "doc": {}}],
            }
        if which == 4:
            reg = {"op": "register", "kind": "command", "name": name, "version": 1}
            call = {"op": "call", "name": name, "version": 1, "args": []}
            return {"op": "batch", "commands": [reg, call]}
        sub = self.command(self.pick(COMMAND_CLASSES[1:6])).value
        return {"op": "call", "name": self.pick(KNOWN_COMMANDS), "version": 1, "args": [sub]}

    def _c_ttl(self) -> Any:
        if self.c.chance(50):
            cmd: dict[str, Any] = {"op": "expire"}
            if self.c.chance(70):
                cmd["now_ms"] = self.pick((0, 10**13, 2**63 - 1, -1, True, "1", None))
            cmd["coll"] = self.pick(([], {}, 1, b"c", "c", "$c", None, "nope", ["c"]))
            return cmd
        exp: Any = self.pick((0, 1, -1, 10**13, 2**63, 1.5, True, "1", None, [1], {}))
        return {"op": "put", "coll": self.coll(), "key": self.key(), "doc": {"_expires": exp}}

    def _c_operator(self) -> Any:
        if self.c.chance(50):
            flt = self.pick(
                (
                    {"n": {"$foo": 1}},
                    {"$foo": 1},
                    {"n": {"$in": 1}},
                    {"n": {"$exists": 1}},
                    {"n": {"$not": 1}},
                    {"n": {"$gt": {}}},
                    {"n": {"$gt": True}},
                    {"n": {"$gt": None}},
                    {"$and": []},
                    {"$and": {}},
                    {"$or": [1]},
                    {"$not": []},
                    {"n": {"$eq": 1, "x": 2}},
                    {"n": {}},
                    {"n": {"$not": {}}},
                    {"arr": {"$in": [[1, 2], {"a": 1}]}},
                )
            )
            if self.c.chance(50):
                return {"op": "delete_many", "coll": self.coll(), "filter": flt}
            return {"op": "put", "coll": "c", "key": "a", "doc": {}, "if_match": flt}
        ops = self.pick(
            (
                {"$foo": {"n": 1}},
                {"$set": {}},
                {"$set": 1},
                {},
                {"$push": {"arr": {"$each": 1}}},
                {"$push": {"arr": {"$each": [1], "x": 1}}},
                {"$pull": {"arr": {"$foo": 1}}},
                {"$inc": {"n": "1"}},
                {"$inc": {"n": True}},
                {"$unset": {"_key": 1}},
                {"$set": {"_rev": 1}},
                {"$inc": {"s": 1}},
                {"$push": {"s": 1}},
                {"$set": {"arr.9": 1}},
                {"$set": {"s.x": 1}},
                {"$set": {"_expires": "soon"}},
            )
        )
        return {"op": "patch", "coll": "c", "key": self.pick(("a", "b")), "ops": ops}

    def _c_index(self) -> Any:
        fields = self.pick(
            ([], ["n"] * 2, [f"f{i}" for i in range(9)], "n", [1], [["a"]], ["s", "arr"], "arr")
        )
        cmd: dict[str, Any] = {"op": "create_index", "coll": "c", "fields": fields}
        if self.c.chance(50):
            cmd["unique"] = True
        which = self.c.integer(0, 3)
        if which == 1:
            return {"op": "batch", "commands": [{**cmd, "name": f"i{i}"} for i in range(17)]}
        if which == 2:
            return {"op": "drop_index", "coll": "c", "name": self.pick((*LONG_NAMES, 1))}
        return cmd

    def any_value(self, depth: int = 0) -> Any:
        """Any CBOR-able value: text and byte keys, big ints, NaN, bytes, nesting."""
        kind = self.c.integer(0, 9 if depth < 4 else 5)
        if kind == 0:
            return self.pick(PLAIN)
        if kind == 1:
            return self.pick(BIG_INTS)
        if kind == 2:
            return self.pick(FLOATS)
        if kind == 3:
            return self.pick((*DIGIT_SEGMENTS[:11], *GRAMMAR_PATHS[:9], *BYTE_KEYS))
        if kind == 4:
            return self.c.integer(-(2**70), 2**70)
        if kind == 5:
            return self.pick(WRONG)
        if kind in (6, 7):
            return [self.any_value(depth + 1) for _ in range(self.c.integer(0, 3))]
        out: dict[Any, Any] = {}
        for _ in range(self.c.integer(0, 3)):
            k: Any = self.pick((*ALL_FIELDS, "op", *BYTE_KEYS, "$set", "$gt", "arr.²", ""))
            out[k] = self.any_value(depth + 1)
        return out

    def _c_arbitrary(self) -> Any:
        """A map with an ``op`` and arbitrary fields, or any value at all."""
        if self.c.chance(15):
            return self.any_value()
        cmd: dict[Any, Any] = {"op": self.pick((*COMMAND_OPS, "nope"))}
        for _ in range(self.c.integer(0, 5)):
            cmd[self.pick((*ALL_FIELDS, *BYTE_KEYS))] = self.any_value(1)
        return cmd

    # ------------------------------------------------------------------- queries

    def query(self, label: str | None = None) -> Case:
        label = label or self.pick(QUERY_CLASSES)
        q: Any = self.plausible_query()
        if label == "bytes-key":
            q["filter"] = {b"k": 1} if self.c.chance(50) else {"arr": {b"$gt": 1}}
            if self.c.chance(30):
                q = {"op": "count", "coll": "c", b"filter": {}}
        elif label == "path-digits":
            q = self.path_query(self.digit_path)
        elif label == "path-grammar":
            q = self.path_query(lambda: self.pick(GRAMMAR_PATHS))
        elif label == "int-range":
            name = self.pick(("limit", "now_ms", "filter"))
            n = self.big_int()
            q = {"op": "find", "coll": "c", name: {"n": {"$lte": n}} if name == "filter" else n}
        elif label == "float":
            name = self.pick(("limit", "now_ms", "filter"))
            x = self.pick(FLOATS)
            q = {"op": "find", "coll": "c", name: {"f": x} if name == "filter" else x}
        elif label == "type":
            fields = [k for k in q if k != "op"] or ["op"]
            q[self.pick(fields)] = self.pick(WRONG)
        elif label == "shape":
            q = self.pick(
                (
                    None,
                    [],
                    {},
                    {"op": "nope"},
                    {"op": "get"},
                    {"op": "get_multi", "coll": "c", "keys": ["a"] * 10_001},
                    {"op": "find", "coll": "c", "extra": 1},
                    {"op": "put", "coll": "c", "key": "k", "doc": {}},
                    {"op": "sessions", "x": 1},
                    {"op": "digest", "consistency": "strong"},
                )
            )
        elif label == "nesting":
            flt: Any = {"n": 1}
            for _ in range(self.pick((32, 33, 200))):
                flt = {"$or": [flt]}
            q = {"op": "count", "coll": "c", "filter": flt}
        elif label == "size":
            name = self.pick(LONG_NAMES)
            q = {"op": self.pick(("get", "get_multi")), "coll": "c", "key": name, "keys": [name]}
            q.pop("keys" if q["op"] == "get" else "key")
        elif label == "operator":
            q["filter"] = self._c_operator().get("filter", {"n": {"$foo": 1}})
        return Case(label, q)

    def plausible_query(self) -> dict[str, Any]:
        op = self.pick(
            ("get", "find", "scan", "count", "collections", "digest", "get_multi", "sessions")
        )
        q: dict[str, Any] = {"op": op}
        if op in ("get", "find", "scan", "count", "get_multi"):
            q["coll"] = self.coll()
        if op == "get":
            q["key"] = self.key()
        if op == "get_multi":
            q["keys"] = [self.key() for _ in range(self.c.integer(0, 3))]
        if op in ("find", "count"):
            q["filter"] = self.filter()
        if op == "find" and self.c.chance(40):
            q["sort"] = self.pick(("n", "-s", [["arr.0", -1]], [["n", 1], ["s", -1]]))
        if op in ("find", "scan") and self.c.chance(40):
            q["limit"] = self.c.integer(0, 3)
        if op == "scan":
            for name in ("prefix", "start", "end"):
                if self.c.chance(30):
                    q[name] = self.pick(("a", "b", ""))
        if self.c.chance(20):
            q["now_ms"] = self.pick((0, 10**13, 10**14))
        return q

    def path_query(self, path: Callable[[], Any]) -> dict[str, Any]:
        which = self.c.integer(0, 2)
        if which == 0:
            return {"op": "find", "coll": "c", "filter": {path(): 1}}
        if which == 1:
            return {"op": "find", "coll": "c", "sort": self.pick((path(), [[path(), -1]]))}
        return {"op": "count", "coll": "c", "filter": {"$or": [{path(): {"$exists": True}}]}}

    # ------------------------------------------------------------------- watches

    def watch(self) -> Case:
        """A ``watch`` payload (``coll``, ``filter``, ``since_rev``, ``buffer``), bent."""
        label = self.pick(
            ("valid", "bytes-key", "path-digits", "path-grammar", "type", "int-range")
        )
        p: dict[Any, Any] = {"coll": self.pick(COLLS), "filter": self.filter()}
        if label == "bytes-key":
            p["filter"] = self.pick(({b"k": 1}, {"arr": {b"$gt": 1}}, {"$or": [{b"n": 1}]}))
        elif label == "path-digits":
            p["filter"] = {self.digit_path(): self.pick((1, {"$exists": True}, {"$ne": 0}))}
        elif label == "path-grammar":
            p["filter"] = {self.pick(GRAMMAR_PATHS): 1}
        elif label == "type":
            name = self.pick(("coll", "filter", "since_rev", "buffer"))
            p[name] = self.pick(WRONG)
        elif label == "int-range":
            p[self.pick(("since_rev", "buffer"))] = self.pick((0, -1, *BIG_INTS[:8]))
        return Case(label, p)

    def watch_filter(self) -> Case:
        """The filter of a watch on the state machine (a ``watch`` payload's ``filter``)."""
        case = self.watch()
        value = case.value.get("filter") if isinstance(case.value, dict) else None
        return Case(case.label, value)

    # ------------------------------------------------------------------- garbage

    def garbage(self) -> Case:
        """Entry data that is not a command's canonical CBOR."""
        which = self.c.integer(0, 3)
        if which == 0:
            return Case("garbage", self.pick(RAW_GARBAGE))
        if which == 1:
            return Case("garbage", self.c.blob(40))
        if which == 2:
            data = encode(self.plausible(self.any_op()))
            return Case("garbage", data[: self.c.integer(0, max(0, len(data) - 1))])
        # A tagged value where a command field is expected.
        tag = self.pick(TAGGED)
        head = cbor2.dumps({"op": "put", "coll": "c", "key": "t"})
        return Case("garbage", bytes([head[0] + 1]) + head[1:] + b"\x63doc" + tag)


#: Raw entry data: not CBOR, or CBOR the protocol forbids (tags, cycles,
#: undefined, duplicate and non-text keys, invalid UTF-8, huge length claims).
RAW_GARBAGE = (
    b"",
    b"\xff",
    b"\x00",
    b"\x81" * 1000 + b"\x00",
    b"\x5b" + b"\xff" * 8,
    b"\x9b\x00\x00\x00\x01\x00\x00\x00\x00",
    b"\xd8\x1c\x81\xd8\x1d\x00",  # a list that contains itself
    b"\xd8\x1c\xa2\x62op\x65batch\x68commands\x81\xd8\x1d\x00",  # a batch holding itself
    b"\xd9\x01\x02\x82\x01\x02",  # a set
    b"\x62\xff\xfe",  # invalid UTF-8
    b"\xf7",  # undefined
    b"\xa2\x62op\x63put\x62op\x66delete",  # duplicate keys
    b"\xa1\x81\x01\x02",  # an array as a map key
    b"\xa1\xa1\x61a\x01\x02",  # a map as a map key
    b"\xa1\x01\x02",  # an integer key
    b"\xbf\x62op\x63put\xff",  # indefinite length
    b"\xa2\x62op\x66expire\x64coll\xd8\x1c\x81\xd8\x1d\x00",  # expire of a self-list
)
#: CBOR-tagged values (each decodes to a non-JSON Python object).
TAGGED = (
    b"\xc0\x74" + b"2013-03-21T20:04:00Z",  # datetime
    b"\xc2\x49\x01" + b"\x00" * 8,  # bignum 2**64
    b"\xc4\x82\x21\x19\x6a\xb3",  # decimal fraction
    b"\xd8\x23\x63a+b",  # regex
    b"\xd9\x01\x02\x82\x01\x02",  # set
    b"\xd8\x1c\xa1\x61a\xd8\x1d\x00",  # a map that contains itself
    b"\xf0",  # simple value
    b"\xf9\x7e\x00",  # half-float NaN
)


def encode(value: Any) -> bytes:
    """Entry data for ``value`` (canonical CBOR like ``encode_command``, plain if needed)."""
    try:
        return bytes(cbor2.dumps(value, canonical=True))
    except Exception:
        return bytes(cbor2.dumps(value))


# ----------------------------------------------------------------------------
# Checks shared by the tests
# ----------------------------------------------------------------------------


def wire_problem(value: object) -> str | None:
    """Why ``value`` cannot be a ClientResponse result (docs/protocol.md), or None.

    Encodes it in a frame and decodes it back with the real codec.
    """
    try:
        frame = encode_frame([ClientResponse(1, True, value)])
        decode_frame(frame)
    except (ProtocolError, TypeError, ValueError, OverflowError) as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


def plain_problem(value: object, depth: int = 0) -> str | None:
    """Why ``value`` is not plain data a client can be sent (any depth), or None.

    Text or byte keys, integers in -2**64 .. 2**64-1, finite floats.
    """
    t = type(value)
    if value is None or t is bool or t is str or t is bytes:
        return None
    if t is int:
        if -(2**64) <= value < 2**64:  # type: ignore[operator]
            return None
        return f"integer out of range ({value.bit_length()} bits)"  # type: ignore[attr-defined]
    if t is float:
        return None if math.isfinite(value) else f"float {value!r}"  # type: ignore[arg-type]
    if depth > 200:
        return "nested more than 200 levels"
    if t is list:
        for x in value:  # type: ignore[attr-defined]
            p = plain_problem(x, depth + 1)
            if p:
                return p
        return None
    if t is dict:
        for k, x in value.items():  # type: ignore[attr-defined]
            if type(k) is not str and type(k) is not bytes:
                return f"map key {safe_repr(k)}"
            p = plain_problem(x, depth + 1)
            if p:
                return p
        return None
    return f"{t.__name__} value"


def result_problem(result: object) -> str | None:
    """Why ``result`` is not a proper apply result (map, ``ok`` bool, documented code)."""
    if not isinstance(result, dict) or type(result.get("ok")) is not bool:
        return f"not a result map: {safe_repr(result)}"
    if result["ok"] is False and result.get("error") not in answer_codes():
        return f"error code {result.get('error')!r}: {str(result.get('message'))[:300]}"
    return wire_problem(result)


def safe_repr(v: object, width: int = 160) -> str:
    """``repr`` cut to ``width``; never fails (huge integers, cycles, odd types)."""
    try:
        r = _short(v, 0)
    except Exception as exc:
        r = f"<unprintable {type(v).__name__}: {type(exc).__name__}>"
    return r if len(r) <= width else r[: width - 3] + "..."


def _short(v: object, depth: int) -> str:
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 256:
        return f"<int of {v.bit_length()} bits>"
    if isinstance(v, str) and len(v) > 40:
        return repr(v[:20]) + f"+<{len(v) - 20} chars>"
    if isinstance(v, bytes) and len(v) > 40:
        return repr(v[:20]) + f"+<{len(v) - 20} bytes>"
    if depth > 6:
        return "..."
    if isinstance(v, dict):
        items = list(v.items())
        inner = ", ".join(f"{_short(k, depth + 1)}: {_short(x, depth + 1)}" for k, x in items[:8])
        return "{" + inner + (", ..." if len(items) > 8 else "") + "}"
    if isinstance(v, list):
        inner = ", ".join(_short(x, depth + 1) for x in v[:8])
        return "[" + inner + (f", ...<{len(v)}>" if len(v) > 8 else "") + "]"
    return repr(v)


# ----------------------------------------------------------------------------
# Hypothesis strategies
# ----------------------------------------------------------------------------


@st.composite
def commands(draw: Callable[[st.SearchStrategy[Any]], Any]) -> Case:
    """A labelled nasty command."""
    return Nasty(DrawChooser(draw)).command()


@st.composite
def queries(draw: Callable[[st.SearchStrategy[Any]], Any]) -> Case:
    """A labelled nasty query."""
    return Nasty(DrawChooser(draw)).query()


@st.composite
def watch_filters(draw: Callable[[st.SearchStrategy[Any]], Any]) -> Case:
    return Nasty(DrawChooser(draw)).watch_filter()


@st.composite
def entry_data(draw: Callable[[st.SearchStrategy[Any]], Any]) -> Case:
    """Entry data: mostly an encoded nasty command, sometimes garbage bytes."""
    gen = Nasty(DrawChooser(draw))
    if draw(st.integers(0, 9)) == 9:
        return gen.garbage()
    case = gen.command()
    return Case(case.label, encode(case.value))


def arbitrary_values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Any CBOR-able value: maps with text and byte keys, any ints, floats, bytes."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from(BIG_INTS),
        st.floats(),
        st.text(max_size=8),
        st.sampled_from(DIGIT_SEGMENTS[:11]),
        st.binary(max_size=8),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(
                st.one_of(st.text(max_size=6), st.binary(max_size=4)), inner, max_size=4
            ),
        ),
        max_leaves=max_leaves,
    )


@st.composite
def arbitrary_commands(draw: Callable[[st.SearchStrategy[Any]], Any]) -> Case:
    """A map with an ``op`` of every command and arbitrary other fields."""
    op = draw(st.sampled_from((*COMMAND_OPS, "nope")))
    fields = draw(
        st.dictionaries(
            st.one_of(st.sampled_from(ALL_FIELDS), st.binary(max_size=3)),
            arbitrary_values(),
            max_size=5,
        )
    )
    return Case("arbitrary", {"op": op, **fields})


#: Every command op, in the validator's order (stable, so seeds replay).
COMMAND_OPS = tuple(COMMAND_FIELDS)
ALL_FIELDS = (
    "coll",
    "key",
    "doc",
    "ops",
    "filter",
    "if_rev",
    "if_exists",
    "if_match",
    "upsert",
    "commands",
    "type",
    "if_not_exists",
    "fields",
    "unique",
    "name",
    "now_ms",
    "kind",
    "version",
    "args",
)


def make_registry() -> Any:
    """The extension code the property tests' replicas hold (all the same).

    ``acct`` (a type with a computed field), ``echo`` (returns its args as the
    commands to apply: nasty commands through the extension path), ``find``
    (reads with its args as the filter), ``boom`` (raises).
    """
    from docstore.engine.errors import ValidationError
    from docstore.engine.registry import CollectionType, CommandContext, Registry

    class Acct(CollectionType):
        name = "acct"
        version = 1

        def validate(self, doc: dict[str, Any]) -> None:
            if not isinstance(doc.get("owner", ""), str):
                raise ValidationError("owner is a string")

        def compute(self, doc: dict[str, Any]) -> dict[str, Any]:
            return {"owner_lower": str(doc.get("owner", "")).lower()}

    def echo(ctx: CommandContext, args: Any) -> list[dict[str, Any]]:
        return args if isinstance(args, list) else [args]

    def find(ctx: CommandContext, args: Any) -> list[dict[str, Any]]:
        ctx.find("c", args)
        return []

    def boom(ctx: CommandContext, args: Any) -> list[dict[str, Any]]:
        raise ValueError("boom")

    reg = Registry()
    reg.register_type(Acct())
    reg.register_command("echo", 1, echo)
    reg.register_command("find", 1, find)
    reg.register_command("boom", 1, boom)
    return reg
