"""The log directory's incarnation: created once, durable, never changed."""

from __future__ import annotations

import pathlib

import pytest

from trioraft.core.types import is_incarnation
from trioraft.storage import FileLogStore, MemoryLogStore, StorageCorruption
from trioraft.storage.log import IDENTITY_FILE

from .faultfs import FaultFS, power_cut

DIR = "/data/log"


def test_a_new_directory_gets_an_incarnation_that_survives_reopening(
    tmp_path: pathlib.Path,
) -> None:
    with FileLogStore.open(str(tmp_path / "a")) as a:
        first = a.incarnation()
    assert is_incarnation(first)
    with FileLogStore.open(str(tmp_path / "a")) as a:
        assert a.incarnation() == first
    with FileLogStore.open(str(tmp_path / "b")) as b:
        assert b.incarnation() != first  # another directory, another incarnation
    assert is_incarnation(MemoryLogStore().incarnation())


def test_a_lost_directory_comes_back_with_another_incarnation(tmp_path: pathlib.Path) -> None:
    d = tmp_path / "log"
    with FileLogStore.open(str(d)) as s:
        first = s.incarnation()
    for f in d.iterdir():
        f.unlink()
    d.rmdir()
    with FileLogStore.open(str(d)) as s:
        assert s.incarnation() != first


def test_power_loss_while_creating_the_identity() -> None:
    # At every cut, a reboot finds either no identity (a new one is made)
    # or the complete one: never a torn file.
    for cut in range(1, 50):
        fs = FaultFS()
        with power_cut(fs, cut) as outage:
            FileLogStore.open(DIR, fs=fs).close()
        if not outage.happened:
            break
        for crashed in fs.crash_variants():
            with FileLogStore.open(DIR, fs=crashed) as s:
                assert is_incarnation(s.incarnation())
    fs = FaultFS()
    with FileLogStore.open(DIR, fs=fs) as s:
        first = s.incarnation()
    for crashed in fs.crash_variants():
        with FileLogStore.open(DIR, fs=crashed) as s:
            assert s.incarnation() == first  # synced before open returned


def test_a_damaged_identity_is_corruption(tmp_path: pathlib.Path) -> None:
    d = tmp_path / "log"
    FileLogStore.open(str(d)).close()
    path = d / IDENTITY_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(StorageCorruption, match="identity"):
        FileLogStore.open(str(d))
