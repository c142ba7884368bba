"""User collection types and versioned command handlers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

import docstore
from docstore import commands as C
from docstore.engine import Engine
from docstore.state_machine import DocstoreStateMachine, encode_command
from trioraft.core.types import Entry

ROOT = Path(__file__).resolve().parents[2]


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location(
        "custom_collection", ROOT / "examples" / "custom_collection.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["custom_collection"] = mod
    spec.loader.exec_module(mod)
    return mod


ex = load_example()


async def test_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await ex.main(str(tmp_path))
    out = capsys.readouterr().out
    assert "ann 300" in out and "bob 200" in out and out.count("refused:") == 3


async def test_validation_and_computed_index(tmp_path: Path) -> None:
    async with docstore.open(tmp_path, registry=ex.make_registry()) as db:
        acc = await db.create_collection("accounts", type="accounts")
        await acc.create_index("email_lower", unique=True)
        await acc.put("a", {"email": "X@y.z"})
        with pytest.raises(docstore.ValidationError):
            await acc.patch("a", {"$set": {"balance": -1}})
        with pytest.raises(docstore.UniqueViolation):
            await acc.put("b", {"email": "x@Y.Z"})
        assert [d["_key"] for d in await acc.find({"email_lower": "x@y.z"})] == ["a"]
        with pytest.raises(docstore.UnknownCommandError):
            await db.create_collection("other", type="unregistered")
        with pytest.raises(docstore.UnknownCommandError):
            await db.call("transfer", 2, {})
        with pytest.raises(docstore.InvalidCommandError, match="amount"):
            await db.call("transfer", 1, {"from": "a", "to": "a", "amount": -5})
        with pytest.raises(docstore.InvalidCommandError, match="failed"):
            await db.call("transfer", 1, "not a map")  # handler raised TypeError
    # Reopening without the extension code is refused clearly, not guessed at.
    with pytest.raises(docstore.RegistryError, match="accounts"):
        async with docstore.open(tmp_path):
            pass
    async with docstore.open(tmp_path, registry=ex.make_registry()) as db:
        assert await db.collection("accounts").count() == 1


def test_version_upgrade_is_a_replicated_command() -> None:
    reg = docstore.Registry()
    reg.register_command("noop", 2, lambda ctx, args: [])
    e = Engine(reg)
    assert e.apply(C.call("noop", 1), 1).result["error"] == "unknown_command"
    # This process holds no code for v1: registering it is refused, nothing changes.
    before = e.digest()
    assert e.apply(C.register("command", "noop", 1), 2).result["error"] == "unknown_command"
    assert e.digest() == before
    assert e.apply(C.call("noop", 2), 3).result["error"] == "unknown_command"  # not in force
    assert e.apply(C.register("command", "noop", 2), 4).result["ok"]
    assert e.apply(C.call("noop", 2), 5).result["ok"]


def test_extension_in_force_without_its_code_is_an_error_result() -> None:
    # A state recorded by a process that had the code (or by an older version
    # that let any client register anything), applied where the code is gone:
    # the command is answered, the node keeps running.
    reg = docstore.Registry()
    reg.register_command("noop", 1, lambda ctx, args: [])
    reg.register_type(ex.Accounts())
    e = Engine(reg)
    assert e.apply(C.register("command", "noop", 1), 1).result["ok"]
    assert e.apply(C.register("type", "accounts", 1), 2).result["ok"]
    e.registry = docstore.Registry()
    before = e.digest()
    for rev, cmd in enumerate(
        [C.call("noop", 1), C.create_collection("acc", type="accounts")], start=3
    ):
        r = e.apply(cmd, rev).result
        assert r["ok"] is False and r["error"] in ("registry", "unknown_command"), r
    assert e.digest() == before


async def test_registry_is_recorded_in_snapshots(tmp_path: Path) -> None:
    reg = ex.make_registry()
    sm = DocstoreStateMachine(str(tmp_path / "a"), registry=reg)
    await sm.start()
    cmds = [
        C.register("type", "accounts", 1),
        C.register("command", "transfer", 1),
        C.create_collection("accounts", type="accounts"),
        C.put("accounts", "a", {"email": "a@b", "balance": 5}),
        C.put("accounts", "b", {"email": "b@b"}),
        C.call("transfer", 1, {"from": "a", "to": "b", "amount": 2}),
    ]
    res = await sm.apply([Entry(i, 1, data=encode_command(c)) for i, c in enumerate(cmds, 1)])
    assert all(r["ok"] for r in res), res  # type: ignore[index]
    info = await sm.write_snapshot(str(tmp_path / "snap"))
    bare = DocstoreStateMachine(str(tmp_path / "b"))
    await bare.start()
    with pytest.raises(docstore.RegistryError):
        await bare.restore_snapshot(str(tmp_path / "snap"), info)
    assert bare.last_applied().index == 0
    good = DocstoreStateMachine(str(tmp_path / "c"), registry=ex.make_registry())
    await good.start()
    await good.restore_snapshot(str(tmp_path / "snap"), info)
    assert good.digest() == sm.digest()
    (r,) = await good.apply(
        [
            Entry(
                7,
                1,
                data=encode_command(C.call("transfer", 1, {"from": "a", "to": "b", "amount": 3})),
            )
        ]
    )
    assert r["ok"]  # type: ignore[index]
    for m in (sm, bare, good):
        await m.close()


async def test_embedded_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location(
        "embedded_example", ROOT / "examples" / "embedded.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    await mod.main(str(tmp_path))
    out = capsys.readouterr().out
    assert "conflict, current revision is 3" in out and "watch: put milk at rev 3" in out


class AccountsV2(ex.Accounts):  # type: ignore[name-defined, misc]
    version = 2

    def compute(self, doc: dict[str, Any]) -> dict[str, Any]:
        return {
            "email_lower": str(doc.get("email", "")).lower(),
            "rich": doc.get("balance", 0) > 100,
        }


async def test_upgrading_a_collection_type(tmp_path: Path) -> None:
    async with docstore.open(tmp_path, registry=ex.make_registry()) as db:
        acc = await db.create_collection("accounts", type="accounts")
        await acc.create_index("rich")
        await acc.put("a", {"email": "a@b", "balance": 500})
        assert await acc.find({"rich": True}) == []  # v1 computes no "rich"
    reg = ex.make_registry()
    reg.register_type(AccountsV2())  # both versions known: the log still names v1
    async with docstore.open(tmp_path, registry=reg) as db:
        acc = db.collection("accounts")
        assert [d["_key"] for d in await acc.find({"rich": True})] == ["a"]
    reg2 = docstore.Registry()
    reg2.register_type(AccountsV2())
    reg2.register_command("transfer", 1, ex.transfer)
    with pytest.raises(docstore.RegistryError, match=r"versions \[2\]"):
        async with docstore.open(tmp_path, registry=reg2):
            pass
    await_compact = tmp_path  # after compaction only v2 is named, so v1 code can go
    async with docstore.open(await_compact, registry=reg) as db:
        await db.compact()
    async with docstore.open(tmp_path, registry=reg2) as db:
        assert len(await db.collection("accounts").find({"rich": True})) == 1
    with pytest.raises(docstore.InvalidCommandError):
        async with docstore.open(tmp_path, registry=reg2) as db:
            await db.collection("accounts").get(["not a key"])  # type: ignore[arg-type]
