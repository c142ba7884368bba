"""Snapshots written by hand on the fault file system, as a receiver would write them."""

from __future__ import annotations

import hashlib

from trioraft.core.types import SnapshotMeta
from trioraft.storage import SnapshotStore

from .faultfs import FaultFS


def write_body(fs: FaultFS, store: SnapshotStore, body: bytes) -> str:
    """A durable new file of ``store`` holding ``body``, not yet committed; returns its path."""
    path = store.new_path()
    h = fs.open(path, create=True)
    h.pwrite(body, 0)
    h.sync()
    return path


def commit_snapshot(fs: FaultFS, store: SnapshotStore, meta: SnapshotMeta, body: bytes) -> None:
    """Write ``body`` durably and commit it to ``store`` as the snapshot ``meta`` describes."""
    store.commit(write_body(fs, store, body), meta, sha(body), len(body))


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()
