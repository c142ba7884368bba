"""The embedded Database/Collection API over the data file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel

import docstore
from docstore import commands as C


async def test_crud_and_reopen(tmp_path: Path) -> None:
    async with docstore.open(tmp_path) as db:
        users = db.collection("users")
        r1 = await users.put("ann", {"name": "Ann", "age": 31})
        key = await users.insert({"name": "Bob", "age": 17})
        r3 = await users.patch("ann", {"$inc": {"age": 1}, "$push": {"tags": "x"}})
        assert r3 == r1 + 2
        assert await users.get("ann") == {
            "name": "Ann",
            "age": 32,
            "tags": ["x"],
            "_key": "ann",
            "_rev": r3,
        }
        assert [d["name"] for d in await users.find({"age": {"$gte": 18}})] == ["Ann"]
        assert await users.count() == 2
        assert await users.delete(key) is True
        assert await users.delete(key) is False
        digest = await db.digest()
    async with docstore.open(tmp_path) as db:
        assert await db.digest() == digest
        assert db.rev == r3 + 1
        assert (await db.collection("users").get("ann"))["_rev"] == r3  # type: ignore[index]


async def test_returned_documents_are_copies(tmp_path: Path) -> None:
    async with docstore.open(tmp_path) as db:
        c = db.collection("c")
        await c.put("k", {"l": [1]})
        doc = await c.get("k")
        assert doc is not None
        doc["l"].append(2)
        (await c.find())[0]["l"].append(3)
        assert (await c.get("k"))["l"] == [1]  # type: ignore[index]


async def test_the_callers_objects_are_not_kept(tmp_path: Path) -> None:
    # Embedded, a command is applied in the caller's process: the store kept
    # the caller's nested lists and maps, so changing them after the call
    # changed a stored document with no revision and no log record (a later
    # $push then applied to the changed list; found by the model test).
    async with docstore.open(tmp_path) as db:
        c = db.collection("c")
        doc: dict[str, Any] = {"l": [], "m": {"x": 1}}
        await db.execute(C.put("c", "k", doc))
        doc["l"].append(9)
        doc["m"]["x"] = 2
        assert await c.get("k") == {"l": [], "m": {"x": 1}, "_key": "k", "_rev": 1}
        patch: dict[str, Any] = {"$set": {"n": {"deep": [1]}}}
        await db.execute(C.patch("c", "k", patch))
        patch["$set"]["n"]["deep"].append(2)
        assert (await c.get("k"))["n"] == {"deep": [1]}  # type: ignore[index]
    async with docstore.open(tmp_path) as db:
        assert (await db.collection("c").get("k"))["l"] == []  # type: ignore[index]


async def test_conflict_error_carries_current_revision(tmp_path: Path) -> None:
    async with docstore.open(tmp_path) as db:
        c = db.collection("c")
        rev = await c.put("k", {"v": 1})
        with pytest.raises(docstore.ConflictError) as info:
            await c.put("k", {"v": 2}, if_rev=rev + 5)
        assert info.value.rev == rev
        with pytest.raises(docstore.ConflictError):
            await c.delete("k", if_match={"v": 2})
        with pytest.raises(docstore.NotFoundError):
            await c.patch("zz", {"$set": {"a": 1}})
        with pytest.raises(docstore.UniqueViolation):
            await c.create_index("v", unique=True)
            await c.put("j", {"v": 1})


async def test_limits_enforced_at_the_api(tmp_path: Path) -> None:
    async with docstore.open(tmp_path, limits=docstore.Limits(max_doc_bytes=64)) as db:
        c = db.collection("c")
        with pytest.raises(docstore.LimitError):
            await c.put("k", {"x": "y" * 100})
        with pytest.raises(docstore.LimitError):
            await c.put("k" * 300, {})
        with pytest.raises(docstore.InvalidCommandError):
            await c.find({"$bogus": 1})
        with pytest.raises(docstore.InvalidCommandError):
            db.collection("")
        assert db.rev == 0


async def test_batch_scan_and_collections(tmp_path: Path) -> None:
    async with docstore.open(tmp_path) as db:
        res = await db.batch(
            [C.put("a", f"k{i:02}", {"i": i}) for i in range(12)] + [C.create_index("a", "i")]
        )
        assert len(res) == 13 and db.rev == 1
        a = db.collection("a")
        assert [d["i"] for d in await a.scan(prefix="k0")] == list(range(10))
        assert [d["i"] for d in await a.scan(start="k05", end="k08")] == [5, 6, 7]
        assert [d["i"] for d in await a.scan(limit=2)] == [0, 1]
        with pytest.raises(docstore.ConflictError):
            await db.batch([C.put("a", "new", {}), C.put("a", "k00", {}, if_exists=False)])
        assert await a.get("new") is None
        assert await db.collections() == ["a"]
        assert await db.drop_collection("a") is True
        assert await db.collections() == []
        assert await a.update_many({}, {"$set": {"x": 1}}) == 0


async def test_compaction_preserves_contents_and_revisions(tmp_path: Path) -> None:
    data = tmp_path / "apply.dslog"
    async with docstore.open(tmp_path) as db:
        c = db.collection("c")
        await c.create_index("g")
        for i in range(200):
            await c.put(f"k{i % 20}", {"g": i % 3, "i": i})
        before = await db.digest()
        revs = {d["_key"]: d["_rev"] for d in await c.scan()}
        size = data.stat().st_size
        await db.compact()
        assert data.stat().st_size < size / 5
        assert await db.digest() == before
        await c.put("after", {"g": 1})
        after = await db.digest()
        rev = db.rev
    async with docstore.open(tmp_path) as db:
        assert await db.digest() == after and db.rev == rev
        c = db.collection("c")
        assert {d["_key"]: d["_rev"] for d in await c.scan() if d["_key"] != "after"} == revs
        assert len(await c.find({"g": 1})) == 8


async def test_compaction_concurrent_with_writers(tmp_path: Path) -> None:
    async with docstore.open(tmp_path) as db:
        c = db.collection("c")

        async def writer(n: int) -> None:
            for i in range(50):
                await c.put(f"{n}-{i % 7}", {"i": i})

        async with trio.open_nursery() as nursery:
            for n in range(4):
                nursery.start_soon(writer, n)
            for _ in range(5):
                await trio.lowlevel.checkpoint()
                await db.compact()
        digest = await db.digest()
    async with docstore.open(tmp_path) as db:
        assert await db.digest() == digest


async def test_group_commit_shares_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd))[1])
    async with docstore.open(tmp_path) as db:
        c = db.collection("c")
        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(c.put, f"k{i}", {"i": i})
        assert await c.count() == 100
    assert 1 <= len(calls) < 50


async def test_fsync_failure_is_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with docstore.open(tmp_path) as db:
        c = db.collection("c")
        await c.put("a", {})

        def boom(fd: int) -> None:
            raise OSError(5, "EIO")

        monkeypatch.setattr(os, "fdatasync", boom)
        with pytest.raises(OSError):
            await c.put("b", {})
        monkeypatch.undo()
        with pytest.raises(docstore.DatabaseClosedError):
            await c.get("a")
        with pytest.raises(docstore.DatabaseClosedError):
            await c.put("c", {})


async def test_second_open_of_same_directory_is_refused(tmp_path: Path) -> None:
    async with docstore.open(tmp_path):
        with pytest.raises(docstore.DocstoreError, match="another process"):
            async with docstore.open(tmp_path):
                pass


async def test_ttl_reads_hide_an_expired_document_that_is_still_stored(tmp_path: Path) -> None:
    # No sweep runs: whatever reads stop returning is hidden, not deleted.
    async with docstore.open(tmp_path, expire_interval=None) as db:
        c = db.collection("c")
        await c.put("short", {"v": 1}, ttl=0.05)
        await c.put("long", {"v": 2}, ttl=60)
        await c.put("exp", {"_expires": 1})  # already expired: hidden at once
        assert await c.get("exp") is None
        assert await c.get("short") is not None
        await trio.sleep(0.06)
        assert await c.get("short") is None
        assert [d["_key"] for d in await c.find()] == ["long"]
        # Both were still there: the first expiry round deletes exactly them.
        rev = db.rev
        assert await db.expire() == 2
        assert await db.expire() == 0
        async with c.watch(since_rev=rev) as w:
            deleted = {(await w.__anext__())["key"], (await w.__anext__())["key"]}
        assert deleted == {"short", "exp"}


async def test_ttl_background_sweep_deletes_expired_documents(tmp_path: Path) -> None:
    async with docstore.open(tmp_path, expire_interval=0.02) as db:
        c = db.collection("c")
        rev = db.rev
        await c.put("short", {"v": 1}, ttl=0.05)
        await c.put("long", {"v": 2}, ttl=60)
        with trio.fail_after(5):
            async with c.watch(since_rev=rev) as w:
                async for ch in w:  # only a delete can remove it: the sweep's
                    if ch["key"] == "short" and ch["op"] == "delete":
                        break
        assert await db.expire() == 0  # nothing was left for a round to delete
        assert [d["_key"] for d in await c.find()] == ["long"]


async def test_watch_streams_changes_and_since_rev(tmp_path: Path) -> None:
    async with docstore.open(tmp_path) as db:
        c = db.collection("c")
        r1 = await c.put("a", {"v": 1})
        await c.put("b", {"v": 50})
        seen = []
        async with c.watch({"v": {"$lt": 10}}, since_rev=r1 - 1) as w:
            await c.put("c", {"v": 2})
            await c.delete("a")
            async for ch in w:
                seen.append((ch["op"], ch["key"]))
                if len(seen) == 3:
                    break
        assert seen == [("put", "a"), ("put", "c"), ("delete", "a")]


async def test_slow_watcher_gets_resync_and_never_blocks_writers(tmp_path: Path) -> None:
    async with docstore.open(tmp_path, watch_history=5) as db:
        c = db.collection("c")
        w = c.watch(buffer=3)
        with trio.fail_after(5):
            for i in range(20):
                await c.put(f"k{i}", {})
        with pytest.raises(docstore.ResyncRequired):
            await w.__anext__()
        with pytest.raises(docstore.ResyncRequired):
            c.watch(since_rev=1)
        await w.aclose()


async def test_watch_ends_when_database_closes(tmp_path: Path) -> None:
    async with docstore.open(tmp_path) as db:
        w = db.collection("c").watch()
    with pytest.raises(docstore.DatabaseClosedError):
        await w.__anext__()


async def test_remote_shaped_executor_validates_before_sending(tmp_path: Path) -> None:
    sent: list[dict[str, object]] = []

    class Recorder:
        async def execute(self, cmd: dict[str, object]) -> dict[str, object]:
            sent.append(cmd)
            return {"ok": True, "rev": 1, "key": "k"}

        async def query(self, q: dict[str, object]) -> object:
            return None

        def watch(
            self, coll: str, flt: object, since_rev: int | None, buffer: int
        ) -> docstore.Watcher:
            raise NotImplementedError

        async def aclose(self) -> None:
            pass

    db = docstore.Database(Recorder())
    c = db.collection("c")
    assert await c.put("k", {"v": 1}) == 1
    with pytest.raises(docstore.LimitError):
        await c.put("k" * 1000, {})
    with pytest.raises(docstore.InvalidCommandError):
        await c.patch("k", {"$nope": {"a": 1}})
    assert sent == [C.put("c", "k", {"v": 1})]


async def test_reads_accept_consistency(tmp_path: Path) -> None:
    async with docstore.open(tmp_path) as db:
        c = db.collection("c")
        await c.put("k", {"v": 1})
        assert await c.get("k", consistency="local") is not None
        assert await c.count(consistency="linearizable") == 1
        assert len(await c.find({"v": 1}, consistency="lease")) == 1
        with pytest.raises(docstore.InvalidCommandError):
            await c.scan(consistency="eventual")


# Written by docstore.open before embedded directories took the state machine's
# layout: three puts with a unique index, a compaction, a patch, a delete, an
# insert (see test_an_old_embedded_directory_is_migrated_on_open for the state).
OLD_DATA_FILE = Path(__file__).parent / "data" / "embedded_v1.dslog"
OLD_DIGEST = "4f1b44c56221eafde2f1b2bd510395a47dee0d89e1f3ae81aa4363375bf1a402"


async def test_an_old_embedded_directory_is_migrated_on_open(tmp_path: Path) -> None:
    shutil.copy(OLD_DATA_FILE, tmp_path / "data.dslog")
    async with docstore.open(tmp_path) as db:
        assert db.rev == 7 and await db.digest() == OLD_DIGEST
        users = db.collection("users")
        assert await users.scan() == [
            {"email": "ann@x", "age": 32, "_key": "ann", "_rev": 5},
            {"email": "cid@x", "age": 50, "_key": "cid", "_rev": 4},
        ]
        assert await db.collection("logs").scan() == [
            {"msg": "hello", "_key": "0000000000000007-0000", "_rev": 7}
        ]
        with pytest.raises(docstore.DocstoreError, match="unique"):
            await users.put("dup", {"email": "ann@x"})  # the index came along
        key = await db.collection("logs").insert({"msg": "after"})
        assert key > "0000000000000007-0000" and db.rev == 8
        digest = await db.digest()
    assert sorted(os.listdir(tmp_path)) == ["LOCK", "apply.dslog", "base.snap"]
    async with docstore.open(tmp_path) as db:
        assert db.rev == 8 and await db.digest() == digest


async def test_a_migration_cut_before_the_old_file_was_deleted_finishes(tmp_path: Path) -> None:
    shutil.copy(OLD_DATA_FILE, tmp_path / "data.dslog")
    async with docstore.open(tmp_path):
        pass
    # As if the crash came after base.snap was written, before data.dslog went.
    shutil.copy(OLD_DATA_FILE, tmp_path / "data.dslog")
    async with docstore.open(tmp_path) as db:
        assert db.rev == 7 and await db.digest() == OLD_DIGEST
    assert not (tmp_path / "data.dslog").exists()


async def test_a_damaged_old_data_file_is_reported_and_left_alone(tmp_path: Path) -> None:
    data = bytearray(OLD_DATA_FILE.read_bytes())
    data[100] ^= 0x40
    (tmp_path / "data.dslog").write_bytes(bytes(data))
    with pytest.raises(docstore.CorruptionError, match=r"data\.dslog"):
        async with docstore.open(tmp_path):
            pass
    assert (tmp_path / "data.dslog").read_bytes() == bytes(data)
    assert not (tmp_path / "base.snap").exists()


async def test_after_reopen_a_watch_from_before_it_asks_for_a_resync(tmp_path: Path) -> None:
    # The changes replayed from the apply log on open are not in the watch
    # history: a watch from a revision among them cannot be served, and says so.
    async with docstore.open(tmp_path) as db:
        c = db.collection("c")
        first = await c.put("a", {})
        await c.put("b", {})
    async with docstore.open(tmp_path) as db:
        with pytest.raises(docstore.ResyncRequired):
            db.collection("c").watch(since_rev=first)
        async with db.collection("c").watch(since_rev=db.rev) as w:
            await db.collection("c").put("z", {})
            assert (await w.__anext__())["key"] == "z"
