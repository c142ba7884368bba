"""Seeding a node's data directory from a snapshot, before the node first starts.

Owns the one way Raft storage is written outside a running node: restoring a
backup into a fresh directory (``docstore restore``).  The snapshot is
committed to the node's snapshot store with the new cluster's membership,
the log's boundary is moved to it and the hard state records its term and
commit; on start the node restores its state machine from it, as a follower
does with a snapshot its leader sent.

The directory layout is the runtime's: ``DATA/log`` (:class:`FileLogStore`)
and ``DATA/snapshots`` (:class:`SnapshotStore`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

from trioraft.core.types import HardState, Membership, NodeId, SnapshotMeta
from trioraft.storage.log import FileLogStore
from trioraft.storage.snapshots import SnapshotStore

__all__ = ["LOG_DIR", "SNAPSHOTS_DIR", "seed_node"]

LOG_DIR = "log"
SNAPSHOTS_DIR = "snapshots"


def seed_node(
    data_dir: str, snapshot: bytes, *, index: int, term: int, voters: Mapping[NodeId, str]
) -> None:
    """Make ``data_dir`` a node whose Raft state starts at ``snapshot`` (blocking).

    ``snapshot`` is the state machine's snapshot body at log position
    (``index``, ``term``); ``voters`` maps each member of the new cluster to
    its address.  Everything is durable when this returns.

    Raises:
        FileExistsError: ``data_dir`` already holds a node's log.
    """
    if os.path.exists(os.path.join(data_dir, LOG_DIR)):
        raise FileExistsError(f"{data_dir} already holds a node")
    os.makedirs(data_dir, exist_ok=True)
    store = SnapshotStore(os.path.join(data_dir, SNAPSHOTS_DIR))
    path = store.new_path()
    with open(path, "wb") as f:
        f.write(snapshot)  # commit() fsyncs the body before recording it
    meta = SnapshotMeta(index, term, Membership.of(dict(voters), addresses=dict(voters)))
    store.commit(path, meta, hashlib.sha256(snapshot).hexdigest(), len(snapshot))
    log = FileLogStore.open(os.path.join(data_dir, LOG_DIR))
    try:
        log.compact(index, term)
        log.save_hard_state(HardState(term=term, vote=None, commit=index))
    finally:
        log.close()
