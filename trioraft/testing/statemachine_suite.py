"""Conformance tests every :class:`trioraft.StateMachine` should pass.

The Python counterpart of d-engine's ``StateMachineTestSuite``: lifecycle,
apply and ``last_applied``, idempotent re-application, NOOP/CONFIG entries,
snapshot write/restore (with checksum refusal), durability across reopen and
across a crash, and consistent multi-key reads.

Use it by subclassing in a pytest module (pytest-trio's ``trio_mode`` on)::

    from trioraft.testing.statemachine_suite import StateMachineSuite
    from trioraft.kv import KVStateMachine, encode_command

    class TestKV(StateMachineSuite):
        async def make_state_machine(self, path):
            return KVStateMachine(path)

        def put_command(self, key, value):
            return encode_command("put", key, value=value)

        def get_multi_query(self, keys):
            return {"op": "get_multi", "keys": list(keys)}

        def values_of(self, result):
            return list(result)
"""

from __future__ import annotations

import gc
import hashlib
import os
import pathlib
import warnings
from collections.abc import Sequence

import pytest
import trio

from trioraft.core.types import Entry, EntryKind, Membership
from trioraft.statemachine import LogId, SnapshotError, SnapshotInfo, StateMachine

__all__ = ["StateMachineSuite"]


def _read_bytes(path: pathlib.Path) -> bytes:
    return path.read_bytes()


