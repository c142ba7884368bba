"""One test per validation rule of the decoder (docs/protocol.md, "Validation")."""

from __future__ import annotations

import datetime
from typing import Any

import cbor2
import pytest

from trioraft.core.types import (
    AppendEntries,
    Entry,
    EntryKind,
    Heartbeat,
    InstallSnapshot,
    Membership,
    SnapshotMeta,
)
from trioraft.transport import codec
from trioraft.transport.codec import (
    MAX_INT,
    PROTOCOL_VERSION,
    ProtocolError,
    decode_envelope,
    decode_frame,
    encode_frame,
)
from trioraft.transport.messages import ClientRequest, ClientResponse, Hello, HelloAuth

from .strategies import SAMPLES


def frame(*messages: Any, **extra: Any) -> bytes:
    return cbor2.dumps({"v": PROTOCOL_VERSION, **extra, "m": list(messages)})


def rejects(data: bytes, match: str, **kw: Any) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_frame(data, **kw)


HB = [5, 3, 1, 2, 10, 0]  # a valid Heartbeat


def ae(prev_index: int, prev_term: int, entries: list[list[Any]], term: int = 5) -> list[Any]:
    return [3, term, 1, 2, prev_index, prev_term, 0, entries]


def entry(index: int, term: int, kind: int = 0, data: bytes = b"x") -> list[Any]:
    return [index, term, kind, data, "", 0, 0]


# ---- envelope ---------------------------------------------------------------


def test_valid_hand_built_frame_decodes() -> None:
    assert decode_frame(frame(HB)) == [Heartbeat(3, 1, 2, 10, 0)]


def test_size_limit_is_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(data: bytes) -> Any:
        raise AssertionError("decoded an oversized frame")

    monkeypatch.setattr(codec, "_loads", boom)
    rejects(b"\x00" * 101, "101 bytes exceeds the limit of 100", max_size=100)


def test_default_size_limit() -> None:
    rejects(b"\x00" * (codec.DEFAULT_MAX_FRAME + 1), "exceeds the limit")


@pytest.mark.parametrize("version", [0, 1, 3, True, "2", 2.0, None])
def test_wrong_version(version: Any) -> None:
    rejects(cbor2.dumps({"v": version, "m": [HB]}), "unsupported protocol version")


def test_missing_version() -> None:
    rejects(cbor2.dumps({"m": [HB]}), "unsupported protocol version")


def test_frame_shape() -> None:
    rejects(cbor2.dumps([1, [HB]]), "frame: expected a map")
    rejects(cbor2.dumps({"v": PROTOCOL_VERSION}), "frame.m: expected an array")
    rejects(frame(), "0 messages")
    rejects(frame(HB, x=1), "unknown keys")
    rejects(frame([]), r"frame.m\[0\]: expected a non-empty array")
    rejects(frame(7), r"frame.m\[0\]")


@pytest.mark.parametrize("tag", [0, 9, 99, True, "3", 3.0, None])
def test_unknown_message_type(tag: Any) -> None:
    rejects(frame([tag, 1, 2, 3]), "unknown message type")


def test_cluster_id() -> None:
    data = frame(HB, c="alpha")
    assert decode_envelope(data).cluster_id == "alpha"
    assert decode_frame(data, cluster_id="alpha")
    assert decode_frame(frame(HB), cluster_id="alpha")  # may be omitted
    rejects(data, "frame for cluster 'alpha', this is 'beta'", cluster_id="beta")
    rejects(frame(HB, c=""), "frame.c")
    rejects(frame(HB, c=7), "frame.c")
    rejects(frame(HB, c=None), "frame.c")


def test_accepts_bytearray_and_memoryview_but_not_text() -> None:
    data = frame(HB)
    assert decode_frame(bytearray(data)) == decode_frame(memoryview(data)) == decode_frame(data)
    with pytest.raises(ProtocolError, match="a frame is bytes"):
        decode_frame(data.decode("latin-1"))  # type: ignore[arg-type]


# ---- CBOR level ---------------------------------------------------------------


@pytest.mark.parametrize("tag", [0, 1, 2, 3, 4, 25, 28, 29, 30, 37, 256, 258, 55799, 12345])
def test_cbor_tags_are_refused(tag: int) -> None:
    value = {2: b"\x01", 3: b"\x01", 4: [1, 2], 30: [1, 2], 258: [1]}.get(tag, 1)
    payload = cbor2.CBORTag(tag, value)
    rejects(frame([32, 1, "read", payload, "", 0, "local"]), f"CBOR tag {tag} is not allowed")


