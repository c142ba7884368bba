"""fast_init: the hot frozen dataclasses (entries, messages) built without object.__setattr__."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from typing import Any

import pytest

from trioraft.core import types
from trioraft.core.types import MESSAGE_TYPES, Entry, ReadFailed, ReadState, Ready, fast_init
from trioraft.transport import messages

DECORATED: list[type] = [
    Entry,
    ReadState,
    ReadFailed,
    Ready,
    *MESSAGE_TYPES,
    *(
        cls
        for name in messages.__all__
        if isinstance(cls := getattr(messages, name), type) and dataclasses.is_dataclass(cls)
    ),
]


def _by_dataclass(cls: type, values: dict[str, Any]) -> Any:
    """What the dataclass's own __init__ would have built."""
    obj = object.__new__(cls)
    for name, v in values.items():
        object.__setattr__(obj, name, v)
    return obj


@pytest.mark.parametrize("cls", DECORATED, ids=lambda c: c.__name__)
def test_the_built_init_takes_what_the_dataclass_takes(cls: type) -> None:
    assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"
    fields = dataclasses.fields(cls)
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert [p.name for p in params] == [f.name for f in fields]
    for p, f in zip(params, fields, strict=True):
        assert p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        want = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
        assert p.default is want
        assert p.annotation == f.type


@pytest.mark.parametrize("cls", DECORATED, ids=lambda c: c.__name__)
def test_the_built_init_sets_every_field_to_its_own_value(cls: type) -> None:
    fields = dataclasses.fields(cls)
    counter = itertools.count(1000)
    values = {f.name: next(counter) for f in fields}  # a distinct value per field
    by_position = cls(*values.values())
    by_name = cls(**values)
    for obj in (by_position, by_name):
        assert [getattr(obj, f.name) for f in fields] == list(values.values())
        assert obj == _by_dataclass(cls, values)
        assert repr(obj) == repr(_by_dataclass(cls, values))
        assert hash(obj) == hash(_by_dataclass(cls, values))
        if fields:
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(obj, fields[0].name, -1)
    required = [f.name for f in fields if f.default is dataclasses.MISSING]
    if required:
        with pytest.raises(TypeError):
            cls()
    with pytest.raises(TypeError):
        cls(*values.values(), no_such_field=1)
    defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    built = cls(**{n: values[n] for n in required})
    for name, default in defaults.items():
        assert getattr(built, name) is default


def test_entry_defaults_are_the_documented_ones() -> None:
    e = Entry(3, 2)
    assert (e.kind, e.data, e.client_id, e.sequence, e.timestamp_ms) == (
        types.EntryKind.NORMAL,
        b"",
        "",
        0,
        0,
    )


def test_fast_init_refuses_what_it_cannot_copy() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        n: int

        def __post_init__(self) -> None:
            if self.n < 0:
                raise ValueError("negative")

    @dataclasses.dataclass(frozen=True, slots=True)
    class Factory:
        items: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class KeywordOnly:
        n: int = 0

    for cls in (Checked, Factory, KeywordOnly):
        with pytest.raises(TypeError):
            fast_init(cls)
