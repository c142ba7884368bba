"""The validators' fast paths (a plain put, a plain get) give exactly what the general
paths give.

A put without conditions is the common write, and the node, the client and
every replica's apply validate it: :func:`validate._plain_put` accepts it
without a call per field, and leaves everything else to :func:`validate._validate`.
A get is the common read, checked by the node and again by the state
machine: :func:`validate.validate_query` accepts a plain one itself and leaves
the rest to :func:`validate._validate_query`.  If a fast path accepted what
the general path refuses, a bad command would reach the log (or a replica
would apply what another refuses); these tests compare the two over inputs
built near every boundary the general path checks.
"""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from docstore.engine import validate
from docstore.engine.errors import DocstoreError
from docstore.engine.validate import sizes_bounded, validate_command
from docstore.engine.values import INT_MAX, INT_MIN, Limits


class _Str(str):
    """A str subclass: the general path's isinstance checks accept it, type checks do not."""


class _Dict(dict):  # type: ignore[type-arg]
    """A dict subclass: check_document accepts it, check_value does not."""


def _mostly(
    good: st.SearchStrategy[Any], odd: st.SearchStrategy[Any], one_in: int = 8
) -> st.SearchStrategy[Any]:
    """``odd`` once in ``one_in`` draws, else ``good``: most commands are a plain put
    with at most one thing wrong, the cases the fast path must tell apart."""
    return st.sampled_from(range(one_in)).flatmap(lambda i: odd if i == 0 else good)


_ascii = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=9)
_names = _mostly(
    _ascii,
    st.one_of(
        # Around the limits, in characters and in UTF-8 bytes.
        st.sampled_from(["", "$x", "a\x00b", "ü", "x" * 8, "x" * 9, "x" * 128, "x" * 129]),
        st.sampled_from(["é" * 4, "é" * 5, "é" * 64, "é" * 65, "é" * 128, "é" * 200]),
        st.text(max_size=10),
        st.builds(_Str, st.sampled_from(["bench", "$"])),
        st.sampled_from([None, 1, b"bench", ["c"]]),
    ),
)
_ints = st.one_of(
    st.sampled_from([0, -1, INT_MIN, INT_MAX, INT_MIN - 1, INT_MAX + 1, 2**70]),
    st.integers(min_value=-(2**65), max_value=2**65),
)
_leaves = _mostly(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(-1e9, 1e9), _ascii),
    st.one_of(
        _ints,
        st.floats(),
        st.text(max_size=12),
        st.sampled_from([b"bytes", (1, 2), _Str("s"), object(), True, 1.0, _Dict(a=1)]),
        st.sampled_from([float("nan"), float("inf"), -float("inf"), -0.0]),
    ),
)
_values = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(_mostly(_ascii, st.sampled_from([1, b"k", _Str("k")])), inner, max_size=3)
    ),
    max_leaves=10,
)
_docs = _mostly(
    st.dictionaries(
        _mostly(_ascii, st.sampled_from(["_expires", "_key", "", 1, b"v", None])),
        _mostly(_values, _leaves, one_in=2),  # the top level is the fast path's own loop
        max_size=4,
    ),
    st.sampled_from(
        [[], "doc", None, {1: "a"}, {"_expires": None}, {"_expires": 1.5}, _Dict(), _Dict(v=1)]
    ),
)
_ops = _mostly(st.just("put"), st.sampled_from(["delete", "insert", "batch", _Str("put"), 1]))
_extra = _mostly(
    st.just({}),
    st.dictionaries(
        st.sampled_from(["if_rev", "if_exists", "if_match", "upsert", "filter", "op2", 7]),
        st.one_of(st.none(), st.booleans(), st.integers(-1, 3), st.just({"a": 1})),
        min_size=1,
        max_size=2,
    ),
)
_limits = _mostly(
    st.just(Limits()),
    # One limit changed at a time, so that the command is not refused for another.
    st.one_of(
        st.builds(Limits, max_doc_bytes=st.sampled_from([16, 24, 64])),
        st.builds(Limits, max_key_bytes=st.sampled_from([1, 4, 9, 10])),
        st.builds(Limits, max_depth=st.integers(-1, 3)),
        st.builds(Limits, max_name_bytes=st.sampled_from([1, 8, 9, 10])),
    ),
    one_in=3,
)


