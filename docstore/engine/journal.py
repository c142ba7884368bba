"""The journal of one command: undo on failure, effects and changes on success.

Every mutation the engine makes while applying a command appends an entry
(a tuple tagged by kind) holding what it replaced:

* ``("doc", collection, key, old, new)``: a document written or deleted
  (``None`` for absent);
* ``("mkcoll", collection)`` / ``("dropcoll", collection)``;
* ``("mkidx", collection, index)`` / ``("dropidx", collection, index)``;
* ``("reg", "types"|"commands", name, old_version, new_version)``.

A command that fails is undone exactly by :func:`rollback`; one that
succeeds is turned into *effects* (:func:`effects`: the trusted, replayable
form the apply log and snapshots hold, see ``Engine.replay``) and watcher
*changes* (:func:`changes`).  :class:`Applied` carries the outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from docstore.engine.indexes import Collection, raw_set
from trioraft.core.types import fast_init

JournalEntry = tuple[Any, ...]


@fast_init  # every replica builds one per document it writes
@dataclass(frozen=True, slots=True)
class Change:
    """One document change, as watchers see it."""

    rev: int
    coll: str
    key: str
    op: str  # "put" | "delete" | "drop" (the whole collection)
    doc: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {"rev": self.rev, "coll": self.coll, "key": self.key, "op": self.op, "doc": self.doc}


@dataclass(frozen=True, slots=True)
class Applied:
    """The outcome of one command: its result map and the effects it made."""

    result: dict[str, Any]
    effects: list[list[Any]]
    changes: list[Change]

    @property
    def ok(self) -> bool:
        return self.result.get("ok") is True


def rollback(
    journal: list[JournalEntry],
    colls: dict[str, Collection],
    extensions: dict[str, dict[str, int]],
) -> None:
    """Undo ``journal`` (newest first): the state is as before its first entry."""
    for entry in reversed(journal):
        kind = entry[0]
        if kind == "doc":
            _, c, key, old, _new = entry
            raw_set(c, key, old)
        elif kind == "mkcoll":
            del colls[entry[1].name]
        elif kind == "dropcoll":
            colls[entry[1].name] = entry[1]
        elif kind == "mkidx":
            del entry[1].indexes[entry[2].name]
        elif kind == "dropidx":
            entry[1].add_index(entry[2])
        elif kind == "reg":
            _, k, name, old, _new = entry
            if old is None:
                del extensions[k][name]
            else:
                extensions[k][name] = old


def effects(journal: list[JournalEntry]) -> list[list[Any]]:
    """The effects a journal made, in order: what the apply log stores and replay takes."""
    out: list[list[Any]] = []
    for e in journal:
        kind = e[0]
        if kind == "doc":
            _, c, key, _old, new = e
            out.append(["put", c.name, key, new] if new is not None else ["del", c.name, key])
        elif kind == "mkcoll":
            out.append(["mkcoll", e[1].name, e[1].type_name, e[1].type_version])
        elif kind == "dropcoll":
            out.append(["dropcoll", e[1].name])
        elif kind == "mkidx":
            out.append(["mkidx", e[1].name, e[2].name, list(e[2].fields), e[2].unique])
        elif kind == "dropidx":
            out.append(["dropidx", e[1].name, e[2].name])
        elif kind == "reg":
            out.append(["reg", e[1], e[2], e[4]])
    return out


def changes(journal: list[JournalEntry], rev: int) -> list[Change]:
    """The document changes a journal made, as watchers see them."""
    out: list[Change] = []
    for e in journal:
        if e[0] == "doc":
            _, c, key, _old, new = e
            out.append(
                Change(
                    rev,
                    c.name,
                    key,
                    "put" if new is not None else "delete",
                    new if new is not None else _old,
                )
            )
        elif e[0] == "dropcoll":
            out.append(Change(rev, e[1].name, "", "drop", None))
    return out
