"""Crash tests on the embedded apply log: truncation at every offset, bit flips, leftovers.

The embedded directory is the state machine's (``base.snap`` + ``apply.dslog``);
these tests cut and flip the apply log, where every write lands first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio

import docstore
from docstore.engine import Engine
from docstore.storage.datafile import DataFile


def load_digest(path: Path) -> tuple[str, int]:
    f = DataFile(str(path))
    try:
        e = Engine()
        rev = 0
        for rec in f.load():
            e.replay(rec["fx"])
            rev = rec["r"]
        return e.digest(), rev
    finally:
        f.close()


@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, dict[int, str]]:
    """An apply log of 15 records (after its generation record) and the digest after each."""
    digests = {0: Engine().digest()}

    async def build() -> None:
        async with docstore.open(tmp_path / "db", expire_interval=None) as db:
            c = db.collection("c")
            await c.create_index("g")
            digests[db.rev] = await db.digest()
            for i in range(14):
                if i % 5 == 4:
                    await c.delete(f"k{i - 1}")
                else:
                    await c.put(f"k{i}", {"g": i % 3, "pad": "x" * (i * 7)})
                digests[db.rev] = await db.digest()

    trio.run(build)
    return tmp_path / "db" / "apply.dslog", digests


def test_truncation_at_every_offset_recovers_a_prefix(
    tmp_path: Path, history: tuple[Path, dict[int, str]]
) -> None:
    src, digests = history
    data = src.read_bytes()
    seen = set()
    for cut in range(len(data) + 1):
        p = tmp_path / "cut.dslog"
        p.write_bytes(data[:cut])
        digest, rev = load_digest(p)
        assert digests[rev] == digest, cut
        seen.add(rev)
        # The torn tail was truncated: reopening gives the same state, and the file
        # accepts appends again.
        assert load_digest(p) == (digest, rev)
    assert seen == set(digests)


def test_open_after_a_cut_apply_log_recovers_a_prefix(
    tmp_path: Path, history: tuple[Path, dict[int, str]]
) -> None:
    # The same through docstore.open, at a sample of offsets: the whole stack
    # (base, log replay, revision) lands on a state the history passed through.
    src, digests = history
    data = src.read_bytes()

    async def reopen(directory: Path) -> tuple[str, int]:
        async with docstore.open(directory, expire_interval=None) as db:
            return await db.digest(), db.rev

    for cut in range(0, len(data) + 1, 41):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / "apply.dslog").write_bytes(data[:cut])
        digest, rev = trio.run(reopen, d)
        assert digests[rev] == digest, cut


def test_bit_flips_are_detected_or_cut_as_a_torn_tail(
    tmp_path: Path, history: tuple[Path, dict[int, str]]
) -> None:
    src, digests = history
    data = src.read_bytes()
    known = set(digests.values())
    detected = 0
    for pos in range(len(data)):
        for bit in (pos % 8,):
            flipped = bytearray(data)
            flipped[pos] ^= 1 << bit
            p = tmp_path / "flip.dslog"
            p.write_bytes(bytes(flipped))
            try:
                digest, _ = load_digest(p)
            except docstore.CorruptionError as exc:
                assert "flip.dslog" in str(exc)
                detected += 1
                continue
            # Never silently wrong: only an exact prefix of the history.
            assert digest in known, (pos, bit)
    assert detected > len(data) * 0.75  # flips before the last record are reported


async def test_leftover_compaction_file_is_cleaned_on_open(tmp_path: Path) -> None:
    async with docstore.open(tmp_path) as db:
        await db.collection("c").put("k", {})
    for leftover in ("apply.dslog.tmp", "base.snap.new", "base.snap.tmp"):
        (tmp_path / leftover).write_bytes(b"half a compaction")
    async with docstore.open(tmp_path) as db:
        assert await db.collection("c").get("k") is not None
    for leftover in ("apply.dslog.tmp", "base.snap.new", "base.snap.tmp"):
        assert not (tmp_path / leftover).exists()


async def test_appends_after_torn_tail_are_kept(tmp_path: Path) -> None:
    async with docstore.open(tmp_path) as db:
        await db.collection("c").put("a", {})
        await db.collection("c").put("b", {})
    p = tmp_path / "apply.dslog"
    p.write_bytes(p.read_bytes()[:-3])
    async with docstore.open(tmp_path) as db:
        assert [d["_key"] for d in await db.collection("c").scan()] == ["a"]
        await db.collection("c").put("z", {})
    async with docstore.open(tmp_path) as db:
        assert [d["_key"] for d in await db.collection("c").scan()] == ["a", "z"]


def test_copy_of_history_fixture_is_untouched(
    history: tuple[Path, dict[int, str]], tmp_path: Path
) -> None:
    src, digests = history
    dst = tmp_path / "copy.dslog"
    shutil.copy(src, dst)
    assert load_digest(dst)[0] == digests[max(digests)]