@st.composite
def _commands(draw: st.DrawFn) -> object:
    cmd: dict[Any, Any] = {}
    for name, value in (
        ("op", _ops),
        ("coll", _names),
        ("key", _names),
        ("doc", _docs),
    ):
        if draw(st.integers(0, 19)):  # now and then a field is missing
            cmd[name] = draw(value)
    cmd.update(draw(_extra))
    return cmd if draw(st.integers(0, 29)) else draw(st.sampled_from([None, [], "put"]))


def _outcome(f: Any, cmd: object, *args: Any) -> object:
    try:
        out = f(cmd, *args)
    except (DocstoreError, UnicodeError, TypeError, ValueError) as exc:
        return (type(exc), str(exc), getattr(exc, "rev", None))
    assert out is cmd
    return "accepted"


@settings(max_examples=3000, deadline=None)
@given(
    _commands(),
    _limits,
    st.booleans(),
    st.one_of(st.none(), st.sampled_from([0, 10, 100_000, 10**7])),
)
@example({"op": "put", "coll": "c", "key": "k", "doc": {"v": 1}}, Limits(), True, None)
@example({"op": "put", "coll": "c", "key": "k", "doc": {"v": INT_MAX + 1}}, Limits(), True, None)
@example(
    {"op": "put", "coll": "c", "key": "k", "doc": {"v": {"w": [1]}}},
    Limits(max_depth=1),
    False,
    None,
)
@example(
    {"op": "put", "coll": "c", "key": "k", "doc": {"v": "x" * 40}},
    Limits(max_doc_bytes=16),
    True,
    10,
)
@example(
    {"op": "put", "coll": "c", "key": "k", "doc": {"v": "x" * 40}},
    Limits(max_doc_bytes=16),
    True,
    None,
)
def test_fast_path_answers_as_the_general_path(
    cmd: object, limits: Limits, sizes: bool, encoded_size: int | None
) -> None:
    measure = sizes and (encoded_size is None or not sizes_bounded(encoded_size, limits))
    general = _outcome(lambda c: validate._validate(c, limits, None, measure, "commands[0]."), cmd)
    fast = _outcome(
        lambda c: validate_command(
            c, limits, sizes=sizes, encoded_size=encoded_size, where="commands[0]."
        ),
        cmd,
    )
    assert fast == general
    if validate._plain_put(cmd, limits, measure):
        assert general == "accepted"


@settings(max_examples=300, deadline=None)
@given(_commands(), _limits)
def test_batch_items_answer_as_the_general_path(cmd: object, limits: Limits) -> None:
    # A batch's items go through validate_command too, named by their place.
    batch = {"op": "batch", "commands": [cmd]}
    item = _outcome(lambda c: validate._validate(c, limits, None, False, "commands[0]."), cmd)
    whole = _outcome(lambda b: validate_command(b, limits, sizes=False), batch)
    assert whole == item


def test_plain_puts_take_the_fast_path() -> None:
    # The put docstore.connect sends, and what a node decodes of it.
    for doc in ({"v": "x" * 96}, {}, {"n": 1, "f": 1.5, "t": True, "z": None, "l": [1, {"a": 2}]}):
        cmd = {"op": "put", "coll": "bench", "key": "k0001", "doc": doc}
        assert validate._plain_put(cmd, Limits(), True)
        assert validate_command(cmd) is cmd


_query_extra = _mostly(
    st.just({}),
    st.dictionaries(
        st.sampled_from(["consistency", "now_ms", "keys", "filter", "limit", "prefix", "doc", 7]),
        st.one_of(st.none(), st.sampled_from(["local", "lease", "x"]), st.integers(-1, 3)),
        min_size=1,
        max_size=2,
    ),
)


@st.composite
def _queries(draw: st.DrawFn) -> object:
    q: dict[Any, Any] = {}
    op = _mostly(st.just("get"), st.sampled_from(["get_multi", "find", "put", _Str("get"), 1]))
    for name, value in (("op", op), ("coll", _names), ("key", _names)):
        if draw(st.integers(0, 19)):  # now and then a field is missing
            q[name] = draw(value)
    q.update(draw(_query_extra))
    return q if draw(st.integers(0, 29)) else draw(st.sampled_from([None, [], "get"]))


@settings(max_examples=2000, deadline=None)
@given(_queries(), _limits)
@example({"op": "get", "coll": "c", "key": "k"}, Limits())
@example({"op": "get", "coll": "c", "key": "é" * 200}, Limits())
def test_plain_get_answers_as_the_general_path(q: object, limits: Limits) -> None:
    general = _outcome(lambda x: validate._validate_query(x, limits), q)
    assert _outcome(lambda x: validate.validate_query(x, limits), q) == general
