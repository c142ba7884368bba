"""The engine's path for a put without conditions gives exactly what the general path gives.

Every replica applies every write, and most writes are a plain put: once the
command is validated, :meth:`Engine._plain_put` writes it without dispatching
through ``_exec`` and ``_put`` (whose key check and condition check it would
pass), and skips measuring the stored document when the entry's CBOR size
bounds it (``encoded_size``, from :func:`state_machine._bounding_size`).  If
either were wrong, a replica would store what the general path refuses, or
answer differently.  These tests apply the same commands, decoded from their
CBOR as a replica does, to an engine with that path and one without it, with
document limits drawn from half to twelve times the command's size (so that
some puts skip the measuring and some are over the limit), and compare every
answer, effect, change and the apply log's bytes.  And the :class:`Change` each
put makes, built by its own ``__init__``, is what its frozen dataclass builds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from docstore.engine import Change, Engine, Limits
from docstore.engine.validate import JSON_BYTES_PER_CBOR_BYTE
from docstore.engine.values import compact_json
from docstore.state_machine import (
    DocstoreStateMachine,
    _bounding_size,
    decode_command,
    encode_command,
)
from docstore.storage.datafile import encode_record
from trioraft.core.types import Entry

_json = compact_json()

#: The half float whose JSON text is longest: 3 bytes of CBOR, 23 characters.
WORST_HALF = -1.7881393432617188e-07


class _General(Engine):
    """An engine that takes the general path for every command."""

    def _plain_put(self, cmd: dict[str, Any], *, measure: bool) -> dict[str, Any]:
        return self._exec(cmd, top=True)


_text = st.text(st.characters(max_codepoint=0x2FF), max_size=6) | st.sampled_from(
    ["\x01" * 40, "ü" * 20, '"\\' * 10]
)
_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False, width=16),
    st.floats(allow_nan=False, allow_infinity=False),
    st.just(WORST_HALF),
    _text,
)
_values = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=30,
)
_docs = st.dictionaries(
    _text | st.sampled_from(["_key", "_rev", "_expires", "u"]),
    _values | st.integers(0, 40),  # small integers: _expires around now, unique values
    max_size=5,
) | st.just({"": [WORST_HALF] * 60})
_keys = st.sampled_from(["k", "a", "\x01" * 30, "ü" * 40, "x" * 256, "x" * 257, ""]) | _text
_colls = st.sampled_from(["c", "d", "typed", "$x", "", "n" * 129]) | st.integers(0, 2)

_puts = st.fixed_dictionaries(
    {"op": st.just("put"), "coll": _colls, "key": _keys, "doc": _docs},
    optional={
        "if_rev": st.integers(0, 3) | st.none(),
        "if_exists": st.booleans(),
        "upsert": st.booleans(),
    },
)
_others = st.sampled_from(
    [
        {"op": "create_index", "coll": "c", "fields": ["u"], "unique": True},
        {"op": "create_index", "coll": "d", "fields": ["u"]},
        {"op": "delete", "coll": "c", "key": "k"},
        {"op": "expire"},
        {"op": "drop_collection", "coll": "d"},
        {"op": "batch", "commands": [{"op": "put", "coll": "c", "key": "b", "doc": {"u": 1}}]},
    ]
)
_steps = st.lists(
    st.tuples(
        st.one_of(_puts, _puts, _puts, _others),
        st.booleans(),  # shortest floats (canonical CBOR), as a client may send them
        st.floats(min_value=0.5, max_value=12),  # the document limit per byte of the command
        st.integers(0, 40),  # time
    ),
    min_size=1,
    max_size=12,
)


def _answer(eng: Engine, cmd: object, rev: int, now: int, size: int | None) -> Any:
    a = eng.apply(cmd, rev, now, encoded_size=size)
    return a.result, a.effects, a.changes, encode_record(rev, a.effects, t=1, ms=now)


@settings(max_examples=400, deadline=None)
@given(_steps)
@example([({"op": "put", "coll": "c", "key": "\x01" * 30, "doc": {}}, True, 6.0, 0)])
@example([({"op": "put", "coll": "c", "key": "k", "doc": {"": [WORST_HALF] * 60}}, True, 8.0, 0)])
def test_plain_puts_answer_as_the_general_path(steps: list[Any]) -> None:
    fast, general = Engine(), _General()
    for rev, (cmd, canonical, per_byte, now) in enumerate(steps, start=1):
        data = cbor2.dumps(cmd, canonical=canonical)
        decoded = decode_command(data)
        limits = Limits(max_doc_bytes=max(1, int(len(data) * per_byte)))
        fast.limits = general.limits = limits
        size = _bounding_size(data, limits)
        got = _answer(fast, decoded, rev, now, size)
        assert got == _answer(general, decode_command(data), rev, now, size)
        if size is not None and got[0]["ok"] and decoded["op"] == "put":
            # What the skip relies on: the stored document within the bound.
            stored = fast.colls[decoded["coll"]].docs[decoded["key"]]
            assert len(_json(stored).encode()) <= JSON_BYTES_PER_CBOR_BYTE * len(data)
    assert fast.digest() == general.digest()


def _expanding(sharing: str) -> bytes:
    """A put of a few hundred bytes whose document decodes to megabytes of JSON."""
    if sharing == "values":
        a = ["y" * 1000]
        b = [a] * 30
        c = [b] * 30
        cmd = {"op": "put", "coll": "c", "key": "k", "doc": {"v": [c] * 3}}
        return bytes(cbor2.dumps(cmd, value_sharing=True))
    cmd = {"op": "put", "coll": "c", "key": "k", "doc": {"v": ["y" * 1000] * 1100}}
    return bytes(cbor2.dumps(cmd, string_referencing=True))


@pytest.mark.parametrize("sharing", ["values", "strings"])
async def test_an_entry_with_tags_is_measured(tmp_path: Path, sharing: str) -> None:
    data = _expanding(sharing)
    assert len(data) * JSON_BYTES_PER_CBOR_BYTE < Limits().max_doc_bytes
    assert _bounding_size(data, Limits()) is None
    sm = DocstoreStateMachine(str(tmp_path), sync=False)
    await sm.start()
    (result,) = await sm.apply([Entry(1, 1, data=data, timestamp_ms=1)])
    await sm.close()
    assert result["error"] == "limit", result  # type: ignore[index]
    assert "the limit is 1048576" in result["message"]  # type: ignore[index]


def test_bounding_size() -> None:
    data = encode_command({"op": "put", "coll": "c", "key": "k", "doc": {"v": "x" * 96}})
    assert _bounding_size(data, Limits()) == len(data)
    assert _bounding_size(data, Limits(max_doc_bytes=len(data) * 10 - 1)) is None
    assert _bounding_size(bytearray(data), Limits()) is None  # type: ignore[arg-type]
    # A byte that may open a tag, inside a string: measured, to be safe.
    text = encode_command({"op": "put", "coll": "c", "key": "k", "doc": {"v": "é"}})
    assert _bounding_size(text, Limits()) is None


def test_a_change_is_built_as_its_frozen_dataclass_would_be() -> None:
    """Change is built by fast_init (the generated __init__ costs twice as much)."""

    @dataclasses.dataclass(frozen=True, slots=True)
    class Generated:
        rev: int
        coll: str
        key: str
        op: str
        doc: dict[str, Any] | None

    args = (7, "c", "k", "put", {"v": 1})
    ch = Change(*args)
    assert dataclasses.astuple(ch) == dataclasses.astuple(Generated(*args)) == args
    assert ch == Change(rev=7, coll="c", key="k", op="put", doc={"v": 1})
    assert repr(ch) == "Change(rev=7, coll='c', key='k', op='put', doc={'v': 1})"
    with pytest.raises(dataclasses.FrozenInstanceError):
        ch.rev = 8  # type: ignore[misc]
    with pytest.raises(TypeError):
        Change(7, "c", "k", "put")  # type: ignore[call-arg]


def test_the_key_is_checked_even_if_validation_let_it_pass(monkeypatch: Any) -> None:
    """The path checks the key as ``_put`` does, not only through the validator."""
    from docstore.engine import state

    monkeypatch.setattr(state, "validate_command", lambda *args, **kw: args[0])
    eng = Engine(limits=Limits(max_key_bytes=4))
    result, effects, changes = eng.apply_parts(
        {"op": "put", "coll": "c", "key": "k" * 5, "doc": {}}, 1
    )
    assert result["error"] == "limit" and not effects and not changes
