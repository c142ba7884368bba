"""Seeding a fresh node directory from a snapshot (what `docstore restore` does)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trioraft.storage import FileLogStore, SnapshotStore
from trioraft.storage.seed import LOG_DIR, SNAPSHOTS_DIR, seed_node


def test_a_seeded_directory_starts_at_the_snapshot_with_the_new_members(tmp_path: Path) -> None:
    data = os.path.join(tmp_path, "node1")
    body = b"state at 40" * 100
    voters = {1: "127.0.0.1:7101", 2: "127.0.0.1:7102"}
    seed_node(data, body, index=40, term=3, voters=voters)
    log = FileLogStore.open(os.path.join(data, LOG_DIR))
    try:
        assert log.boundary() == (40, 3)
        hs = log.hard_state()
        assert (hs.term, hs.vote, hs.commit) == (3, None, 40)
    finally:
        log.close()
    latest = SnapshotStore(os.path.join(data, SNAPSHOTS_DIR)).latest_stored()
    assert latest is not None
    assert (latest.meta.index, latest.meta.term) == (40, 3)
    assert set(latest.meta.membership.voters) == {1, 2}
    assert latest.meta.membership.address_of(2) == "127.0.0.1:7102"
    with open(latest.path, "rb") as f:
        assert f.read() == body
    with pytest.raises(FileExistsError, match="already holds a node"):
        seed_node(data, body, index=41, term=3, voters=voters)