def test_shared_reference_cycle_is_refused() -> None:
    # Tag 28/29 could build a cyclic structure; it must never get that far.
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    data = cbor2.dumps(
        {"v": PROTOCOL_VERSION, "m": [[32, 1, "read", cyclic, "", 0, "local"]]}, value_sharing=True
    )
    rejects(data, "CBOR tag 2[89]")


def test_trailing_bytes() -> None:
    rejects(frame(HB) + b"\x00", "1 trailing bytes")


def test_indefinite_length_is_refused() -> None:
    # {"v": 2, "m": [_ [5,3,1,2,10,0] ]} with an indefinite-length outer array
    data = b"\xa2av\x02am\x9f" + cbor2.dumps(HB) + b"\xff"
    rejects(data, "invalid CBOR")


def test_duplicate_keys_are_refused() -> None:
    data = b"\xa3av\x02av\x02am" + cbor2.dumps([HB])
    rejects(data, "invalid CBOR")


def test_integer_map_keys_are_refused() -> None:
    rejects(frame([32, 1, "read", {1: 2}, "", 0, "local"]), "invalid CBOR")


def test_deep_nesting_is_bounded() -> None:
    rejects(b"\x81" * 100_000 + b"\x00", "invalid CBOR")
    ok: Any = 1
    for _ in range(codec.MAX_VALUE_DEPTH):
        ok = [ok]
    assert decode_frame(frame([32, 1, "read", ok, "", 0, "local"]))
    rejects(frame([32, 1, "read", [ok], "", 0, "local"]), "invalid CBOR|nested deeper")


def test_huge_declared_lengths_fail_fast() -> None:
    rejects(b"\xa2av\x02am\x5b\x7f\xff\xff\xff\xff\xff\xff\xff", "invalid CBOR")
    rejects(b"\xa2av\x02am\x9b\x00\x00\x00\x01\x00\x00\x00\x00", "invalid CBOR")


def test_invalid_utf8_is_refused() -> None:
    rejects(b"\xa2av\x02am\x81\x84\x32\x01\x61\xff", "invalid CBOR")


def test_simple_values_and_undefined_are_refused() -> None:
    rejects(frame([32, 1, "read", cbor2.undefined, "", 0, "local"]), "plain CBOR value")
    rejects(frame([32, 1, "read", [cbor2.CBORSimpleValue(99)], "", 0, "local"]), "plain CBOR value")


# ---- fields: count, type, range ---------------------------------------------------


def _sample(name: str) -> list[Any]:
    (raw,) = cbor2.loads(encode_frame([SAMPLES[name]]))["m"]
    assert isinstance(raw, list)
    return raw


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_missing_and_extra_fields(name: str) -> None:
    raw = _sample(name)
    short = raw[:-2] if name == "ClientRequest" else raw[:-1]  # consistency may be left out
    rejects(frame(short), f"{name}: expected {len(raw) - 1} fields")
    rejects(frame([*raw, 0]), f"{name}: expected {len(raw) - 1} fields")


@pytest.mark.parametrize("bad", [True, False, 1.0, "3", None, -1, MAX_INT + 1, 2**64 - 1])
def test_term_must_be_an_unsigned_integer(bad: Any) -> None:
    rejects(frame([5, bad, 1, 2, 10, 0]), "Heartbeat.term: expected an integer")


def test_bignums_are_tags_and_refused() -> None:
    rejects(frame([5, 2**64, 1, 2, 10, 0]), "CBOR tag 2 is not allowed")


@pytest.mark.parametrize("bad", [0, -1, True, MAX_INT + 1, "1"])
def test_node_ids_are_positive(bad: Any) -> None:
    rejects(frame([5, 3, bad, 2, 10, 0]), "Heartbeat.src: expected an integer in 1..")
    rejects(frame([5, 3, 1, bad, 10, 0]), "Heartbeat.dst")


def test_src_and_dst_differ() -> None:
    rejects(frame([5, 3, 2, 2, 10, 0]), "src and dst are both 2")


def test_extreme_valid_integers() -> None:
    hb = decode_frame(frame([5, MAX_INT, MAX_INT, 1, MAX_INT, MAX_INT]))
    assert hb == [Heartbeat(MAX_INT, MAX_INT, 1, MAX_INT, MAX_INT)]


@pytest.mark.parametrize("bad", [1, 0, "true", None])
def test_booleans_are_booleans(bad: Any) -> None:
    rejects(frame([2, 3, 1, 2, bad, False]), "RequestVoteResponse.granted: expected a boolean")


