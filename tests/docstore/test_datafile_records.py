"""The apply log's records on open: parsed together, refused one by one.

``DataFile.load`` parses all records as one JSON array (a restart replays the
whole log); whatever that cannot take must still be refused with the number
of the bad record, exactly as a record-by-record parse does.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from docstore.engine.errors import CorruptionError
from docstore.storage.datafile import MAGIC, DataFile, encode_record
from docstore.storage.records import frame


def load(tmp: Path, payloads: list[bytes]) -> list[dict[str, object]]:
    path = tmp / "apply.dslog"
    path.write_bytes(MAGIC + b"".join(frame(p) for p in payloads))
    log = DataFile(str(path), sync=False)
    try:
        return log.load()
    finally:
        log.close()


GOOD = [
    encode_record(0, [], gen=3)[8:],
    encode_record(5, [["put", "c", "k", {"a": [1, 2.5, None], "_key": "k", "_rev": 5}]], t=2, ms=9)[
        8:
    ],
    encode_record(6, [["del", "c", "k"], ["sess", "s1", 4, {"rev": 6}, 10]], t=2, ms=11)[8:],
]


def test_good_records_load_as_each_parses(tmp_path: Path) -> None:
    assert load(tmp_path, GOOD) == [json.loads(p) for p in GOOD]
    assert load(tmp_path, []) == []


@pytest.mark.parametrize(
    "bad",
    [
        b'{"r": 1, "fx": []}, {"r": 2, "fx": []}',  # two records in one: valid once joined
        b'{"r": 1, "fx": [',  # the first half of a record ...
        b"]}",  # ... and its second half: valid once joined
        b'{"r": 1, "fx": []',
        b"[]",
        b'{"r": "1", "fx": []}',
        b'{"r": 1}',
        b'{"r": 1, "fx": {}}',
        b"\xff\xfe",
    ],
)
def test_a_bad_record_is_named(tmp_path: Path, bad: bytes) -> None:
    with pytest.raises(CorruptionError, match=r"apply\.dslog: undecodable record #1"):
        load(tmp_path, [GOOD[0], bad, GOOD[1]])


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [*GOOD, b'{"r": 1, "fx": [', b"]}", b'{"r":1,"fx":[]},{"r":2,"fx":[]}', b"7"]
        ),
        max_size=6,
    )
)
def test_same_verdict_as_record_by_record(payloads: list[bytes]) -> None:
    expected: object
    try:
        expected = [json.loads(p) for p in payloads]
        if not all(
            type(r) is dict and type(r.get("r")) is int and type(r.get("fx")) is list
            for r in expected
        ):
            expected = CorruptionError
    except ValueError:
        expected = CorruptionError
    with tempfile.TemporaryDirectory() as tmp:
        try:
            got: object = load(Path(tmp), payloads)
        except CorruptionError:
            got = CorruptionError
    assert got == expected
