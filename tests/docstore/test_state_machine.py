"""The docstore adapter beyond the conformance suite: sessions, replicas, snapshots."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from docstore import commands as C
from docstore.engine import Limits
from docstore.state_machine import (
    OPEN_SESSION,
    SESSION_TTL_MS,
    DocstoreStateMachine,
    encode_command,
)
from trioraft.core.types import Entry
from trioraft.statemachine import SnapshotError, SnapshotInfo


def entry(
    index: int, cmd: Any, *, client: str = "", seq: int = 0, ts: int = 0, term: int = 1
) -> Entry:
    data = cmd if isinstance(cmd, bytes) else encode_command(cmd)
    return Entry(index, term, data=data, client_id=client, sequence=seq, timestamp_ms=ts)


async def started(path: Path, **kw: Any) -> DocstoreStateMachine:
    sm = DocstoreStateMachine(str(path), **kw)
    await sm.start()
    return sm


async def get(sm: DocstoreStateMachine, coll: str, key: str) -> Any:
    res = await sm.query({"op": "get", "coll": coll, "key": key})
    assert isinstance(res, dict) and res["ok"]
    return res["value"]


def opened(index: int, client: str, ts: int = 0) -> Entry:
    """The entry that opens a session (sequence 0)."""
    return entry(index, OPEN_SESSION, client=client, seq=0, ts=ts)


async def test_retried_write_applies_once(tmp_path: Path) -> None:
    sm = await started(tmp_path)
    inc = C.patch("c", "n", {"$inc": {"v": 1}}, upsert=True)
    (opening,) = await sm.apply([opened(1, "cl")])
    assert opening == {"ok": True, "session": "cl", "rev": 1, "opened": True}
    (first,) = await sm.apply([entry(2, inc, client="cl", seq=1)])
    # The client retries the same request; it is committed again at index 3.
    (again,) = await sm.apply([entry(3, inc, client="cl", seq=1)])
    assert again == first and first["rev"] == 2  # type: ignore[index]
    assert (await get(sm, "c", "n"))["v"] == 1
    await sm.apply([entry(4, inc, client="cl", seq=2)])
    (stale,) = await sm.apply([entry(5, inc, client="cl", seq=1)])
    assert stale["error"] == "stale_sequence"  # type: ignore[index]
    assert (await get(sm, "c", "n"))["v"] == 2
    await sm.close()
    sm = await started(tmp_path)  # the table survives a restart (replayed from the log)
    (again,) = await sm.apply([entry(6, inc, client="cl", seq=2)])
    assert again["rev"] == 4  # type: ignore[index]
    (reopen,) = await sm.apply([opened(7, "cl")])  # a retried registration changes nothing
    assert reopen["opened"] is False  # type: ignore[index]
    (again,) = await sm.apply([entry(8, inc, client="cl", seq=2)])
    assert again["rev"] == 4  # type: ignore[index]
    assert (await get(sm, "c", "n"))["v"] == 2
    await sm.close()


def settings_of(sm: DocstoreStateMachine, index: int = 1) -> Entry:
    """The entry recording ``sm``'s own settings as the cluster's (a leader's first)."""
    return entry(index, sm.settings_command())


async def test_session_table_is_bounded_and_in_snapshots(tmp_path: Path) -> None:
    sm = await started(tmp_path / "a", max_sessions=3)
    await sm.apply([settings_of(sm)])
    for i in range(1, 6):
        await sm.apply([opened(2 * i, f"cl{i}")])
        await sm.apply([entry(2 * i + 1, C.put("c", f"k{i}", {}), client=f"cl{i}", seq=1)])
    assert (await sm.query({"op": "sessions"}))["value"] == 3  # type: ignore[index]
    info = await sm.write_snapshot(str(tmp_path / "snap"))
    other = await started(tmp_path / "b")  # configured otherwise: the snapshot's record rules
    await other.restore_snapshot(str(tmp_path / "snap"), info)
    assert other.digest() == sm.digest()
    # cl5 is remembered by the restored replica: its retry is not re-applied.
    (res,) = await other.apply([entry(12, C.put("c", "k5", {"x": 1}), client="cl5", seq=1)])
    assert res["rev"] == 11  # type: ignore[index]
    await sm.close()
    await other.close()


async def test_entries_before_the_settings_record_apply_with_the_defaults(
    tmp_path: Path,
) -> None:
    # Replicas configured differently must apply the entries before the
    # cluster's record alike (the whole-node simulator found one evicting a
    # session another kept), so until the record every replica uses the
    # built-in settings, then the recorded ones.
    small, default = await started(tmp_path / "a", max_sessions=1), await started(tmp_path / "b")
    for sm in (small, default):
        await sm.apply([opened(1, "one"), opened(2, "two")])
        assert (await sm.query({"op": "sessions"}))["value"] == 2  # type: ignore[index]
        await sm.apply([settings_of(small, 3), opened(4, "three")])
        assert (await sm.query({"op": "sessions"}))["value"] == 1  # type: ignore[index]
    assert small.digest() == default.digest()
    await small.close()
    await default.close()


async def test_exactly_once_survives_session_eviction(tmp_path: Path) -> None:
    # Issue "The guarantees hold at the seams", defect 6: a retry whose session
    # was evicted used to be applied again as new (a second $inc).
    sm = await started(tmp_path, max_sessions=2)
    inc = C.patch("c", "n", {"$inc": {"v": 1}}, upsert=True)
    await sm.apply([settings_of(sm), opened(2, "victim"), entry(3, inc, client="victim", seq=1)])
    for i in range(4, 10, 2):  # other clients open sessions; the victim's is evicted
        await sm.apply([opened(i, f"other{i}")])
    assert (await get(sm, "c", "n"))["v"] == 1
    (retry,) = await sm.apply([entry(10, inc, client="victim", seq=1)])
    assert retry["error"] == "session_expired"  # type: ignore[index]
    assert (await get(sm, "c", "n"))["v"] == 1  # not applied twice
    await sm.close()


async def test_sessions_expire_by_leader_time(tmp_path: Path) -> None:
    sm = await started(tmp_path)
    put = C.put("c", "k", {})
    hour = SESSION_TTL_MS
    await sm.apply([opened(1, "a", ts=1_000), entry(2, put, client="a", seq=1, ts=2_000)])
    (ok,) = await sm.apply([entry(3, put, client="a", seq=2, ts=2_000 + hour)])
    assert ok["ok"] is True  # type: ignore[index]
    (late,) = await sm.apply([entry(4, put, client="a", seq=3, ts=2_001 + 2 * hour)])
    assert late["error"] == "session_expired"  # type: ignore[index]
    # A session that is never written again is dropped when another one opens.
    await sm.apply([opened(5, "b", ts=10_000), opened(6, "c", ts=20_000 + hour)])
    assert (await sm.query({"op": "sessions"}))["value"] == 1  # type: ignore[index]
    digest = sm.digest()
    await sm.close()
    sm = await started(tmp_path)  # replayed from the apply log: the same table
    assert sm.digest() == digest
    await sm.close()


async def test_replicas_agree_on_errors_and_state(tmp_path: Path) -> None:
    log = [
        entry(1, C.put("c", "a", {"v": 1})),
        entry(2, b"\xff garbage"),
        entry(3, {"op": "put", "coll": "c"}),
        entry(4, C.put("c", "a", {"v": 2}, if_rev=7)),
        entry(5, C.call("nope", 1, {})),
        entry(6, C.put("c", "t", {"_expires": 1500}), ts=1000),
        entry(7, {"op": "expire"}, ts=2000),  # the leader's timestamp decides
        entry(8, C.batch([C.insert("c", {}), C.insert("c", {})])),
    ]
    a, b = await started(tmp_path / "a"), await started(tmp_path / "b")
    ra = await a.apply(log)
    rb = await b.apply(log[:3])
    rb += await b.apply(log[3:])
    assert ra == rb
    assert [r["ok"] for r in ra] == [True, False, False, False, False, True, True, True]  # type: ignore[index]
    assert ra[3]["error"] == "conflict" and ra[3]["rev"] == 1  # type: ignore[index]
    assert ra[4]["error"] == "unknown_command"  # type: ignore[index]
    assert ra[6]["expired"] == 1  # type: ignore[index]
    assert a.digest() == b.digest()
    await a.close()
    await b.close()


async def test_snapshot_truncated_at_every_offset_or_bit_flipped_is_refused(
    tmp_path: Path,
) -> None:
    sm = await started(tmp_path / "sm")
    await sm.apply(
        [entry(i, C.put("c", f"k{i}", {"i": i})) for i in range(1, 6)]
        + [entry(6, C.create_index("c", "i", unique=True))]
    )
    info = await sm.write_snapshot(str(tmp_path / "snap"))
    data = (tmp_path / "snap").read_bytes()
    target = await started(tmp_path / "t")
    bad = tmp_path / "bad"
    for cut in range(len(data)):
        bad.write_bytes(data[:cut])
        truncated = SnapshotInfo(info.index, info.term, hashlib.sha256(data[:cut]).hexdigest(), cut)
        with pytest.raises(SnapshotError):
            await target.restore_snapshot(str(bad), truncated)
    for pos in range(0, len(data), 3):
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        bad.write_bytes(bytes(flipped))
        info2 = SnapshotInfo(info.index, info.term, hashlib.sha256(flipped).hexdigest(), len(data))
        with pytest.raises(SnapshotError):
            await target.restore_snapshot(str(bad), info2)
    assert target.last_applied().index == 0
    await target.restore_snapshot(str(tmp_path / "snap"), info)
    assert target.digest() == sm.digest()
    await sm.close()
    await target.close()


async def test_corrupt_base_falls_back_to_previous_and_leftovers_are_cleaned(
    tmp_path: Path,
) -> None:
    sm = await started(tmp_path, compact_bytes=0)
    await sm.apply([entry(1, C.put("c", "a", {}))])
    await sm.flush()  # compact_bytes=0: every flush writes a new base
    await sm.apply([entry(2, C.put("c", "b", {}))])
    await sm.flush()
    await sm.close()
    base = tmp_path / "base.snap"
    blob = bytearray(base.read_bytes())
    blob[20] ^= 0xFF
    base.write_bytes(bytes(blob))
    (tmp_path / "base.snap.new").write_bytes(b"half written")
    (tmp_path / "base.snap.tmp").write_bytes(b"half written")
    sm = await started(tmp_path)
    # The previous base (index 1) is used; Raft re-sends what is missing.
    assert sm.last_applied().index == 1
    assert await get(sm, "c", "a") is not None
    assert not (tmp_path / "base.snap.new").exists() and not (tmp_path / "base.snap.tmp").exists()
    await sm.close()


async def test_restore_of_older_snapshot_ignores_newer_log(tmp_path: Path) -> None:
    sm = await started(tmp_path / "sm")
    await sm.apply([entry(1, C.put("c", "a", {}))])
    info = await sm.write_snapshot(str(tmp_path / "snap"))
    await sm.apply([entry(2, C.put("c", "b", {})), entry(3, C.put("c", "x", {}))])
    await sm.flush()
    await sm.restore_snapshot(str(tmp_path / "snap"), info)
    await sm.close()
    sm = await started(tmp_path / "sm")
    assert sm.last_applied().index == 1
    assert await get(sm, "c", "b") is None
    await sm.close()


async def test_watch_on_a_replica(tmp_path: Path) -> None:
    sm = await started(tmp_path)
    w = sm.watch("c", {"v": {"$gt": 1}})
    await sm.apply([entry(1, C.put("c", "a", {"v": 1})), entry(2, C.put("c", "b", {"v": 2}))])
    ch = await w.__anext__()
    assert (ch["key"], ch["rev"], ch["op"]) == ("b", 2, "put")
    await w.aclose()
    await sm.close()


async def test_bad_queries_are_error_results(tmp_path: Path) -> None:
    sm = await started(tmp_path)
    for q in ({"op": "find", "coll": "c", "filter": {"$x": 1}}, {"op": "nope"}, 3, b"\xff"):
        res = await sm.query(q)
        assert isinstance(res, dict) and res["ok"] is False
    await sm.close()


async def test_reads_judge_expiry_by_replicated_time(tmp_path: Path) -> None:
    # Time rule: a read that said "absent" by this replica's clock while a later
    # write (judged by the leader's entry time) still saw the document present.
    sm = await started(tmp_path)
    await sm.apply([entry(1, C.put("c", "t", {"_expires": 1_500}), ts=1_000)])
    assert await get(sm, "c", "t") is not None  # present as of the replicated time, 1000
    (write,) = await sm.apply(
        [entry(2, C.patch("c", "t", {"$set": {"x": 1}}, if_exists=True), ts=1_200)]
    )
    assert write["ok"] is True  # type: ignore[index]
    await sm.apply([entry(3, C.put("c", "other", {}), ts=2_000)])
    assert await get(sm, "c", "t") is None  # time moved past _expires with the log
    await sm.close()
    sm = await started(tmp_path)  # the replicated clock survives a restart
    assert await get(sm, "c", "t") is None
    await sm.close()


async def test_replicas_apply_with_the_cluster_settings(tmp_path: Path) -> None:
    # Settings that change apply results (limits, max_sessions) were local: two
    # replicas configured differently answered the same command differently.
    # The first leader records its settings through the log; from that entry on
    # every replica applies with them, whatever it was configured with.
    a = await started(tmp_path / "a")
    b = await started(tmp_path / "b", limits=Limits(max_doc_bytes=64))
    record = entry(1, a.settings_command())
    big = entry(2, C.put("c", "k", {"pad": "x" * 100}))
    ra = await a.apply([record, big])
    rb = await b.apply([record, big])
    assert ra == rb and ra[1]["ok"] is True, (ra, rb)  # type: ignore[index]
    assert a.digest() == b.digest()
    await b.close()
    b = await started(tmp_path / "b", limits=Limits(max_doc_bytes=64))  # replayed
    assert b.limits == Limits() and b.digest() == a.digest()
    # A later record changes them everywhere at once; a malformed one changes nothing.
    tight = DocstoreStateMachine(str(tmp_path / "t"), max_sessions=7).settings_command()
    (bad,) = await a.apply([entry(3, {"op": "settings", "limits": {}, "max_sessions": 0})])
    assert bad["error"] == "invalid"  # type: ignore[index]
    (ok,) = await a.apply([entry(4, tight)])
    assert ok["changed"] is True and a.max_sessions == 7  # type: ignore[index]
    # The record travels in snapshots.
    info = await a.write_snapshot(str(tmp_path / "snap"))
    d = await started(tmp_path / "d", max_sessions=99)
    await d.restore_snapshot(str(tmp_path / "snap"), info)
    assert d.max_sessions == 7 and d.digest() == a.digest()
    for sm in (a, b, d):
        await sm.close()
