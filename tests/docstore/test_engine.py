"""The pure engine: filters, patches, conditions, batches, indexes, limits, determinism."""

from __future__ import annotations

from typing import Any

import pytest

from docstore import commands as C
from docstore.engine import Engine, Limits
from docstore.engine.filters import compile_filter
from docstore.engine.patch import apply_patch


def run(e: Engine, cmd: dict[str, Any], rev: int, now: int = 0) -> dict[str, Any]:
    return e.apply(cmd, rev, now).result


DOC = {"a": {"b": 5, "c": [1, 2, 3]}, "s": "x", "t": True, "n": None, "tags": ["p", "q"]}


@pytest.mark.parametrize(
    ("flt", "want"),
    [
        ({"a.b": 5}, True),
        ({"a.b": {"$gt": 4, "$lt": 6}}, True),
        ({"a.b": {"$gte": 6}}, False),
        ({"a.c": 2}, True),  # array contains
        ({"a.c.1": 2}, True),  # array index in a path
        ({"a.c": {"$gt": 2}}, True),
        ({"a.c": [1, 2, 3]}, True),
        ({"tags": {"$in": ["z", "q"]}}, True),
        ({"tags": {"$nin": ["p"]}}, False),
        ({"s": {"$ne": "x"}}, False),
        ({"s": {"$gt": 1}}, False),  # range compares same type class only
        ({"t": 1}, False),  # true is not 1
        ({"t": True}, True),
        ({"n": None}, True),
        ({"missing": None}, True),
        ({"missing": {"$exists": False}}, True),
        ({"n": {"$exists": True}}, True),
        ({"$or": [{"s": "y"}, {"a.b": 5}]}, True),
        ({"$and": [{"s": "x"}, {"a.b": {"$ne": 5}}]}, False),
        ({"a.b": {"$not": {"$gt": 10}}}, True),
        ({"$not": {"s": "x"}}, False),
        ({"a": {"b": 5, "c": [1, 2, 3]}}, True),
    ],
)
def test_filter_operators(flt: dict[str, Any], want: bool) -> None:
    assert compile_filter(flt)(DOC) is want


@pytest.mark.parametrize(
    "flt",
    [
        [1],
        {"$foo": 1},
        {"a": {"$gt": [1]}},
        {"a": {"$in": 3}},
        {"a": {"$exists": 1}},
        {"a..b": 1},
        {"a": {"$eq": 1, "b": 2}},
        {"$or": []},
    ],
)
def test_malformed_filters_are_refused(flt: object) -> None:
    with pytest.raises(docstore_errors().InvalidCommandError):
        compile_filter(flt)


def docstore_errors() -> Any:
    import docstore

    return docstore


def test_patch_operators_on_dotted_paths() -> None:
    doc = {"a": {"n": 1}, "l": [1, 2, 2, 3], "m": 5}
    out = apply_patch(
        doc,
        {
            "$set": {"a.b.c": "deep"},
            "$inc": {"a.n": 2, "new": 1},
            "$mul": {"m": 3},
            "$min": {"lo": 4},
            "$max": {"m": 100},
            "$push": {"l": {"$each": [9, 9]}},
            "$pull": {"l": 2},
            "$addToSet": {"s": {"$each": ["x", "x", "y"]}},
            "$unset": {"gone": True},
        },
    )
    assert out == {
        "a": {"n": 3, "b": {"c": "deep"}},
        "l": [1, 3, 9, 9],
        "m": 100,
        "new": 1,
        "lo": 4,
        "s": ["x", "y"],
    }
    assert doc == {"a": {"n": 1}, "l": [1, 2, 2, 3], "m": 5}  # input untouched
    assert apply_patch({"l": [1, 5, 7]}, {"$pull": {"l": {"$gte": 5}}}) == {"l": [1]}


def test_conditions_fail_with_current_revision() -> None:
    e = Engine()
    assert run(e, C.put("c", "k", {"v": 1}, if_rev=0), 1)["ok"]
    res = run(e, C.put("c", "k", {"v": 2}, if_rev=0), 2)
    assert res == {"ok": False, "error": "conflict", "message": res["message"], "rev": 1}
    assert run(e, C.put("c", "k", {"v": 2}, if_rev=1), 3)["ok"]
    assert run(e, C.patch("c", "k", {"$inc": {"v": 1}}, if_match={"v": 9}), 4)["rev"] == 3
    assert run(e, C.delete("c", "k", if_exists=False), 5)["error"] == "conflict"
    assert run(e, C.patch("c", "nope", {"$set": {"v": 1}}), 6)["error"] == "not_found"
    assert run(e, C.patch("c", "nope", {"$set": {"v": 1}}, upsert=True), 7)["created"]
    assert e.get("c", "k") == {"v": 2, "_key": "k", "_rev": 3}