class StateMachineSuite:
    """Base class of the conformance tests; subclass it as ``Test...``.

    Required hooks:

    ``async make_state_machine(path) -> StateMachine``
        A new, **not yet started** state machine keeping its files under
        ``path`` (an existing directory, empty on the first call).  The suite
        calls ``start()`` itself.  Calling it again with the same ``path`` is a
        reopen: the new object must recover what the old one made durable.
    ``put_command(key, value) -> bytes``
        The ``Entry.data`` of a command that sets ``key`` (a short ASCII
        string) to ``value`` (bytes).
    ``get_multi_query(keys) -> object``
        A query reading all ``keys`` (possibly empty, possibly repeated) from
        one consistent state.
    ``values_of(result) -> list[bytes | None]``
        The values in a ``get_multi_query`` result, in the order asked, None
        for an absent key.

    Optional hooks (defaults shown in the code):

    ``get_query(key)`` / ``value_of(result)``
        A single-key read; by default a one-key ``get_multi_query``.
    ``cas_command(key, expected, new) -> bytes | None``
        A compare-and-swap command (``expected`` None: "only if absent"), or
        None (the default) if the machine has none: the CAS tests then skip.
    ``cas_succeeded(result) -> bool``
        Whether an apply result of ``cas_command`` says the swap happened.
    ``malformed_command() -> bytes``
        ``Entry.data`` the machine cannot parse; applying it must give a
        result, not raise.
    ``async crash(sm)``
        Called before the suite drops a started machine *without* ``close()``
        to simulate a crash.  The default does nothing; override it to release
        locks or descriptors that would stop a reopen, without flushing.
        After it, the suite drops its reference and runs ``gc.collect()`` with
        ``ResourceWarning`` ignored.

    Tests receive pytest's ``tmp_path`` fixture; nothing else is assumed.
    """

    # ---- hooks -----------------------------------------------------------

    async def make_state_machine(self, path: str) -> StateMachine:
        raise NotImplementedError

    def put_command(self, key: str, value: bytes) -> bytes:
        raise NotImplementedError

    def get_multi_query(self, keys: Sequence[str]) -> object:
        raise NotImplementedError

    def values_of(self, result: object) -> list[bytes | None]:
        raise NotImplementedError

    def get_query(self, key: str) -> object:
        return self.get_multi_query([key])

    def value_of(self, result: object) -> bytes | None:
        (value,) = self.values_of(result)
        return value

    def cas_command(self, key: str, expected: bytes | None, new: bytes) -> bytes | None:
        return None

    def cas_succeeded(self, result: object) -> bool:
        raise NotImplementedError

    def malformed_command(self) -> bytes:
        return b"\xff\xfe\x00 not a command"

    async def crash(self, sm: StateMachine) -> None:
        return None

    # ---- helpers ---------------------------------------------------------

    async def _open(self, path: pathlib.Path) -> StateMachine:
        os.makedirs(path, exist_ok=True)
        sm = await self.make_state_machine(str(path))
        await sm.start()
        return sm

    def _put(self, index: int, key: str, value: bytes, term: int = 1) -> Entry:
        return Entry(index=index, term=term, data=self.put_command(key, value))

    async def _get(self, sm: StateMachine, key: str) -> bytes | None:
        return self.value_of(await sm.query(self.get_query(key)))

    async def _get_many(self, sm: StateMachine, keys: Sequence[str]) -> list[bytes | None]:
        values = self.values_of(await sm.query(self.get_multi_query(keys)))
        assert len(values) == len(keys)
        return values

    async def _apply_history(self, sm: StateMachine, first: int, last: int) -> None:
        """Apply steps ``first..last``, one chunk: step i is two entries (2i-1, 2i).

        Entry 2i-1 sets ``k{i}``, entry 2i overwrites ``last`` with i, so the
        state after step n is recognisable: ``k1..kn`` present, nothing above,
        ``last == n``.
        """
        entries: list[Entry] = []
        for i in range(first, last + 1):
            entries.append(self._put(2 * i - 1, f"k{i}", b"v%d" % i))
            entries.append(self._put(2 * i, "last", b"%d" % i))
        await sm.apply(entries)

    async def _check_history(self, sm: StateMachine, upto_max: int) -> int:
        """Assert the state is exactly history up to some n; return n."""
        applied = sm.last_applied()
        assert applied.index % 2 == 0, f"last_applied {applied} splits a history step"
        n = applied.index // 2
        assert 0 <= n <= upto_max
        keys = [f"k{i}" for i in range(1, upto_max + 1)] + ["last"]
        values = await self._get_many(sm, keys)
        expect: list[bytes | None] = [b"v%d" % i if i <= n else None for i in range(1, n + 1)]
        expect += [None] * (upto_max - n)
        expect.append(b"%d" % n if n else None)
        assert values == expect, f"data does not match last_applied {applied}"
        return n

    async def _drop(self, sm: StateMachine) -> None:
        await self.crash(sm)
        del sm
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()

    async def _snapshot(self, sm: StateMachine, path: pathlib.Path) -> SnapshotInfo:
        info = await sm.write_snapshot(str(path))
        blob = _read_bytes(path)
        applied = sm.last_applied()
        assert (info.index, info.term) == (applied.index, applied.term)
        assert info.checksum == hashlib.sha256(blob).hexdigest()
        assert info.size == len(blob)
        return info

    # ---- lifecycle -------------------------------------------------------

    async def test_start_stop(self, tmp_path: pathlib.Path) -> None:
        sm = await self._open(tmp_path / "sm")
        assert sm.last_applied() == LogId(0, 0)
        assert await self._get(sm, "absent") is None
        await sm.close()
        sm = await self._open(tmp_path / "sm")
        assert sm.last_applied() == LogId(0, 0)
        await sm.close()

    # ---- apply -----------------------------------------------------------

    async def test_apply_chunk_reports_last_applied(self, tmp_path: pathlib.Path) -> None:
        sm = await self._open(tmp_path / "sm")
        results = await sm.apply([self._put(i, f"k{i}", b"v%d" % i) for i in (1, 2, 3)])
        assert len(results) == 3
        assert sm.last_applied() == LogId(3, 1)
        results = await sm.apply([self._put(4, "k1", b"new", term=2), self._put(5, "k5", b"x", 2)])
        assert len(results) == 2
        assert sm.last_applied() == LogId(5, 2)
        assert await self._get_many(sm, ["k1", "k2", "k3", "k5", "k9"]) == [
            b"new",
            b"v2",
            b"v3",
            b"x",
            None,
        ]
        await sm.close()

    async def test_reapplying_applied_entries_is_a_noop(self, tmp_path: pathlib.Path) -> None:
        sm = await self._open(tmp_path / "sm")
        await sm.apply([self._put(i, f"k{i}", b"v%d" % i) for i in (1, 2, 3)])
        # A re-sent chunk (same indexes, here with other contents) changes nothing.
        again = [self._put(i, f"k{i}", b"changed") for i in (2, 3)]
        assert await sm.apply(again) == [None, None]
        assert sm.last_applied() == LogId(3, 1)
        assert await self._get_many(sm, ["k2", "k3"]) == [b"v2", b"v3"]
        # A chunk overlapping the applied prefix applies only its new tail.
        results = await sm.apply([self._put(3, "k3", b"changed"), self._put(4, "k4", b"v4")])
        assert results[0] is None and len(results) == 2
        assert sm.last_applied() == LogId(4, 1)
        assert await self._get_many(sm, ["k3", "k4"]) == [b"v3", b"v4"]
        await sm.close()

    async def test_noop_and_config_entries_advance_last_applied(
        self, tmp_path: pathlib.Path
    ) -> None:
        sm = await self._open(tmp_path / "sm")
        config = Membership(frozenset({1, 2, 3})).encode()
        results = await sm.apply(
            [
                Entry(1, 1, EntryKind.NOOP),
                Entry(2, 1, EntryKind.CONFIG, config),
                self._put(3, "a", b"1"),
                Entry(4, 2, EntryKind.NOOP),
            ]
        )
        assert results[0] is None and results[1] is None and results[3] is None
        assert sm.last_applied() == LogId(4, 2)
        await sm.apply([Entry(5, 3, EntryKind.NOOP)])
        assert sm.last_applied() == LogId(5, 3)
        assert await self._get(sm, "a") == b"1"
        await sm.close()

    async def test_malformed_command_is_a_result_not_an_exception(
        self, tmp_path: pathlib.Path
    ) -> None:
        sm = await self._open(tmp_path / "sm")
        results = await sm.apply(
            [Entry(1, 1, data=self.malformed_command()), self._put(2, "a", b"1")]
        )
        assert len(results) == 2
        assert sm.last_applied() == LogId(2, 1)
        assert await self._get(sm, "a") == b"1"
        await sm.close()

    async def test_hundred_entries_apply_quickly(self, tmp_path: pathlib.Path) -> None:
        # d-engine's performance smoke: 100 entries in well under a second.
        sm = await self._open(tmp_path / "sm")
        start = trio.current_time()
        await sm.apply([self._put(i, f"k{i}", b"x" * 100) for i in range(1, 101)])
        await sm.flush()
        assert trio.current_time() - start < 1.0
        assert sm.last_applied() == LogId(100, 1)
        await sm.close()

    # ---- compare-and-swap (optional) -------------------------------------

    def _cas(self, index: int, key: str, expected: bytes | None, new: bytes) -> Entry:
        data = self.cas_command(key, expected, new)
        if data is None:
            pytest.skip("state machine has no compare-and-swap")
        return Entry(index, 1, data=data)

    async def test_cas_on_absent_key(self, tmp_path: pathlib.Path) -> None:
        self._cas(1, "probe", None, b"")
        sm = await self._open(tmp_path / "sm")
        (res,) = await sm.apply([self._cas(1, "a", b"something", b"x")])
        assert not self.cas_succeeded(res)
        assert await self._get(sm, "a") is None
        (res,) = await sm.apply([self._cas(2, "a", None, b"x")])
        assert self.cas_succeeded(res)
        assert await self._get(sm, "a") == b"x"
        await sm.close()

    async def test_cas_match_and_mismatch(self, tmp_path: pathlib.Path) -> None:
        self._cas(1, "probe", None, b"")
        sm = await self._open(tmp_path / "sm")
        await sm.apply([self._put(1, "a", b"old")])
        (res,) = await sm.apply([self._cas(2, "a", b"wrong", b"new")])
        assert not self.cas_succeeded(res)
        assert await self._get(sm, "a") == b"old"
        (res,) = await sm.apply([self._cas(3, "a", b"old", b"new")])
        assert self.cas_succeeded(res)
        assert await self._get(sm, "a") == b"new"
        assert sm.last_applied() == LogId(3, 1)
        await sm.close()

    # ---- snapshots -------------------------------------------------------

    async def test_snapshot_then_restore_replaces_state(self, tmp_path: pathlib.Path) -> None:
        sm = await self._open(tmp_path / "sm")
        await sm.apply([self._put(1, "a", b"1"), self._put(2, "b", b"2")])
        info = await self._snapshot(sm, tmp_path / "snap")
        await sm.apply([self._put(3, "a", b"changed", 2), self._put(4, "c", b"3", 2)])
        await sm.restore_snapshot(str(tmp_path / "snap"), info)
        assert sm.last_applied() == LogId(2, 1)
        assert await self._get_many(sm, ["a", "b", "c"]) == [b"1", b"2", None]
        # The restored state is durable, and applying continues after it.
        await sm.apply([self._put(3, "d", b"4", 3)])
        await sm.close()
        sm = await self._open(tmp_path / "sm")
        assert sm.last_applied() == LogId(3, 3)
        assert await self._get_many(sm, ["a", "b", "c", "d"]) == [b"1", b"2", None, b"4"]
        await sm.close()

    async def test_restore_into_another_machine(self, tmp_path: pathlib.Path) -> None:
        src = await self._open(tmp_path / "src")
        await self._apply_history(src, 1, 5)
        info = await self._snapshot(src, tmp_path / "snap")
        await src.close()
        dst = await self._open(tmp_path / "dst")
        await dst.apply([self._put(1, "stale", b"x")])
        await dst.restore_snapshot(str(tmp_path / "snap"), info)
        assert dst.last_applied() == LogId(10, 1)
        assert await self._check_history(dst, 5) == 5
        assert await self._get(dst, "stale") is None
        await dst.close()

    async def test_snapshot_with_bad_checksum_is_refused(self, tmp_path: pathlib.Path) -> None:
        sm = await self._open(tmp_path / "sm")
        await sm.apply([self._put(1, "a", b"1")])
        info = await self._snapshot(sm, tmp_path / "snap")
        await sm.apply([self._put(2, "a", b"2"), self._put(3, "b", b"3")])
        blob = bytearray((tmp_path / "snap").read_bytes())
        blob[len(blob) // 2] ^= 0x01
        (tmp_path / "bad").write_bytes(bytes(blob))
        with pytest.raises(SnapshotError):
            await sm.restore_snapshot(str(tmp_path / "bad"), info)
        # A good file with the wrong expected checksum is refused too.
        wrong = SnapshotInfo(info.index, info.term, "0" * 64, info.size)
        with pytest.raises(SnapshotError):
            await sm.restore_snapshot(str(tmp_path / "snap"), wrong)
        (tmp_path / "short").write_bytes((tmp_path / "snap").read_bytes()[:-1])
        with pytest.raises(SnapshotError):
            await sm.restore_snapshot(str(tmp_path / "short"), info)
        assert sm.last_applied() == LogId(3, 1)
        assert await self._get_many(sm, ["a", "b"]) == [b"2", b"3"]
        await sm.close()
        sm = await self._open(tmp_path / "sm")
        assert sm.last_applied() == LogId(3, 1)
        assert await self._get_many(sm, ["a", "b"]) == [b"2", b"3"]
        await sm.close()

    # ---- durability ------------------------------------------------------

    async def test_data_survives_close_and_reopen(self, tmp_path: pathlib.Path) -> None:
        sm = await self._open(tmp_path / "sm")
        await self._apply_history(sm, 1, 4)
        await sm.close()
        sm = await self._open(tmp_path / "sm")
        assert sm.last_applied() == LogId(8, 1)
        assert await self._check_history(sm, 4) == 4
        await sm.close()

    async def test_crash_after_flush_keeps_flushed_state(self, tmp_path: pathlib.Path) -> None:
        sm = await self._open(tmp_path / "sm")
        await self._apply_history(sm, 1, 3)
        await sm.flush()
        await self._drop(sm)
        sm = await self._open(tmp_path / "sm")
        assert await self._check_history(sm, 3) == 3
        await sm.close()

    async def test_crash_without_flush_leaves_consistent_state(
        self, tmp_path: pathlib.Path
    ) -> None:
        sm = await self._open(tmp_path / "sm")
        await self._apply_history(sm, 1, 2)
        await sm.flush()
        await self._apply_history(sm, 3, 4)
        await self._apply_history(sm, 5, 6)
        await self._drop(sm)
        sm = await self._open(tmp_path / "sm")
        # Whatever survived, last_applied and the data must agree, and nothing
        # flushed may be lost.
        n = await self._check_history(sm, 6)
        assert n >= 2
        # Raft re-sends what the machine reports missing; it then catches up.
        if n < 6:
            await self._apply_history(sm, n + 1, 6)
        assert await self._check_history(sm, 6) == 6
        await sm.close()

    async def test_crash_with_nothing_flushed(self, tmp_path: pathlib.Path) -> None:
        sm = await self._open(tmp_path / "sm")
        await self._apply_history(sm, 1, 3)
        await self._drop(sm)
        sm = await self._open(tmp_path / "sm")
        await self._check_history(sm, 3)
        await sm.close()

    # ---- reads -----------------------------------------------------------

    async def test_get_multi_order_absent_and_empty(self, tmp_path: pathlib.Path) -> None:
        sm = await self._open(tmp_path / "sm")
        await sm.apply([self._put(1, "a", b"1"), self._put(2, "b", b"2")])
        assert await self._get_many(sm, ["b", "zz", "a", "a"]) == [b"2", None, b"1", b"1"]
        assert await self._get_many(sm, ["x", "y"]) == [None, None]
        assert await self._get_many(sm, []) == []
        await sm.close()

    async def test_get_multi_sees_one_state_while_chunks_apply(
        self, tmp_path: pathlib.Path
    ) -> None:
        sm = await self._open(tmp_path / "sm")
        keys = [f"key{j}" for j in range(16)]
        rounds = 20
        index = 0
        seen: list[list[bytes | None]] = []

        async def writer() -> None:
            nonlocal index
            for r in range(rounds):
                chunk = []
                for key in keys:
                    index += 1
                    chunk.append(self._put(index, key, b"gen%d" % r))
                await sm.apply(chunk)
                await trio.lowlevel.checkpoint()

        async def reader() -> None:
            while index < rounds * len(keys):
                seen.append(await self._get_many(sm, keys))
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            nursery.start_soon(reader)
        assert seen
        for values in seen:
            assert len(set(values)) == 1, f"torn read: {values}"
        await sm.close()

    async def test_snapshot_file_is_only_at_the_path(self, tmp_path: pathlib.Path) -> None:
        sm = await self._open(tmp_path / "sm")
        await sm.apply([self._put(1, "a", b"1")])
        snapdir = tmp_path / "snaps"
        snapdir.mkdir()
        await self._snapshot(sm, snapdir / "snap-1")
        # Written via a temp file and renamed: nothing else is left behind.
        assert os.listdir(snapdir) == ["snap-1"]
        await sm.close()
