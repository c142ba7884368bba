"""Which snapshot is "latest": the highest index, never the last one committed."""

from __future__ import annotations

import contextlib
import hashlib

import pytest

from tests.storage.faultfs import FaultFS
from tests.storage.snapshot_files import commit_snapshot
from trioraft.core.types import Membership, SnapshotMeta
from trioraft.statemachine import SnapshotError
from trioraft.storage import SnapshotStore
from trioraft.storage.snapshots import _encode_meta

SNAP = "/snap"
MEMBERS = Membership(frozenset({1, 2, 3}))


def body_of(index: int) -> bytes:
    return b"state at %d;" % index * 5


def commit(fs: FaultFS, store: SnapshotStore, index: int, term: int = 1) -> None:
    commit_snapshot(fs, store, SnapshotMeta(index, term, MEMBERS), body_of(index))


def indexes(store: SnapshotStore) -> list[int]:
    return [s.meta.index for s in store.snapshots()]


def test_latest_snapshot_is_the_highest_index() -> None:
    # The node's own snapshot task commits 100 after the receiver committed
    # the leader's 500: 100 must neither become latest nor push 500 out.
    fs = FaultFS()
    store = SnapshotStore(SNAP, fs=fs)
    commit(fs, store, 500, 3)
    with contextlib.suppress(SnapshotError):  # refusing it is right too
        commit(fs, store, 100, 2)
    latest = store.latest()
    assert latest is not None and latest[0].index == 500
    reopened = SnapshotStore(SNAP, fs=fs.crash())
    latest = reopened.latest()
    assert latest is not None and latest[0].index == 500


def test_an_older_snapshot_is_never_committed_over_a_newer() -> None:
    from trioraft.storage.snapshots import StaleSnapshotError

    fs = FaultFS()
    store = SnapshotStore(SNAP, fs=fs)
    commit(fs, store, 10)
    commit(fs, store, 30)
    with pytest.raises(StaleSnapshotError, match="20"):
        commit(fs, store, 20)
    assert indexes(store) == [10, 30]
    # The refused body is gone, not left behind as a stray temp file.
    assert sorted(fs.listdir(SNAP)) == [
        "snap-0000000001.body",
        "snap-0000000001.meta",
        "snap-0000000002.body",
        "snap-0000000002.meta",
    ]
    # The same snapshot again (a stream resent after a restart) is no error.
    commit(fs, store, 30)
    assert indexes(store) == [10, 30]


def test_snapshots_committed_out_of_order_by_older_code_are_read_by_index() -> None:
    # Files written before the fix: sequence 2 holds the lower index.
    fs = FaultFS()
    store = SnapshotStore(SNAP, fs=fs)
    commit(fs, store, 500)
    body = body_of(100)
    meta = _encode_meta(SnapshotMeta(100, 1, MEMBERS), hashlib.sha256(body).hexdigest(), len(body))
    for name, data in (("snap-0000000002.body", body), ("snap-0000000002.meta", meta)):
        h = fs.open(f"{SNAP}/{name}", create=True)
        h.pwrite(data, 0)
        h.sync()
    fs.sync_dir(SNAP)
    reopened = SnapshotStore(SNAP, fs=fs)
    assert indexes(reopened) == [100, 500]
    latest = reopened.latest()
    assert latest is not None and latest[0].index == 500
    # Pruning keeps the highest indexes, whatever their sequence numbers.
    commit(fs, reopened, 600)
    assert indexes(reopened) == [500, 600]


def test_fallback_index_is_the_oldest_snapshot_kept() -> None:
    fs = FaultFS()
    store = SnapshotStore(SNAP, fs=fs)
    assert store.fallback_index() == 0
    commit(fs, store, 10)
    assert store.fallback_index() == 0  # one snapshot: the log must still reach index 1
    commit(fs, store, 20)
    assert store.fallback_index() == 10
    commit(fs, store, 30)
    assert store.fallback_index() == 20
    one = SnapshotStore("/one", keep=1, fs=fs)
    commit(fs, one, 40)
    assert one.fallback_index() == 40