def test_batch_is_all_or_nothing_at_one_revision() -> None:
    e = Engine()
    run(e, C.put("c", "a", {"v": 1}), 1)
    before = e.digest()
    res = run(
        e,
        C.batch(
            [
                C.put("c", "b", {}),
                C.delete("c", "a"),
                C.drop_collection("c"),
                C.put("c", "a", {}, if_rev=1),
            ]
        ),
        2,
    )
    assert res["error"] == "conflict" and res["index"] == 3
    assert e.digest() == before
    res = run(e, C.batch([C.put("c", "b", {}), C.insert("c", {}), C.insert("c", {})]), 3)
    assert [r["key"] for r in res["results"]] == [
        "b",
        "0000000000000003-0000",
        "0000000000000003-0001",
    ]
    assert {d["_rev"] for d in e.find("c")} == {1, 3}


def test_unique_index_and_planner() -> None:
    e = Engine()
    for i in range(20):
        run(e, C.put("c", f"k{i}", {"g": i % 4, "u": i, "tags": [f"t{i % 3}"]}), i + 1)
    assert run(e, C.create_index("c", "u", unique=True), 30)["ok"]
    assert run(e, C.create_index("c", ["g"]), 31)["ok"]
    assert run(e, C.create_index("c", ["tags"]), 32)["ok"]
    res = run(e, C.put("c", "new", {"u": 3}), 33)
    assert res["error"] == "unique_violation" and res["rev"] == 4
    assert (
        run(e, C.create_index("c", "g", unique=True, name="bad"), 34)["error"] == "unique_violation"
    )
    # Index-backed answers equal a full scan.
    for flt in ({"g": 1}, {"g": {"$in": [1, 2]}, "u": {"$gt": 5}}, {"tags": "t1"}, {"u": 7}):
        via_index = [d["_key"] for d in e.find("c", flt)]
        brute = sorted(d["_key"] for d in e.find("c") if compile_filter(flt)(d))
        assert via_index == brute and via_index
    assert [d["u"] for d in e.find("c", {"g": 2}, sort=[["u", -1]], limit=2)] == [18, 14]
    assert run(e, C.drop_index("c", "g"), 35)["dropped"]


def test_limits_enforced_at_apply() -> None:
    e = Engine(limits=Limits(max_doc_bytes=100, max_key_bytes=4, max_depth=3, max_indexes=1))
    assert run(e, C.put("c", "toolong", {}), 1)["error"] == "limit"
    assert run(e, C.put("c", "k", {"x": "y" * 200}), 2)["error"] == "limit"
    assert run(e, C.put("c", "k", {"a": {"b": {"c": {"d": 1}}}}), 3)["error"] == "limit"
    assert run(e, C.create_index("c", "a"), 4)["ok"]
    assert run(e, C.create_index("c", "b"), 5)["error"] == "limit"
    assert run(e, C.patch("c", "k", {"$set": {"x": "y" * 200}}, upsert=True), 6)["error"] == "limit"


@pytest.mark.parametrize(
    "cmd",
    [
        None,
        [],
        {"op": "nope"},
        {"op": "put"},
        {"op": "put", "coll": "c", "key": 1, "doc": {}},
        {"op": "put", "coll": "c", "key": "k", "doc": []},
        {"op": "put", "coll": "$x", "key": "k", "doc": {}},
        {"op": "put", "coll": "c", "key": "k", "doc": {"f": float("nan")}},
        {"op": "patch", "coll": "c", "key": "k", "ops": {"$rename": {"a": "b"}}},
        {"op": "patch", "coll": "c", "key": "k", "ops": {"$set": {"_rev": 1}}},
        {"op": "put", "coll": "c", "key": "k", "doc": {}, "extra": 1},
        {"op": "batch", "commands": [{"op": "batch", "commands": []}]},
    ],
)
def test_invalid_commands_give_error_results(cmd: object) -> None:
    e = Engine()
    res = e.apply(cmd, 1, 0).result
    assert res["ok"] is False and res["error"] in ("invalid", "unknown_command")
    assert e.colls == {}


def test_ttl_hidden_then_expired_by_command() -> None:
    e = Engine()
    run(e, C.put("c", "k", {"_expires": 1000}), 1, now=500)
    assert e.get("c", "k", now_ms=999) is not None
    assert e.get("c", "k", now_ms=1000) is None
    assert e.find("c", now_ms=2000) == []
    # A write at a later time sees the expired document as absent.
    assert run(e, C.put("c", "k", {}, if_exists=False), 2, now=1500)["ok"]
    run(e, C.put("c", "j", {"_expires": 3000}), 3)
    assert run(e, C.expire(2999), 4)["expired"] == 0
    assert run(e, C.expire(3000), 5)["expired"] == 1
    assert [d["_key"] for d in e.find("c")] == ["k"]