def test_request_vote_log_position() -> None:
    rejects(frame([1, 3, 1, 2, 0, 2, False, False]), "index 0 with term 2")
    rejects(frame([1, 3, 1, 2, 5, 0, False, False]), "index 5 with term 0")
    rejects(frame([1, 3, 1, 2, 5, 4, False, False]), "last_term 4 is newer than term 3")


# ---- AppendEntries ------------------------------------------------------------


def test_append_entries_valid() -> None:
    (msg,) = decode_frame(frame(ae(4, 2, [entry(5, 2), entry(6, 3, 1, b""), entry(7, 5)])))
    assert isinstance(msg, AppendEntries)
    assert [e.index for e in msg.entries] == [5, 6, 7]
    assert msg.entries[1].kind is EntryKind.NOOP


def test_entries_must_follow_prev_index() -> None:
    rejects(frame(ae(4, 2, [entry(6, 2)])), r"entries\[0\].index: 6 breaks the run, expected 5")
    rejects(frame(ae(0, 0, [entry(0, 1)])), "expected 1")


def test_entries_must_be_contiguous() -> None:
    rejects(frame(ae(4, 2, [entry(5, 2), entry(7, 2)])), r"entries\[1\].index: 7 breaks")
    rejects(frame(ae(4, 2, [entry(5, 2), entry(5, 2)])), r"entries\[1\].index")


def test_entry_terms_never_decrease_nor_exceed_the_message_term() -> None:
    rejects(frame(ae(4, 3, [entry(5, 2)])), r"entries\[0\].term: 2 outside")
    rejects(frame(ae(4, 2, [entry(5, 3), entry(6, 2)])), r"entries\[1\].term: 2 outside")
    rejects(frame(ae(4, 2, [entry(5, 6)], term=5)), r"entries\[0\].term: 6 outside")
    rejects(frame(ae(0, 0, [entry(1, 0)])), r"entries\[0\].term: 0")


def test_prev_position_rules() -> None:
    rejects(frame(ae(0, 3, [])), "index 0 with term 3")
    rejects(frame(ae(4, 6, [], term=5)), "prev_term 6 is newer than term 5")


def test_entry_fields() -> None:
    rejects(frame(ae(0, 0, [[1, 1, 0, b"x", "", 0]])), "an array of 7 fields")
    rejects(frame(ae(0, 0, [entry(True, 1)])), r"entries\[0\].index: expected an integer")
    rejects(frame(ae(0, 0, [entry(1, 1, 3)])), r"entries\[0\].kind")
    rejects(frame(ae(0, 0, [entry(1, 1, True)])), r"entries\[0\].kind")
    rejects(frame(ae(0, 0, [[1, 1, 0, "text", "", 0, 0]])), r"entries\[0\].data")
    rejects(frame(ae(0, 0, [[1, 1, 0, b"", 5, 0, 0]])), r"entries\[0\].client_id")
    rejects(frame(ae(0, 0, [[1, 1, 0, b"", "", -1, 0]])), r"entries\[0\].sequence")
    rejects(frame(ae(0, 0, [[1, 1, 0, b"", "", 0, 1.5]])), r"entries\[0\].timestamp_ms")
    rejects(frame(ae(0, 0, "nope")), "AppendEntries.entries: expected an array")  # type: ignore[arg-type]


def test_config_entries_carry_a_valid_membership() -> None:
    good = Membership(frozenset({1, 2})).encode()
    assert decode_frame(frame(ae(0, 0, [entry(1, 1, 2, good)])))
    rejects(frame(ae(0, 0, [entry(1, 1, 2, b"{}")])), "bad membership")
    rejects(frame(ae(0, 0, [entry(1, 1, 2, b"\xff")])), "bad membership")


def test_oversized_entry_data() -> None:
    # Proposals stop at MAX_ENTRY_DATA; the decoder takes what a frame carries
    # (a log written before that limit must still replicate), and no more.
    big = b"x" * (codec.MAX_ENTRY_WIRE_DATA + 1)
    rejects(
        frame(ae(0, 0, [entry(1, 1, 0, big)])),
        r"entries\[0\].data: 16777217 bytes, allowed 0..16777216",
        max_size=2 * codec.DEFAULT_MAX_FRAME,
    )


def test_too_many_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "MAX_ENTRIES", 2)
    rejects(frame(ae(0, 0, [entry(1, 1), entry(2, 1), entry(3, 1)])), "3 entries, at most 2")


def test_too_many_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "MAX_MESSAGES", 2)
    rejects(frame(HB, HB, HB), "3 messages")


# ---- InstallSnapshot and chunks --------------------------------------------------


