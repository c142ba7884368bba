"""Apply is total: no command, entry or query stops a replica.

Issue "No request can stop the cluster".  A committed entry is applied by
every replica, and again by each at every restart; if apply raises for it,
every node stops for good.  So, for any command (the labelled nasty ones of
``tests/docstore/nasty.py``, arbitrary maps, undecodable bytes):

* ``Engine.apply`` returns; an error result carries a documented code
  (never ``internal``: that is the engine owning up to a bug) and changes
  nothing (same digest, no effects); a success's effects, replayed on
  another engine, give the same digest (what a restart does);
* ``DocstoreStateMachine.apply`` returns one result per entry, each one a
  value a client can be sent; two replicas fed the same entries (in other
  chunks) answer alike and agree on ``digest()``; a third restored from the
  first's snapshot, fed more entries, stays equal; closing and reopening
  the directory (a restart) gives the same digest; ``query`` of any query
  answers, and what it answers can be sent;
* each crasher found before the fix, named below, once at the state machine.

Short by default (under ~20 s); ``TRIORAFT_SLOW=1`` runs many more examples.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from docstore.engine.errors import DocstoreError
from docstore.engine.queries import run_query
from docstore.engine.registry import Registry
from docstore.engine.state import Engine
from docstore.state_machine import DocstoreStateMachine
from tests.conftest import SLOW
from tests.docstore.nasty import (
    SETUP,
    Case,
    arbitrary_commands,
    arbitrary_values,
    commands,
    encode,
    entry_data,
    make_registry,
    plain_problem,
    queries,
    result_problem,
    safe_repr,
    sweep_commands,
    sweep_queries,
    watch_filters,
    wire_problem,
)
from trioraft.core.types import Entry, EntryKind

ENGINE_EXAMPLES = int(os.environ.get("APPLY_TOTAL_EXAMPLES", 3000 if SLOW else 200))
SM_EXAMPLES = int(os.environ.get("APPLY_TOTAL_SM_EXAMPLES", 1000 if SLOW else 150))
NOW = 10**12  # ms: the timestamp most entries carry

HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]


def where(case: Case) -> str:
    return f"[{case.label}] {safe_repr(case.value, 300)}"


# ----------------------------------------------------------------------------
# Engine
# ----------------------------------------------------------------------------


@st.composite
def decoded_garbage(draw: Any) -> Case:
    """What ``cbor2.loads`` makes of garbage entry data (sets, cycles, datetimes...)."""
    case: Case = draw(entry_data())
    try:
        return Case(case.label, cbor2.loads(case.value))
    except Exception:
        return Case(case.label, case.value)


any_command = st.one_of(
    commands(),
    arbitrary_commands(),
    decoded_garbage(),
    arbitrary_values().map(lambda v: Case("arbitrary-value", v)),
)


def fresh_engine(registry: Registry | None = None) -> Engine:
    engine = Engine(registry if registry is not None else make_registry())
    for rev, cmd in enumerate(SETUP, 1):
        assert engine.apply(cmd, rev, NOW).ok, cmd
    return engine


def check_engine_sequence(cases: list[Case], registry: Registry | None = None) -> None:
    engine = fresh_engine(registry)
    mirror = fresh_engine(registry)  # fed only the effects, as a restart replays them
    apply_checked(engine, mirror, cases, len(SETUP) + 1)
    # Whatever the commands stored must stay usable: writes and reads of every document.
    names = sorted(c for c in engine.colls if isinstance(c, str))
    sweep = [Case("sweep", cmd) for name in names for cmd in sweep_commands(name)]
    apply_checked(engine, mirror, sweep, len(SETUP) + len(cases) + 1)
    for name in names:
        keys = sorted(engine.colls[name].docs) if name in engine.colls else []
        for q in sweep_queries(name, keys):
            try:
                answer = run_query(engine, q, NOW)
            except DocstoreError:
                continue
            bad = plain_problem(answer)
            assert bad is None, f"{safe_repr(q)}: the answer holds {bad}"


def apply_checked(engine: Engine, mirror: Engine, cases: list[Case], first_rev: int) -> None:
    for i, case in enumerate(cases):
        rev = first_rev + i
        before = engine.digest()
        applied = engine.apply(case.value, rev, NOW)  # must not raise
        problem = result_problem(applied.result)
        assert problem is None, f"{where(case)} -> {problem}"
        if not applied.ok:
            assert engine.digest() == before, f"{where(case)}: a failed command changed the state"
            assert not applied.effects and not applied.changes, where(case)
            continue
        mirror.replay(applied.effects)
        for coll, doc in engine.iter_documents():
            bad = plain_problem(doc)
            assert bad is None, f"{where(case)}: stored {coll}/{doc.get('_key')}: {bad}"
        assert mirror.digest() == engine.digest(), f"{where(case)}: replayed effects differ"


@settings(max_examples=ENGINE_EXAMPLES, deadline=None, suppress_health_check=HEALTH)
@given(st.lists(any_command, min_size=1, max_size=8))
def test_engine_apply_is_total_and_a_failed_command_changes_nothing(cases: list[Case]) -> None:
    check_engine_sequence(cases)


@settings(max_examples=ENGINE_EXAMPLES // 4, deadline=None, suppress_health_check=HEALTH)
@given(st.lists(commands(), min_size=1, max_size=8))
def test_engine_without_extension_code_is_total(cases: list[Case]) -> None:
    """As ``docstore serve`` runs it: no registry, so every extension lacks code."""
    check_engine_sequence(cases, Registry())


# ----------------------------------------------------------------------------
# State machine
# ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogItem:
    case: Case
    client_id: str = ""
    sequence: int = 0
    timestamp_ms: int = NOW
    kind: EntryKind = EntryKind.NORMAL

    def entry(self, index: int) -> Entry:
        data = self.case.value if self.kind == EntryKind.NORMAL else b""
        return Entry(index, 1, self.kind, data, self.client_id, self.sequence, self.timestamp_ms)


SESSIONS = (("", 0), ("s1", 1), ("s1", 2), ("s2/x", 1), ("s1", 1), ("s3", 2**63 - 1))


@st.composite
def log_items(draw: Any) -> LogItem:
    case: Case = draw(entry_data())
    client_id, sequence = draw(st.sampled_from(SESSIONS))
    ts = draw(st.sampled_from((NOW, 0, 10**14, 2**63 - 1)))
    kind = EntryKind.NOOP if draw(st.integers(0, 19)) == 0 else EntryKind.NORMAL
    return LogItem(case, client_id, sequence, ts, kind)


def setup_items() -> list[LogItem]:
    return [LogItem(Case("setup", encode(cmd))) for cmd in SETUP]


async def started(path: Path, registry: Registry | None) -> DocstoreStateMachine:
    sm = DocstoreStateMachine(str(path), registry=registry)
    await sm.start()
    return sm


def check_results(items: list[LogItem], results: list[object]) -> None:
    assert len(results) == len(items), (len(results), len(items))
    for item, res in zip(items, results, strict=True):
        if item.kind != EntryKind.NORMAL:
            continue
        problem = result_problem(res)
        assert problem is None, f"{where(item.case)} -> {problem}"


async def check_query(sm: DocstoreStateMachine, case: Case) -> None:
    for q in (case.value, encode(case.value)):
        answer = await sm.query(q)  # must not raise
        assert isinstance(answer, dict) and type(answer.get("ok")) is bool, where(case)
        if answer["ok"]:
            bad = plain_problem(answer.get("value"))
            assert bad is None, f"{where(case)}: the answer holds {bad}"
        else:
            assert result_problem(answer) is None, f"{where(case)} -> {result_problem(answer)}"


async def run_replicas(
    root: Path,
    first: list[LogItem],
    more: list[LogItem],
    reads: list[Case],
    watch: list[Case],
    registry: Registry | None,
) -> list[object]:
    a = await started(root / "a", registry)
    b = await started(root / "b", registry)
    watchers = []
    for f in watch:
        with contextlib.suppress(DocstoreError):  # refusing a filter is fine; raising else is not
            watchers.append(a.watch("c", f.value))
    log1 = [it.entry(i) for i, it in enumerate(setup_items() + first, 1)]
    items1 = setup_items() + first
    results = await a.apply(log1)  # must not raise
    check_results(items1, results)
    a.next_expiry()  # the leader's expiry timer reads every document's _expires
    one_by_one: list[object] = []
    for e in log1:
        one_by_one += await b.apply([e])
    assert one_by_one == results, "replicas answered differently"
    assert a.digest() == b.digest(), "replicas diverged"

    info = await a.write_snapshot(str(root / "snap"))
    c = await started(root / "c", registry)
    await c.restore_snapshot(str(root / "snap"), info)
    assert c.digest() == a.digest(), "the restored replica differs"

    # Whatever the entries stored must stay usable: reads and writes of every document.
    names = await a.query({"op": "collections"})
    assert isinstance(names, dict) and names["ok"], names
    for name in names["value"]:
        for sweep in sweep_queries(name):
            await check_query(a, Case("sweep", sweep))
    more = more + [
        LogItem(Case("sweep", encode(cmd))) for n in names["value"] for cmd in sweep_commands(n)
    ]

    log2 = [it.entry(i) for i, it in enumerate(more, len(log1) + 1)]
    ra, rb, rc = await a.apply(log2), await b.apply(log2), await c.apply(log2)
    check_results(more, ra)
    a.next_expiry()
    assert ra == rb == rc, "replicas answered the later entries differently"
    assert a.digest() == b.digest() == c.digest(), "replicas diverged after the snapshot"

    for q in reads:
        await check_query(a, q)
    for w in watchers:
        await w.aclose()

    # A restart replays the base and the apply log: the same state.
    digest, applied = a.digest(), a.last_applied()
    await a.close()
    a = await started(root / "a", registry)
    assert a.last_applied() == applied
    assert a.digest() == digest, "the restarted replica differs"
    for sm in (a, b, c):
        await sm.close()
    return results[len(SETUP) :]


@settings(max_examples=SM_EXAMPLES, deadline=None, suppress_health_check=HEALTH)
@given(
    st.lists(log_items(), min_size=1, max_size=8),
    st.lists(log_items(), max_size=4),
    st.lists(queries(), max_size=4),
    st.lists(watch_filters(), max_size=2),
)
def test_state_machine_apply_is_total_and_replicas_snapshots_restarts_agree(
    first: list[LogItem], more: list[LogItem], reads: list[Case], watch: list[Case]
) -> None:
    with tempfile.TemporaryDirectory() as d:
        trio.run(run_replicas, Path(d), first, more, reads, watch, make_registry())


@settings(max_examples=max(10, SM_EXAMPLES // 2), deadline=None, suppress_health_check=HEALTH)
@given(st.lists(queries(), min_size=1, max_size=10))
def test_state_machine_query_of_anything_answers(reads: list[Case]) -> None:
    async def run(root: Path) -> None:
        sm = await started(root, None)
        await sm.apply([it.entry(i) for i, it in enumerate(setup_items(), 1)])
        for q in reads:
            await check_query(sm, q)
        await sm.close()

    with tempfile.TemporaryDirectory() as d:
        trio.run(run, Path(d))


# ----------------------------------------------------------------------------
# The crashers of the issue, one test each (state machine, no extension code,
# as ``docstore serve`` runs it)
# ----------------------------------------------------------------------------


async def total(
    root: Path, cmds: list[Any], *, watch: list[Any] | None = None
) -> list[dict[str, Any]]:
    """SETUP + ``cmds`` on replicas, snapshot and restart checked; the results of ``cmds``."""
    items = [LogItem(Case("crasher", encode(c))) for c in cmds]
    results = await run_replicas(root, items, [], [], [Case("watch", f) for f in watch or []], None)
    out = []
    for r in results:
        assert isinstance(r, dict)
        out.append(r)
    return out


async def get(root: Path, coll: str, key: str) -> Any:
    sm = await started(root / "a", None)
    try:
        answer = await sm.query({"op": "get", "coll": coll, "key": key})
        assert isinstance(answer, dict) and answer["ok"], answer
        assert wire_problem(answer) is None, wire_problem(answer)
        return answer["value"]
    finally:
        await sm.close()


async def test_crasher_1_byte_string_keys_in_filters_and_if_match(tmp_path: Path) -> None:
    results = await total(
        tmp_path,
        [
            {"op": "update_many", "coll": "c", "filter": {b"k": 1}, "ops": {"$set": {"c": 1}}},
            {"op": "delete_many", "coll": "c", "filter": {b"k": 1}},
            {"op": "delete_many", "coll": "c", "filter": {"arr": {b"$gt": 1}}},
            {"op": "put", "coll": "c", "key": "a", "doc": {}, "if_match": {b"x": 1}},
            {"op": "patch", "coll": "c", "key": "a", "ops": {"$set": {b"x": 1}}},
            {"op": "put", "coll": "c", "key": "b", "doc": {b"x": 1}},
        ],
    )
    assert [r["ok"] for r in results] == [False] * 6, results
    assert (await get(tmp_path, "c", "a"))["arr"] == [1, 2, 3]


async def test_crasher_2_expire_of_an_unhashable_collection(tmp_path: Path) -> None:
    results = await total(
        tmp_path,
        [
            {"op": "expire", "now_ms": 0, "coll": []},
            {"op": "expire", "now_ms": 0, "coll": {}},
            {"op": "expire", "now_ms": 10**14, "coll": ["d"]},
        ],
    )
    assert [r["ok"] for r in results] == [False] * 3, results


async def test_crasher_3_non_ascii_digit_path_segment(tmp_path: Path) -> None:
    await total(
        tmp_path,
        [
            {"op": "patch", "coll": "c", "key": "a", "ops": {"$set": {"arr.²": 1}}},
            {"op": "patch", "coll": "c", "key": "a", "ops": {"$inc": {"arr.٣": 1}}},
            {"op": "update_many", "coll": "c", "filter": {"arr.²": 1}, "ops": {"$set": {"x": 1}}},
            {"op": "update_many", "coll": "c", "filter": {}, "ops": {"$unset": {"arr.1_0": 1}}},
            {"op": "create_index", "coll": "c", "fields": ["arr.²"]},
            # A write the watch's filter below is evaluated against.
            {"op": "put", "coll": "c", "key": "w", "doc": {"arr": [1, 2]}},
        ],
        watch=[{"arr.²": 1}, {"arr. 1": {"$exists": True}}],
    )
    assert (await get(tmp_path, "c", "a"))["arr"] == [1, 2, 3]


async def test_crasher_4_path_segment_of_5000_digits(tmp_path: Path) -> None:
    seg = "1" * 5000
    await total(
        tmp_path,
        [
            {"op": "patch", "coll": "c", "key": "a", "ops": {"$set": {f"arr.{seg}": 1}}},
            {"op": "delete_many", "coll": "c", "filter": {f"arr.{seg}": 1}},
            {"op": "create_index", "coll": "c", "fields": [f"arr.{seg}"]},
            {"op": "put", "coll": "c", "key": "w", "doc": {"arr": [1]}},
        ],
        watch=[{f"arr.{seg}": 1}],
    )
    assert (await get(tmp_path, "c", "a"))["arr"] == [1, 2, 3]


async def test_crasher_5_integer_past_4300_digits_from_repeated_mul(tmp_path: Path) -> None:
    huge_start = {"op": "put", "coll": "c", "key": "z", "doc": {"n": 10**1000}}
    mul_huge = {"op": "patch", "coll": "c", "key": "z", "ops": {"$mul": {"n": 10**1000}}}
    mul_max = {"op": "patch", "coll": "c", "key": "a", "ops": {"$mul": {"n": 2**64 - 1}}}
    await total(
        tmp_path,
        [
            {"op": "batch", "commands": [huge_start] + [mul_huge] * 5},
            {"op": "batch", "commands": [mul_max] * 240},
            {"op": "update_many", "coll": "c", "filter": {}, "ops": {"$mul": {"n": 2**64 - 1}}},
        ],
    )
    n = (await get(tmp_path, "c", "a"))["n"]
    assert -(2**64) <= n < 2**64


async def test_crasher_6_register_without_code_then_use_it(tmp_path: Path) -> None:
    results = await total(
        tmp_path,
        [
            {"op": "register", "kind": "type", "name": "ghost", "version": 1},
            {"op": "create_collection", "coll": "e", "type": "ghost"},
            {"op": "register", "kind": "command", "name": "ghost", "version": 1},
            {"op": "call", "name": "ghost", "version": 1, "args": {}},
            {
                "op": "batch",
                "commands": [
                    {"op": "register", "kind": "type", "name": "g2", "version": 1},
                    {"op": "create_collection", "coll": "f", "type": "g2"},
                ],
            },
        ],
    )
    assert [r["ok"] for r in results] == [False] * 5, results


async def test_crasher_12_inc_past_2_64_minus_1(tmp_path: Path) -> None:
    results = await total(
        tmp_path,
        [
            {"op": "patch", "coll": "c", "key": "a", "ops": {"$inc": {"n": 1}}},
            {"op": "patch", "coll": "c", "key": "a", "ops": {"$inc": {"neg": -1}}},
            {"op": "patch", "coll": "c", "key": "a", "ops": {"$mul": {"n": 2}}},
            {"op": "update_many", "coll": "c", "filter": {}, "ops": {"$inc": {"n": 2**64 - 1}}},
        ],
    )
    assert [r["ok"] for r in results] == [False] * 4, results
    doc = await get(tmp_path, "c", "a")
    assert doc["n"] == 2**64 - 1 and doc["neg"] == -(2**64)


async def test_found_by_the_fuzz_expires_null_stops_every_leader(tmp_path: Path) -> None:
    """Not in the issue's list; the live fuzz found it.  ``{"_expires": null}`` was
    accepted by put.  Then the leader's expiry timer (``next_expiry``, min over the
    documents' ``_expires``) raised TypeError and stopped every node that became
    leader, again after a restart; reads with a clock raised TypeError out of
    ``query``; update_many/delete_many of the collection answered ``internal``."""
    results = await total(
        tmp_path,
        [
            {"op": "put", "coll": "c", "key": "x", "doc": {"_expires": None}},
            {"op": "update_many", "coll": "c", "filter": {}, "ops": {"$set": {"y": 1}}},
            {"op": "patch", "coll": "c", "key": "b", "ops": {"$set": {"_expires": None}}},
            {"op": "put", "coll": "c", "key": "z", "doc": {"_expires": 10**13}},
        ],
    )
    assert all(result_problem(r) is None for r in results), results
    sm = await started(tmp_path / "a", None)
    try:
        sm.next_expiry()  # the leader's timer
        for q in sweep_queries("c"):
            await check_query(sm, Case("expires-null", q))
    finally:
        await sm.close()


def test_the_checks_can_fail() -> None:
    """The helpers above are not vacuous: they refuse what the crashers produced."""
    assert wire_problem({"ok": True, "n": 2**64}) is not None
    assert plain_problem({"n": 10**5000}) is not None
    assert plain_problem({b"k": float("nan")}) is not None
    assert result_problem({"ok": False, "error": "internal", "message": "bug"}) is not None
    assert result_problem({"ok": True, "rev": 1}) is None
