"""tune_gc: the collector settings of a node process (trioraft/runtime/gcsettings.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trioraft.runtime import GC_THRESHOLDS, tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


def test_tune_gc_raises_the_thresholds_and_freezes_what_is_loaded(restore_gc: None) -> None:
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_freeze_count() > 0
    assert GC_THRESHOLDS[0] > 700  # fewer young collections than CPython's default


def test_tune_gc_refuses_thresholds_it_cannot_set(restore_gc: None) -> None:
    before = gc.get_threshold()
    bad: list[Any] = [(0, 10, 10), (700, 10), (700.0, 10, 10), (True, 1, 1), (700, -1, 10)]
    for thresholds in bad:
        with pytest.raises(ValueError, match="three positive integers"):
            tune_gc(thresholds)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_docstore_serve_tunes_the_collector_before_it_serves(
    restore_gc: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from docstore import cli

    seen: list[tuple[int, ...]] = []

    def fake_run(*args: object, **kwargs: object) -> None:
        seen.append(gc.get_threshold())
        raise OSError("stop here")

    monkeypatch.setattr(cli.trio, "run", fake_run)
    argv = ["serve", "--id", "1", "--listen", "127.0.0.1:0", "--data", str(tmp_path)]
    code = cli.main([*argv, "--secret", "s", "--token", "t"])
    assert code == 1  # the fake run's OSError: "node 1 cannot start"
    assert seen == [GC_THRESHOLDS]