def snap(
    voters: Any, outgoing: Any = (), learners: Any = (), addrs: Any = (), incs: Any = ()
) -> list[Any]:
    return [
        7, 5, 1, 2, 100, 4, list(voters), list(outgoing), list(learners), list(addrs), list(incs)
    ]  # fmt: skip


def test_install_snapshot_membership() -> None:
    (msg,) = decode_frame(frame(snap([1, 2, 3], [], [4])))
    assert msg == InstallSnapshot(
        5, 1, 2, SnapshotMeta(100, 4, Membership(frozenset({1, 2, 3}), frozenset(), frozenset({4})))
    )
    rejects(frame(snap([])), "invalid membership: a membership needs at least one voter")
    rejects(frame(snap([1, 2], [], [2])), "cannot be both voter and learner")
    rejects(frame(snap([1, 1])), "duplicate node ids")
    rejects(frame(snap([0])), "InstallSnapshot.voters")
    rejects(frame(snap([True])), "InstallSnapshot.voters")
    rejects(frame([7, 5, 1, 2, 100, 4, "1,2", [], [], [], []]), "an array of node ids")
    rejects(frame([7, 5, 1, 2, 0, 4, [1], [], [], [], []]), "InstallSnapshot.index")
    rejects(
        frame([7, 5, 1, 2, 100, 6, [1], [], [], [], []]), "snapshot term 6 is newer than term 5"
    )
    rejects(frame([7, 5, 1, 2, 100, 4, [1], [], [], []]), "InstallSnapshot")  # version 1 arity


def test_install_snapshot_addresses() -> None:
    (msg,) = decode_frame(frame(snap([1, 2], [], [3], [[1, "a:1"], [3, "c:3"]])))
    assert isinstance(msg, InstallSnapshot)
    assert msg.meta.membership.address_of(3) == "c:3"
    assert decode_frame(encode_frame([msg])) == [msg]
    rejects(frame(snap([1], [], [], [[2, "x:1"]])), "invalid membership")  # not a member
    rejects(frame(snap([1], [], [], [[1, ""]])), r"addresses\[0\]\.address")
    rejects(frame(snap([1], [], [], [[1, "a:1", 3]])), r"addresses\[0\]")
    rejects(frame(snap([1], [], [], [[0, "a:1"]])), r"addresses\[0\]\.id")
    rejects(frame(snap([1], [], [], [[1, "a:1"], [1, "b:1"]])), "invalid membership")
    rejects(frame([7, 5, 1, 2, 100, 4, [1], [], [], "a", []]), "addresses")


def test_install_snapshot_incarnations() -> None:
    inc = bytes(range(16))
    (msg,) = decode_frame(frame(snap([1, 2], [], [3], [], [[1, inc], [3, b"i" * 16]])))
    assert isinstance(msg, InstallSnapshot)
    assert msg.meta.membership.incarnation_of(1) == inc.hex()
    assert msg.meta.membership.incarnation_of(2) is None
    assert decode_frame(encode_frame([msg])) == [msg]
    rejects(frame(snap([1], [], [], [], [[2, inc]])), "invalid membership")  # not a member
    rejects(frame(snap([1], [], [], [], [[1, inc[:15]]])), r"incarnations\[0\]\.incarnation")
    rejects(frame(snap([1], [], [], [], [[1, inc.hex()]])), r"incarnations\[0\]\.incarnation")
    rejects(frame(snap([1], [], [], [], [[0, inc]])), r"incarnations\[0\]\.id")
    rejects(frame(snap([1], [], [], [], [[1, inc], [1, inc]])), "invalid membership")
    rejects(frame([7, 5, 1, 2, 100, 4, [1], [], [], [], "a"]), "incarnations")


def test_hello_carries_a_16_byte_incarnation() -> None:
    rejects(frame([48, 1, "c", b"n" * 16]), "Hello")  # version 1 arity
    rejects(frame([48, 1, "c", b"n" * 16, b"i" * 15]), "Hello.incarnation")
    rejects(frame([48, 1, "c", b"n" * 16, "i" * 16]), "Hello.incarnation")


def chunk(offset: int, data: bytes, total: int, done: bool, digest: bytes = b"h" * 32) -> list[Any]:
    return [16, 5, 1, 2, 100, 4, offset, data, total, digest, done]


