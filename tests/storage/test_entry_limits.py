"""The log's record format holds every entry the wire does."""

from __future__ import annotations

import pathlib

from trioraft.core.types import Entry
from trioraft.storage import FileLogStore
from trioraft.transport.codec import MAX_ENTRY_DATA, MAX_SESSION_ID


def test_largest_entry_with_longest_session_survives_a_reopen(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "log")
    # 4-byte UTF-8 characters: the longest client id in bytes (2052 of the u16's 65535).
    big = Entry(1, 1, data=b"\xff" * MAX_ENTRY_DATA, client_id="\U0001d11e" * MAX_SESSION_ID)
    small = Entry(2, 1, data=b"x", client_id="p" * 256 + "/" + "c" * 256, sequence=2**63 - 1)
    log = FileLogStore.open(path)
    try:
        log.append([big, small])
    finally:
        log.close()
    log = FileLogStore.open(path)
    try:
        assert log.entries(1, 3) == [big, small]
    finally:
        log.close()