def test_replicas_agree_and_replay_of_effects_matches() -> None:
    cmds = [
        C.put("c", "a", {"v": [1]}),
        C.create_index("c", "v"),
        C.insert("c", {"v": 2}),
        C.patch("c", "a", {"$push": {"v": 3}}),
        C.put("d", "x", {}),
        C.drop_collection("d"),
        C.update_many("c", {"v": {"$exists": True}}, {"$set": {"w": 1}}),
    ]
    a, b, c = Engine(), Engine(), Engine()
    for i, cmd in enumerate(cmds, 1):
        ra, rb = a.apply(cmd, i, 7), b.apply(cmd, i, 7)
        assert ra.result == rb.result
        c.replay(ra.effects)
    assert a.digest() == b.digest() == c.digest()
    fresh = Engine()
    fresh.replay(list(a.state_effects()))
    assert fresh.digest() == a.digest()


def test_replicas_answer_alike_after_a_snapshot_unique_index_order() -> None:
    # Two unique indexes created in non-alphabetical order; a snapshot rebuilds
    # them in name order.  An insert that violates both must get the same
    # answer (which index, which revision) on the original and the restored
    # replica, or the session table (and every retried answer) diverges.
    a = Engine()
    a.apply(C.put("u", "x", {"email": "e", "phone": "p"}), 1)
    a.apply(C.put("u", "y", {"email": "f", "phone": "q"}), 2)
    a.apply(C.patch("u", "x", {"$set": {"z": 1}}), 3)  # x and y now differ in _rev
    a.apply(C.create_index("u", ["phone"], unique=True, name="zz_phone"), 4)
    a.apply(C.create_index("u", ["email"], unique=True, name="aa_email"), 5)
    b = Engine()
    b.replay(list(a.state_effects()))
    assert b.digest() == a.digest()
    clash = C.put("u", "new", {"email": "f", "phone": "p"})  # email of y, phone of x
    ra, rb = a.apply(clash, 6).result, b.apply(clash, 6).result
    assert ra["error"] == "unique_violation"
    assert ra == rb


def test_expires_must_be_an_integer_and_reads_survive_old_null_expiry() -> None:
    # Found by the docstore fuzz: {"_expires": null} was accepted, and every read
    # with a clock (and the leader's expiry round) then raised a TypeError.
    e = Engine()
    for doc in ({"_expires": None}, {"_expires": "soon"}, {"_expires": True}):
        r = e.apply(C.put("c", "x", doc), 1, 1_000).result
        assert r["error"] == "invalid", r
    r = e.apply(C.put("c", "y", {"_expires": 9_000}), 2, 1_000).result
    assert r["ok"], r
    r = e.apply(C.patch("c", "y", {"$set": {"_expires": None}}), 3, 1_000).result
    assert r["error"] == "invalid", r
    # A state written before this rule (replayed effects) still reads and expires.
    e.replay([["put", "c", "old", {"_expires": None, "_key": "old", "_rev": 1}]])
    e.apply(C.put("c", "t", {"_expires": 2_000}), 4, 1_000)
    assert e.get("c", "old", now_ms=3_000) is not None
    assert [d["_key"] for d in e.find("c", now_ms=3_000)] == ["old", "y"]
    assert e.apply(C.expire(), 5, 3_000).result["expired"] == 1  # t, not old


def _deepest_document(limits: Limits) -> dict[str, Any]:
    """The most deeply nested document the limits accept (an empty map at the bottom)."""
    doc: dict[str, Any] = {}
    for _ in range(limits.max_depth):
        doc = {"d": doc}
    from docstore.engine.values import check_document

    check_document(doc, limits)
    return doc


def test_a_document_at_the_depth_limit_fits_every_request_and_response() -> None:
    # Found by the docstore fuzz: a document accepted at the nesting limit came
    # back from find as "ClientResponse.result: nested deeper than 32".
    from trioraft.transport.codec import decode_frame, encode_frame
    from trioraft.transport.messages import ClientRequest, ClientResponse

    doc = _deepest_document(Limits())
    put = C.put("c", "k", doc)
    for msg in (
        ClientRequest(1, "command", put),
        ClientRequest(1, "command", C.batch([put])),
        ClientResponse(1, True, {"ok": True, "value": doc}),  # get
        ClientResponse(1, True, {"ok": True, "value": [doc]}),  # find, get_multi
        ClientResponse(1, True, {"change": {"rev": 1, "coll": "c", "key": "k", "doc": doc}}),
    ):
        assert decode_frame(encode_frame([msg])) == [msg]