def test_snapshot_chunk_rules() -> None:
    assert decode_frame(frame(chunk(0, b"abc", 10, False)))
    assert decode_frame(frame(chunk(7, b"abc", 10, True)))
    assert decode_frame(frame(chunk(0, b"", 0, True)))
    rejects(frame(chunk(8, b"abc", 10, True)), "beyond total size 10")
    rejects(frame(chunk(0, b"abc", 10, True)), "done=True but the chunk ends at 3 of 10")
    rejects(frame(chunk(7, b"abc", 10, False)), "done=False")
    rejects(frame(chunk(0, b"abc", 10, False, b"h" * 31)), "sha256: 31 bytes")
    rejects(frame(chunk(0, b"x" * (codec.MAX_CHUNK_DATA + 1), 2**30, False)), "data: 4194305")


# ---- client calls --------------------------------------------------------------


def creq(**kw: Any) -> list[Any]:
    f = {"request_id": 1, "kind": "propose", "payload": b"", "client_id": "", "sequence": 0}
    f["consistency"] = "linearizable"
    f.update(kw)
    return [32, *f.values()]


def test_client_request_rules() -> None:
    (req,) = decode_frame(frame(creq(payload={"op": "get", "keys": ["a", b"b", 1.5, None]})))
    assert isinstance(req, ClientRequest) and req.consistency == "linearizable"
    rejects(frame(creq(kind="")), "ClientRequest.kind")
    rejects(frame(creq(kind="Propose!")), "ClientRequest.kind")
    rejects(frame(creq(kind="x" * 65)), "ClientRequest.kind")
    rejects(frame(creq(client_id="c" * 257)), "ClientRequest.client_id: 257 characters")
    rejects(frame(creq(consistency="strong")), "ClientRequest.consistency")
    for lax in (creq(consistency=None), creq()[:-1]):  # left out or null: the default
        (req,) = decode_frame(frame(lax))
        assert isinstance(req, ClientRequest) and req.consistency == "linearizable"
    rejects(frame(creq(request_id=-1)), "ClientRequest.request_id")


def test_client_response_rules() -> None:
    ok = [33, 1, True, {"n": 1}, "", "", None, None]
    assert decode_frame(frame(ok)) == [ClientResponse(1, True, {"n": 1})]
    err = [33, 1, False, None, "not_leader", "ask 2", 2, "127.0.0.1:7002"]
    assert decode_frame(frame(err)) == [
        ClientResponse(1, False, None, "not_leader", "ask 2", 2, "127.0.0.1:7002")
    ]
    rejects(frame([33, 1, True, None, "oops", "", None, None]), "error_code must be empty")
    rejects(frame([33, 1, False, None, "", "", None, None]), "error_code must be empty")
    rejects(frame([33, 1, False, None, "x", "", 0, None]), "leader_id")
    rejects(frame([33, 1, False, None, "x", "", None, ""]), "leader_addr")
    rejects(frame([33, 1, 1, None, "", "", None, None]), "ClientResponse.ok")


def test_oversized_strings_in_free_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "MAX_VALUE_BYTES", 4)
    rejects(frame(creq(payload=[b"12345"])), "string of 5 exceeds 4")


# ---- handshake messages -------------------------------------------------------


def test_hello_rules() -> None:
    assert decode_frame(frame([48, 1, "c", b"n" * 16, b"i" * 16])) == [
        Hello(1, "c", b"n" * 16, b"i" * 16)
    ]
    inc = b"i" * 16
    rejects(frame([48, 1, "c", b"n" * 15, inc]), "Hello.nonce: 15 bytes, allowed 16..64")
    rejects(frame([48, 1, "c", b"n" * 65, inc]), "Hello.nonce")
    rejects(frame([48, 0, "c", b"n" * 16, inc]), "Hello.node_id")
    rejects(frame([48, 1, "", b"n" * 16, inc]), "Hello.cluster_id")
    rejects(frame([49, "", "c", b"n" * 16]), "ClientHello.client_id")
    rejects(frame([50, b"m" * 31]), "HelloAuth.mac: 31 bytes")
    rejects(frame([51, "", ""]), "HelloReject.code")


# ---- encoder --------------------------------------------------------------------


def test_encoder_refuses_what_the_decoder_would() -> None:
    with pytest.raises(ProtocolError, match="at least one message"):
        encode_frame([])
    with pytest.raises(TypeError, match="not a wire message: Entry"):
        encode_frame([Entry(1, 1)])  # type: ignore[list-item]
    for bad in ({1, 2}, datetime.datetime.now(), {1: "int key"}, 2**64, object()):
        with pytest.raises(ProtocolError, match=r"ClientRequest\.payload"):
            encode_frame([ClientRequest(1, "read", [bad])])


def test_batches_keep_order() -> None:
    msgs = [Heartbeat(1, 1, i, 0) for i in range(2, 40)] + [HelloAuth(b"\x00" * 32)]
    assert decode_frame(encode_frame(msgs)) == msgs
