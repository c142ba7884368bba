"""The live fuzz of a docstore cluster (tests/chaos/docstore_fuzz.py), short.

``DOCSTORE_FUZZ_REQUESTS`` sets the number of requests (``TRIORAFT_SLOW=1``:
5000), ``DOCSTORE_FUZZ_SEED`` replays a seed (the summary prints it).  The
long run goes by hand: ``python3 -m tests.chaos.docstore_fuzz --requests 20000``.
"""

from __future__ import annotations

import os
import pathlib

import pytest

from tests.chaos.docstore_fuzz import FuzzOptions, run_fuzz
from tests.conftest import SLOW

REQUESTS = int(os.environ.get("DOCSTORE_FUZZ_REQUESTS", 5000 if SLOW else 400))
SEED = int(os.environ["DOCSTORE_FUZZ_SEED"]) if os.environ.get("DOCSTORE_FUZZ_SEED") else None


@pytest.mark.slow
async def test_no_request_stops_a_node_and_replicas_agree_after_a_restart(
    tmp_path: pathlib.Path,
) -> None:
    report = await run_fuzz(FuzzOptions(seed=SEED, requests=REQUESTS, root=str(tmp_path)))
    print(report.summary())
    assert report.ok, report.summary()
    kinds = {label.split("/")[0] for label, c in report.counts.items() if c.sent}
    assert {"command", "query", "membership"} <= kinds, report.summary()
    assert sum(c.sent for c in report.counts.values()) >= REQUESTS, report.summary()
