"""The StateMachine conformance suite against the reference KV machine, plus KV specifics."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cbor2
import pytest

from trioraft.core.types import Entry
from trioraft.kv import KVCorruptError, KVQueryError, KVStateMachine, encode_command
from trioraft.statemachine import LogId, StateMachine
from trioraft.testing.statemachine_suite import StateMachineSuite


class TestKVConformance(StateMachineSuite):
    async def make_state_machine(self, path: str) -> StateMachine:
        return KVStateMachine(path)

    def put_command(self, key: str, value: bytes) -> bytes:
        return encode_command("put", key, value=value)

    def get_query(self, key: str) -> object:
        return {"op": "get", "key": key}

    def value_of(self, result: object) -> bytes | None:
        assert result is None or isinstance(result, bytes)
        return result

    def get_multi_query(self, keys: Sequence[str]) -> object:
        return {"op": "get_multi", "keys": list(keys)}

    def values_of(self, result: object) -> list[bytes | None]:
        assert isinstance(result, list)
        return result

    def cas_command(self, key: str, expected: bytes | None, new: bytes) -> bytes | None:
        return encode_command("cas", key, expected=expected, value=new)

    def cas_succeeded(self, result: object) -> bool:
        assert isinstance(result, dict)
        return result["ok"] is True


class TestKVCompacting(TestKVConformance):
    """The same suite with the log folded into the base on every flush."""

    async def make_state_machine(self, path: str) -> StateMachine:
        return KVStateMachine(path, compact_bytes=0)


def _put(index: int, key: str, value: object, term: int = 1) -> Entry:
    return Entry(index, term, data=encode_command("put", key, value=value))


async def started(path: str | Path) -> KVStateMachine:
    kv = KVStateMachine(str(path))
    await kv.start()
    return kv


async def log_of_two_records(path: Path) -> Path:
    """Write ``a`` then ``b`` as two records of a KV log in ``path``; returns the log file."""
    kv = await started(path)
    await kv.apply([_put(1, "a", b"1")])
    await kv.apply([_put(2, "b", b"2")])
    await kv.close()
    return path / "kv.log"


async def test_results_of_each_command(tmp_path: Path) -> None:
    kv = await started(tmp_path)
    results = await kv.apply(
        [
            _put(1, "a", b"1"),
            Entry(2, 1, data=encode_command("delete", "a")),
            Entry(3, 1, data=encode_command("delete", "a")),
            Entry(4, 1, data=encode_command("cas", "a", expected=None, value=b"2")),
            Entry(5, 1, data=encode_command("cas", "a", expected=b"9", value=b"3")),
            Entry(6, 1, data=cbor2.dumps({"op": "frobnicate", "key": "a"})),
            Entry(7, 1, data=cbor2.dumps([1, 2])),
        ]
    )
    assert results[:5] == [
        {"ok": True, "rev": 1},
        {"ok": True, "deleted": True, "rev": 2},
        {"ok": True, "deleted": False, "rev": 3},
        {"ok": True, "value": b"2", "rev": 4},
        {"ok": False, "value": b"2", "rev": 5},
    ]
    for bad in results[5:]:
        assert isinstance(bad, dict) and bad["error"] == "bad_command"
    assert await kv.query({"op": "len"}) == 1
    assert await kv.query(cbor2.dumps({"op": "get", "key": "a"})) == b"2"
    await kv.close()


async def test_chunk_sees_its_own_writes(tmp_path: Path) -> None:
    kv = await started(tmp_path)
    results = await kv.apply(
        [
            _put(1, "a", b"1"),
            Entry(2, 1, data=encode_command("cas", "a", expected=b"1", value=b"2")),
            Entry(3, 1, data=encode_command("delete", "a")),
            Entry(4, 1, data=encode_command("cas", "a", expected=None, value=b"3")),
        ]
    )
    assert [r["ok"] for r in results if isinstance(r, dict)] == [True, True, True, True]
    assert await kv.query({"op": "get", "key": "a"}) == b"3"
    await kv.close()


async def test_bad_queries_raise(tmp_path: Path) -> None:
    kv = await started(tmp_path)
    for q in ({"op": "nope"}, {"op": "get"}, {"op": "get_multi", "keys": [1]}, [1], b"\xff"):
        with pytest.raises(KVQueryError):
            await kv.query(q)
    await kv.close()


async def test_torn_log_tail_is_cut(tmp_path: Path) -> None:
    log = await log_of_two_records(tmp_path)
    size = log.stat().st_size
    os.truncate(log, size - 3)  # the second record lost its end
    kv = await started(tmp_path)
    assert kv.last_applied() == LogId(1, 1)
    assert await kv.query({"op": "get_multi", "keys": ["a", "b"]}) == [b"1", None]
    await kv.apply([_put(2, "b", b"again")])
    await kv.close()
    kv = await started(tmp_path)
    assert await kv.query({"op": "get", "key": "b"}) == b"again"
    await kv.close()


async def test_corruption_before_the_tail_is_an_error(tmp_path: Path) -> None:
    log = await log_of_two_records(tmp_path)
    raw = bytearray(log.read_bytes())
    raw[8 + 8 + 2] ^= 0xFF  # inside the first record's payload
    log.write_bytes(bytes(raw))
    with pytest.raises(KVCorruptError, match="offset 8"):
        await KVStateMachine(str(tmp_path)).start()


async def test_stale_log_after_interrupted_restore_is_ignored(tmp_path: Path) -> None:
    # A restore that crashed after renaming the new base but before resetting
    # the log must not replay the old log's (newer-indexed) records.
    kv = await started(tmp_path / "kv")
    await kv.apply([_put(1, "a", b"1")])
    info = await kv.write_snapshot(str(tmp_path / "snap"))
    await kv.apply([_put(2, "b", b"2"), _put(3, "c", b"3")])
    await kv.flush()
    stale_log = (tmp_path / "kv" / "kv.log").read_bytes()
    await kv.restore_snapshot(str(tmp_path / "snap"), info)
    await kv.close()
    (tmp_path / "kv" / "kv.log").write_bytes(stale_log)
    kv = await started(tmp_path / "kv")
    assert kv.last_applied() == LogId(1, 1)
    assert await kv.query({"op": "get_multi", "keys": ["a", "b", "c"]}) == [b"1", None, None]
    await kv.close()


async def test_digest_covers_state_and_applied_index(tmp_path: Path) -> None:
    a, b = KVStateMachine(str(tmp_path / "a")), KVStateMachine(str(tmp_path / "b"))
    await a.start()
    await b.start()
    # The same writes in a different key order, at the same index: same digest.
    await a.apply([Entry(1, 1, data=encode_command("put", "x", value=b"1"))])
    await a.apply([Entry(2, 1, data=encode_command("put", "y", value=b"2"))])
    await b.apply([Entry(1, 1, data=encode_command("put", "y", value=b"2"))])
    await b.apply([Entry(2, 1, data=encode_command("put", "x", value=b"1"))])
    da, db = await a.query({"op": "digest"}), await b.query({"op": "digest"})
    assert da == db and isinstance(da, dict) and da["index"] == 2
    await b.apply([Entry(3, 1, data=encode_command("put", "x", value=b"3"))])
    assert await b.query({"op": "digest"}) != da
    await a.close()
    await b.close()
