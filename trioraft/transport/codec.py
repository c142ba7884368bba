"""The versioned CBOR envelope: typed messages in, bytes out, and back.

Theory of operation
-------------------
A frame is one CBOR map ``{"v": version, "c": cluster_id (optional), "m":
[message, ...]}`` carried in one WebSocket binary message.  Each message is a
CBOR array ``[type_tag, field, field, ...]`` with a fixed number of
positional fields per type (see ``docs/protocol.md`` for the table).  Arrays
with integer tags keep frames small and decoding cheap: this is the hot path
(every AppendEntries and acknowledgement crosses it).

Decoding is the trust boundary (DESIGN.md layer rule 5).  Everything wrong
becomes :class:`ProtocolError`, and only the dataclasses of
:mod:`trioraft.core.types` and :mod:`trioraft.transport.messages` come out:

* the size limit is checked before a single byte is decoded;
* CBOR is decoded with definite lengths only, no duplicate map keys, map keys
  restricted to text/byte strings (no hash-flooding with crafted integer
  keys), bounded nesting, and every tag rejected -- including the ones cbor2
  would otherwise turn into datetimes, decimals, shared references (cycles!),
  regexes and so on; trailing bytes after the frame are an error;
* every field is checked for its exact type (``bool`` is not an ``int``
  here, although Python says it is), its range (terms and indexes are
  ``0..2**63-1``, node ids ``1..2**63-1``) and its length;
* cross-field rules hold: entries in an AppendEntries are contiguous from
  ``prev_index + 1`` with non-decreasing terms no newer than the message's;
  a membership is valid; a snapshot chunk stays inside its file.

Entry limits are set so that nothing a leader appends can be refused here:
an entry's ``client_id`` may hold a session (``"<principal>/<client_id>"``,
:data:`MAX_SESSION_ID`), and entry data may be as large as a frame carries
(:data:`MAX_ENTRY_WIRE_DATA`) although proposals stop at
:data:`MAX_ENTRY_DATA`, so a log written before that limit still
replicates.  :func:`append_entries_bound` tells a configuration how large
its biggest AppendEntries can get.

Free-form values (``ClientRequest.payload``, ``ClientResponse.result``) may be
null, booleans, integers (64-bit), floats, text, bytes, arrays and maps with
text or byte-string keys, nested at most :data:`MAX_VALUE_DEPTH` deep.

Encoding trusts its input's types (they come from our own code) apart from
free-form values, which are checked so that a frame we send is one a peer
accepts.

Why this is one file past 600 lines: the encoders and the per-type
decoders (``_d_*``) must agree field for field, under one version number
and one set of limits, and the decoders share the field checks (``_uint``,
``_text``, ``_check_value``...); apart, a field added on one side and not
the other would be easy to miss.  The handshake MAC at the end (``new_nonce``,
``handshake_mac``; about 50 lines) shares only the message types and the
version, and is the seam if this file grows; not split yet.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import cbor2

from trioraft.core.types import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Membership,
    RequestVote,
    RequestVoteResponse,
    SnapshotMeta,
    TimeoutNow,
    parse_address,
)
from trioraft.transport.messages import (
    AnyMessage,
    ClientHello,
    ClientRequest,
    ClientResponse,
    Hello,
    HelloAuth,
    HelloReject,
    SnapshotChunk,
    SnapshotChunkAck,
)

__all__ = [
    "CONSISTENCY_LEVELS",
    "DEFAULT_MAX_FRAME",
    "DIALER",
    "FRAME_OVERHEAD",
    "INCARNATION_SIZE",
    "LISTENER",
    "MAX_ENTRY_DATA",
    "MAX_ENTRY_WIRE_DATA",
    "MAX_SESSION_ID",
    "PROTOCOL_VERSION",
    "Frame",
    "ProtocolError",
    "append_entries_bound",
    "assemble_frame",
    "decode_envelope",
    "decode_frame",
    "decode_value",
    "encode_frame",
    "encode_message",
    "encode_value",
    "handshake_mac",
    "new_nonce",
    "verify_handshake_mac",
]

#: 2: Hello carries the sender's incarnation (also bound by the handshake
#: MAC); InstallSnapshot carries the membership's incarnation records.
PROTOCOL_VERSION: Final = 2
DEFAULT_MAX_FRAME: Final = 16 * 1024 * 1024

MAX_INT: Final = 2**63 - 1  # terms, indexes, ids, offsets: fit a signed 64-bit integer
MAX_MESSAGES: Final = 65_536  # per frame
MAX_ENTRIES: Final = 65_536  # per AppendEntries
MAX_ENTRY_DATA: Final = 8 * 1024 * 1024  # a proposal's command, at most (Node.propose)
MAX_ENTRY_WIRE_DATA: Final = DEFAULT_MAX_FRAME  # entry data a follower accepts
MAX_CHUNK_DATA: Final = 4 * 1024 * 1024
MAX_VALUE_BYTES: Final = 8 * 1024 * 1024  # one byte or text string inside a free value
MAX_VALUE_DEPTH: Final = 32
MAX_ID: Final = 256  # client ids, cluster ids, addresses (characters)
#: An entry's client_id: a session "<principal>/<client_id>" of two ids.
MAX_SESSION_ID: Final = 2 * MAX_ID + 1
MAX_CODE: Final = 64  # request kinds, error codes
MAX_TEXT: Final = 65_536  # error messages
MIN_NONCE: Final = 16
MAX_NONCE: Final = 64
MAC_SIZE: Final = 32
INCARNATION_SIZE: Final = 16  # bytes of a data directory's incarnation id
CONSISTENCY_LEVELS: Final = frozenset({"linearizable", "lease", "local"})

#: Bytes an entry's encoding adds to its data, at most: the array head, four
#: 64-bit integers and the kind, the data's head, and a client id of
#: MAX_SESSION_ID characters of up to 4 UTF-8 bytes with its head.
MAX_ENTRY_OVERHEAD: Final = 1 + 4 * 9 + 1 + 5 + 3 + 4 * MAX_SESSION_ID
#: Bytes an AppendEntries adds to its entries, at most: the array head, the
#: type, six 64-bit integers and the entries' array head.
MAX_APPEND_OVERHEAD: Final = 1 + 1 + 6 * 9 + 5

# Frame map -> "m" array -> message array: free values start at depth 3.
_MAX_DEPTH = 3 + MAX_VALUE_DEPTH
_KIND_RE = re.compile(r"[a-z][a-z0-9_.\-]{0,63}")
_KINDS = (EntryKind.NORMAL, EntryKind.NOOP, EntryKind.CONFIG)


class ProtocolError(ValueError):
    """A frame that is malformed, oversized, of another version or otherwise invalid.

    The message names the offending message type and field.  A peer that
    sends one should be disconnected.
    """


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded frame: its protocol version, optional cluster id and messages."""

    version: int
    cluster_id: str | None
    messages: tuple[AnyMessage, ...]


# --------------------------------------------------------------------------
# Type tags.  Part of the wire format: never reuse a number.
# --------------------------------------------------------------------------

T_REQUEST_VOTE: Final = 1
T_REQUEST_VOTE_RESPONSE: Final = 2
T_APPEND_ENTRIES: Final = 3
T_APPEND_ENTRIES_RESPONSE: Final = 4
T_HEARTBEAT: Final = 5
T_HEARTBEAT_RESPONSE: Final = 6
T_INSTALL_SNAPSHOT: Final = 7
T_TIMEOUT_NOW: Final = 8
T_SNAPSHOT_CHUNK: Final = 16
T_SNAPSHOT_CHUNK_ACK: Final = 17
T_CLIENT_REQUEST: Final = 32
T_CLIENT_RESPONSE: Final = 33
T_HELLO: Final = 48
T_CLIENT_HELLO: Final = 49
T_HELLO_AUTH: Final = 50
T_HELLO_REJECT: Final = 51


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------


def _e_entries(entries: tuple[Entry, ...]) -> list[list[Any]]:
    return [
        [e.index, e.term, int(e.kind), e.data, e.client_id, e.sequence, e.timestamp_ms]
        for e in entries
    ]


def _e_ids(ids: frozenset[int]) -> list[int]:
    return sorted(ids)


_ENCODERS: dict[type, Callable[[Any], list[Any]]] = {
    RequestVote: lambda m: [
        T_REQUEST_VOTE,
        m.term,
        m.src,
        m.dst,
        m.last_index,
        m.last_term,
        m.pre_vote,
        m.transfer,
    ],
    RequestVoteResponse: lambda m: [
        T_REQUEST_VOTE_RESPONSE,
        m.term,
        m.src,
        m.dst,
        m.granted,
        m.pre_vote,
    ],
    AppendEntries: lambda m: [
        T_APPEND_ENTRIES,
        m.term,
        m.src,
        m.dst,
        m.prev_index,
        m.prev_term,
        m.commit,
        _e_entries(m.entries),
    ],
    AppendEntriesResponse: lambda m: [
        T_APPEND_ENTRIES_RESPONSE,
        m.term,
        m.src,
        m.dst,
        m.success,
        m.index,
        m.hint_index,
        m.hint_term,
    ],
    Heartbeat: lambda m: [T_HEARTBEAT, m.term, m.src, m.dst, m.commit, m.ctx],
    HeartbeatResponse: lambda m: [T_HEARTBEAT_RESPONSE, m.term, m.src, m.dst, m.ctx],
    InstallSnapshot: lambda m: [
        T_INSTALL_SNAPSHOT,
        m.term,
        m.src,
        m.dst,
        m.meta.index,
        m.meta.term,
        _e_ids(m.meta.membership.voters),
        _e_ids(m.meta.membership.voters_outgoing),
        _e_ids(m.meta.membership.learners),
        [[n, a] for n, a in m.meta.membership.addresses],
        [[n, bytes.fromhex(i)] for n, i in m.meta.membership.incarnations],
    ],
    TimeoutNow: lambda m: [T_TIMEOUT_NOW, m.term, m.src, m.dst],
    SnapshotChunk: lambda m: [
        T_SNAPSHOT_CHUNK,
        m.term,
        m.src,
        m.dst,
        m.snapshot_index,
        m.snapshot_term,
        m.offset,
        m.data,
        m.total_size,
        m.sha256,
        m.done,
    ],
    SnapshotChunkAck: lambda m: [
        T_SNAPSHOT_CHUNK_ACK,
        m.term,
        m.src,
        m.dst,
        m.snapshot_index,
        m.snapshot_term,
        m.next_offset,
    ],
    ClientRequest: lambda m: [
        T_CLIENT_REQUEST,
        m.request_id,
        m.kind,
        _check_value(m.payload, "ClientRequest.payload", 0),
        m.client_id,
        m.sequence,
        m.consistency,
    ],
    ClientResponse: lambda m: [
        T_CLIENT_RESPONSE,
        m.request_id,
        m.ok,
        _check_value(m.result, "ClientResponse.result", 0),
        m.error_code,
        m.error_message,
        m.leader_id,
        m.leader_addr,
    ],
    Hello: lambda m: [T_HELLO, m.node_id, m.cluster_id, m.nonce, m.incarnation],
    ClientHello: lambda m: [T_CLIENT_HELLO, m.client_id, m.cluster_id, m.nonce],
    HelloAuth: lambda m: [T_HELLO_AUTH, m.mac],
    HelloReject: lambda m: [T_HELLO_REJECT, m.code, m.message],
}


def encode_frame(messages: Sequence[AnyMessage], *, cluster_id: str | None = None) -> bytes:
    """Pack one or more messages into one frame.

    Raises:
        TypeError: an object that is not a wire message.
        ProtocolError: no messages, or a free-form value (payload/result) the
            decoder would refuse.

    Example::

        data = encode_frame([Heartbeat(term=3, src=1, dst=2, commit=10)])
        assert decode_frame(data) == [Heartbeat(term=3, src=1, dst=2, commit=10)]
    """
    if not messages:
        raise ProtocolError("a frame carries at least one message")
    body: list[list[Any]] = []
    for m in messages:
        enc = _ENCODERS.get(type(m))
        if enc is None:
            raise TypeError(f"not a wire message: {type(m).__name__}")
        body.append(enc(m))
    frame: dict[str, Any] = {"v": PROTOCOL_VERSION}
    if cluster_id is not None:
        frame["c"] = cluster_id
    frame["m"] = body
    return cbor2.dumps(frame)


def encode_message(message: AnyMessage) -> bytes:
    """The CBOR encoding of one message, for :func:`assemble_frame`.

    A sender that batches can encode each message once, learn its exact size,
    and cut frames below a limit without encoding anything twice.

    Raises:
        TypeError: an object that is not a wire message.
        ProtocolError: a free-form value (payload/result) the decoder would refuse.
    """
    enc = _ENCODERS.get(type(message))
    if enc is None:
        raise TypeError(f"not a wire message: {type(message).__name__}")
    return cbor2.dumps(enc(message))


def append_entries_bound(entries: int, data_bytes: int) -> int:
    """The most bytes :func:`encode_message` can make of an AppendEntries.

    For ``entries`` entries holding ``data_bytes`` bytes of data in all,
    whatever their indexes, terms and session ids.  A sender that keeps
    this within its frame budget never sends what a follower refuses.
    """
    return MAX_APPEND_OVERHEAD + entries * MAX_ENTRY_OVERHEAD + data_bytes


def _head(major: int, n: int) -> bytes:
    """A CBOR item head in preferred (shortest) form."""
    if n < 24:
        return bytes((major << 5 | n,))
    for info, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * width):
            return bytes((major << 5 | info,)) + n.to_bytes(width, "big")
    raise ValueError(f"length {n} does not fit CBOR")


_V_ITEM: Final = cbor2.dumps("v") + cbor2.dumps(PROTOCOL_VERSION)
_C_KEY: Final = cbor2.dumps("c")
_M_KEY: Final = cbor2.dumps("m")

#: Bytes a frame adds to its encoded messages, at most (with a cluster id of
#: :data:`MAX_ID` characters of up to 4 UTF-8 bytes and 65536 messages).
FRAME_OVERHEAD: Final = 1 + len(_V_ITEM) + len(_C_KEY) + 3 + 4 * MAX_ID + len(_M_KEY) + 5


def assemble_frame(encoded: Sequence[bytes], *, cluster_id: str | None = None) -> bytes:
    """Wrap messages encoded by :func:`encode_message` in a frame.

    The result is byte-for-byte what :func:`encode_frame` returns for the same
    messages; its size is ``sum(map(len, encoded))`` plus at most
    :data:`FRAME_OVERHEAD`.
    """
    if not encoded:
        raise ProtocolError("a frame carries at least one message")
    parts = [_head(5, 2 if cluster_id is None else 3), _V_ITEM]
    if cluster_id is not None:
        parts += (_C_KEY, cbor2.dumps(cluster_id))
    parts += (_M_KEY, _head(4, len(encoded)), *encoded)
    return b"".join(parts)


# --------------------------------------------------------------------------
# Decoding: field checks.  Each returns the value, so decoders read naturally.
# --------------------------------------------------------------------------


def _describe(v: object) -> str:
    text = repr(v)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(v).__name__} {text}"


def _fail(where: str, want: str, got: object) -> NoReturn:
    raise ProtocolError(f"{where}: expected {want}, got {_describe(got)}")


def _uint(v: Any, where: str) -> int:
    if type(v) is not int or v < 0 or v > MAX_INT:
        _fail(where, f"an integer in 0..{MAX_INT}", v)
    return v


def _pos(v: Any, where: str) -> int:
    if type(v) is not int or v <= 0 or v > MAX_INT:
        _fail(where, f"an integer in 1..{MAX_INT}", v)
    return v


def _bool(v: Any, where: str) -> bool:
    if type(v) is not bool:
        _fail(where, "a boolean", v)
    return v


def _bytes(v: Any, where: str, limit: int, minimum: int = 0) -> bytes:
    if type(v) is not bytes or not minimum <= len(v) <= limit:
        _bad_string(v, where, bytes, limit, minimum)
    return v


def _text(v: Any, where: str, limit: int, minimum: int = 0) -> str:
    if type(v) is not str or not minimum <= len(v) <= limit:
        _bad_string(v, where, str, limit, minimum)
    return v


def _bad_string(
    v: Any, where: str, want: type[bytes] | type[str], limit: int, minimum: int
) -> NoReturn:
    """Why ``v`` failed :func:`_bytes` (``want`` is bytes) or :func:`_text` (str)."""
    if type(v) is not want:
        _fail(where, "a byte string" if want is bytes else "a text string", v)
    unit = "bytes" if want is bytes else "characters"
    raise ProtocolError(f"{where}: {len(v)} {unit}, allowed {minimum}..{limit}")


def _check_value(v: Any, where: str, depth: int) -> Any:
    """Accept a plain CBOR value (see module docstring); return it unchanged."""
    t = type(v)
    if v is None or t is bool or t is float:
        return v
    if t is int:
        if not -(2**64) <= v < 2**64:
            raise ProtocolError(f"{where}: integer {v} does not fit CBOR's 64-bit range")
        return v
    if t is str or t is bytes:
        if len(v) > MAX_VALUE_BYTES:
            raise ProtocolError(f"{where}: string of {len(v)} exceeds {MAX_VALUE_BYTES}")
        return v
    if depth >= MAX_VALUE_DEPTH:
        raise ProtocolError(f"{where}: nested deeper than {MAX_VALUE_DEPTH}")
    items: Any
    if t is list or t is tuple:
        items = v
    elif t is dict:
        for key in v:
            if type(key) is not str and type(key) is not bytes:
                _fail(where, "map keys that are text or byte strings", key)
        items = v.values()
    else:
        _fail(where, "a plain CBOR value", v)
    # Leaves that pass as they are (strings within the limit, null, booleans,
    # floats) are checked here, without a call: most items are leaves.
    for item in items:
        ti = type(item)
        if ti is str:
            if len(item) <= MAX_VALUE_BYTES:
                continue
        elif item is None or ti is bool or ti is float:
            continue
        _check_value(item, where, depth + 1)
    return v


def _arity(m: list[Any], n: int, name: str) -> None:
    if len(m) != n:
        raise ProtocolError(f"{name}: expected {n - 1} fields, got {len(m) - 1}")


def _raft_head(m: list[Any], n: int, name: str) -> None:
    """Check what every Raft message opens with: ``[tag, term, src, dst, ...]``, ``n`` in all.

    The checks are inlined and the field names built only on failure: every
    message crosses here.
    """
    if len(m) != n:
        _arity(m, n, name)
    term, src, dst = m[1], m[2], m[3]
    if type(term) is not int or not 0 <= term <= MAX_INT:
        _uint(term, name + ".term")
    if type(src) is not int or not 0 < src <= MAX_INT:
        _pos(src, name + ".src")
    if type(dst) is not int or not 0 < dst <= MAX_INT:
        _pos(dst, name + ".dst")
    if src == dst:
        raise ProtocolError(f"{name}: src and dst are both {src}")


def _log_pos(index: Any, log_term: Any, term: int, name: str, field: str) -> None:
    """A position in the sender's log: ``<field>_index`` and ``<field>_term`` of ``name``.

    Index 0 is the empty log, whose term is 0; any real entry has term >= 1,
    and none is newer than the message's ``term``.
    """
    if type(index) is not int or not 0 <= index <= MAX_INT:
        _uint(index, f"{name}.{field}_index")
    if type(log_term) is not int or not 0 <= log_term <= MAX_INT:
        _uint(log_term, f"{name}.{field}_term")
    if (index == 0) != (log_term == 0):
        where = f"{name}.{field}_index/{field}_term"
        raise ProtocolError(f"{where}: index {index} with term {log_term}")
    if log_term > term:
        raise ProtocolError(f"{name}: {field}_term {log_term} is newer than term {term}")


# --------------------------------------------------------------------------
# Decoding: one function per message type.
# --------------------------------------------------------------------------


def _d_request_vote(m: list[Any]) -> RequestVote:
    _raft_head(m, 8, "RequestVote")
    _, term, src, dst, last_index, last_term, pre_vote, transfer = m
    _log_pos(last_index, last_term, term, "RequestVote", "last")
    _bool(pre_vote, "RequestVote.pre_vote")
    _bool(transfer, "RequestVote.transfer")
    return RequestVote(term, src, dst, last_index, last_term, pre_vote, transfer)


def _d_request_vote_response(m: list[Any]) -> RequestVoteResponse:
    _raft_head(m, 6, "RequestVoteResponse")
    _, term, src, dst, granted, pre_vote = m
    return RequestVoteResponse(
        term,
        src,
        dst,
        _bool(granted, "RequestVoteResponse.granted"),
        _bool(pre_vote, "RequestVoteResponse.pre_vote"),
    )


def _d_append_entries(m: list[Any]) -> AppendEntries:
    _raft_head(m, 8, "AppendEntries")
    _, term, src, dst, prev_index, prev_term, commit, raw = m
    _log_pos(prev_index, prev_term, term, "AppendEntries", "prev")
    _uint(commit, "AppendEntries.commit")
    if type(raw) is not list:
        _fail("AppendEntries.entries", "an array", raw)
    if len(raw) > MAX_ENTRIES:
        raise ProtocolError(f"AppendEntries: {len(raw)} entries, at most {MAX_ENTRIES}")
    if prev_index + len(raw) > MAX_INT:
        raise ProtocolError("AppendEntries: entry indexes overflow")
    entries: list[Entry] = []
    expect = prev_index + 1
    last_term = prev_term
    for e in raw:
        # Inlined checks: this loop is the hottest code in the transport.
        if type(e) is not list or len(e) != 7:
            _fail(f"AppendEntries.entries[{len(entries)}]", "an array of 7 fields", e)
        index, eterm, kind, data, client_id, sequence, ts = e
        if type(index) is not int or index != expect:
            where = f"AppendEntries.entries[{len(entries)}].index"
            if type(index) is int:
                raise ProtocolError(f"{where}: {index} breaks the run, expected {expect}")
            _fail(where, "an integer", index)
        if type(eterm) is not int or eterm < last_term or eterm > term:
            where = f"AppendEntries.entries[{len(entries)}].term"
            if type(eterm) is int:
                raise ProtocolError(
                    f"{where}: {eterm} outside {max(last_term, 1)}..{term} "
                    "(entry terms never decrease and never exceed the message term)"
                )
            _fail(where, "an integer", eterm)
        if eterm == 0:
            raise ProtocolError(f"AppendEntries.entries[{len(entries)}].term: 0")
        if type(kind) is not int or not 0 <= kind <= 2:
            _fail(f"AppendEntries.entries[{len(entries)}].kind", "0, 1 or 2", kind)
        if type(data) is not bytes or len(data) > MAX_ENTRY_WIRE_DATA:
            _bytes(data, f"AppendEntries.entries[{len(entries)}].data", MAX_ENTRY_WIRE_DATA)
        if type(client_id) is not str or len(client_id) > MAX_SESSION_ID:
            where = f"AppendEntries.entries[{len(entries)}].client_id"
            _text(client_id, where, MAX_SESSION_ID)
        if type(sequence) is not int or not 0 <= sequence <= MAX_INT:
            _uint(sequence, f"AppendEntries.entries[{len(entries)}].sequence")
        if type(ts) is not int or not 0 <= ts <= MAX_INT:
            _uint(ts, f"AppendEntries.entries[{len(entries)}].timestamp_ms")
        if kind == 2:
            try:
                Membership.decode(data)
            except ValueError as exc:
                raise ProtocolError(
                    f"AppendEntries.entries[{len(entries)}].data: bad membership: {exc}"
                ) from None
        entries.append(Entry(index, eterm, _KINDS[kind], data, client_id, sequence, ts))
        expect += 1
        last_term = eterm
    return AppendEntries(term, src, dst, prev_index, prev_term, tuple(entries), commit)


def _d_append_entries_response(m: list[Any]) -> AppendEntriesResponse:
    _raft_head(m, 8, "AppendEntriesResponse")
    _, term, src, dst, success, index, hint_index, hint_term = m
    return AppendEntriesResponse(
        term,
        src,
        dst,
        _bool(success, "AppendEntriesResponse.success"),
        _uint(index, "AppendEntriesResponse.index"),
        _uint(hint_index, "AppendEntriesResponse.hint_index"),
        _uint(hint_term, "AppendEntriesResponse.hint_term"),
    )


def _d_heartbeat(m: list[Any]) -> Heartbeat:
    _raft_head(m, 6, "Heartbeat")
    _, term, src, dst, commit, ctx = m
    return Heartbeat(term, src, dst, _uint(commit, "Heartbeat.commit"), _uint(ctx, "Heartbeat.ctx"))


def _d_heartbeat_response(m: list[Any]) -> HeartbeatResponse:
    _raft_head(m, 5, "HeartbeatResponse")
    _, term, src, dst, ctx = m
    return HeartbeatResponse(term, src, dst, _uint(ctx, "HeartbeatResponse.ctx"))


def _d_ids(v: Any, where: str) -> frozenset[int]:
    if type(v) is not list:
        _fail(where, "an array of node ids", v)
    ids = frozenset(_pos(x, where) for x in v)
    if len(ids) != len(v):
        raise ProtocolError(f"{where}: duplicate node ids")
    return ids


def _d_per_node(
    v: Any, where: str, what: str, check: Callable[[Any, str], str]
) -> list[tuple[int, str]]:
    """An array of ``[node id, <what>]`` pairs; ``check`` checks (and converts) the second."""
    if type(v) is not list:
        _fail(where, f"an array of [id, {what}]", v)
    pairs = []
    for i, pair in enumerate(v):
        if type(pair) is not list or len(pair) != 2:
            raise ProtocolError(f"{where}[{i}]: expected [id, {what}]")
        node = _pos(pair[0], f"{where}[{i}].id")
        pairs.append((node, check(pair[1], f"{where}[{i}].{what}")))
    return pairs


def _d_address(v: Any, where: str) -> str:
    address = _text(v, where, MAX_ID, 1)
    try:
        parse_address(address)
    except ValueError:
        _fail(where, "host:port", address)
    return address


def _d_incarnation(v: Any, where: str) -> str:
    return _bytes(v, where, INCARNATION_SIZE, INCARNATION_SIZE).hex()


def _d_install_snapshot(m: list[Any]) -> InstallSnapshot:
    _raft_head(m, 11, "InstallSnapshot")
    _, term, src, dst, index, sterm, voters, outgoing, learners, addrs, incs = m
    _pos(index, "InstallSnapshot.index")
    _pos(sterm, "InstallSnapshot.snapshot_term")
    if sterm > term:
        raise ProtocolError(f"InstallSnapshot: snapshot term {sterm} is newer than term {term}")
    addresses = _d_per_node(addrs, "InstallSnapshot.addresses", "address", _d_address)
    incarnations = _d_per_node(incs, "InstallSnapshot.incarnations", "incarnation", _d_incarnation)
    try:
        membership = Membership(
            _d_ids(voters, "InstallSnapshot.voters"),
            _d_ids(outgoing, "InstallSnapshot.voters_outgoing"),
            _d_ids(learners, "InstallSnapshot.learners"),
            tuple(sorted(addresses)),
            tuple(sorted(incarnations)),
        )
    except ValueError as exc:
        if isinstance(exc, ProtocolError):
            raise
        raise ProtocolError(f"InstallSnapshot: invalid membership: {exc}") from None
    return InstallSnapshot(term, src, dst, SnapshotMeta(index, sterm, membership))


def _d_timeout_now(m: list[Any]) -> TimeoutNow:
    _raft_head(m, 4, "TimeoutNow")
    _, term, src, dst = m
    return TimeoutNow(term, src, dst)


def _d_snapshot_chunk(m: list[Any]) -> SnapshotChunk:
    _raft_head(m, 11, "SnapshotChunk")
    _, term, src, dst, sindex, sterm, offset, data, total, digest, done = m
    _pos(sindex, "SnapshotChunk.snapshot_index")
    _pos(sterm, "SnapshotChunk.snapshot_term")
    _uint(offset, "SnapshotChunk.offset")
    _bytes(data, "SnapshotChunk.data", MAX_CHUNK_DATA)
    _uint(total, "SnapshotChunk.total_size")
    _bytes(digest, "SnapshotChunk.sha256", 32, 32)
    _bool(done, "SnapshotChunk.done")
    end = offset + len(data)
    if end > total:
        raise ProtocolError(f"SnapshotChunk: bytes {offset}..{end} beyond total size {total}")
    if done != (end == total):
        raise ProtocolError(
            f"SnapshotChunk: done={done} but the chunk ends at {end} of {total} bytes"
        )
    return SnapshotChunk(term, src, dst, sindex, sterm, offset, data, total, digest, done)


def _d_snapshot_chunk_ack(m: list[Any]) -> SnapshotChunkAck:
    _raft_head(m, 7, "SnapshotChunkAck")
    _, term, src, dst, sindex, sterm, next_offset = m
    return SnapshotChunkAck(
        term,
        src,
        dst,
        _pos(sindex, "SnapshotChunkAck.snapshot_index"),
        _pos(sterm, "SnapshotChunkAck.snapshot_term"),
        _uint(next_offset, "SnapshotChunkAck.next_offset"),
    )


def _d_client_request(m: list[Any]) -> ClientRequest:
    # ``consistency`` may be left out (or null): it then is ``linearizable``.
    if len(m) == 6:
        m = [*m, None]
    _arity(m, 7, "ClientRequest")
    _, request_id, kind, payload, client_id, sequence, consistency = m
    if consistency is None:
        consistency = "linearizable"
    _uint(request_id, "ClientRequest.request_id")
    _text(kind, "ClientRequest.kind", MAX_CODE, 1)
    if not _KIND_RE.fullmatch(kind):
        _fail("ClientRequest.kind", "a lowercase name [a-z][a-z0-9_.-]*", kind)
    _check_value(payload, "ClientRequest.payload", 0)
    _text(client_id, "ClientRequest.client_id", MAX_ID)
    _uint(sequence, "ClientRequest.sequence")
    if type(consistency) is not str or consistency not in CONSISTENCY_LEVELS:
        _fail("ClientRequest.consistency", "linearizable, lease or local", consistency)
    return ClientRequest(request_id, kind, payload, client_id, sequence, consistency)


def _d_client_response(m: list[Any]) -> ClientResponse:
    _arity(m, 8, "ClientResponse")
    _, request_id, ok, result, code, message, leader_id, leader_addr = m
    _uint(request_id, "ClientResponse.request_id")
    _bool(ok, "ClientResponse.ok")
    _check_value(result, "ClientResponse.result", 0)
    _text(code, "ClientResponse.error_code", MAX_CODE)
    _text(message, "ClientResponse.error_message", MAX_TEXT)
    if ok == bool(code):
        raise ProtocolError(
            "ClientResponse: error_code must be empty exactly when ok is true"
            f" (ok={ok}, error_code={code!r})"
        )
    if leader_id is not None:
        _pos(leader_id, "ClientResponse.leader_id")
    if leader_addr is not None:
        _text(leader_addr, "ClientResponse.leader_addr", MAX_ID, 1)
    return ClientResponse(request_id, ok, result, code, message, leader_id, leader_addr)


def _d_hello(m: list[Any]) -> Hello:
    _arity(m, 5, "Hello")
    _, node_id, cluster_id, nonce, incarnation = m
    return Hello(
        _pos(node_id, "Hello.node_id"),
        _text(cluster_id, "Hello.cluster_id", MAX_ID, 1),
        _bytes(nonce, "Hello.nonce", MAX_NONCE, MIN_NONCE),
        _bytes(incarnation, "Hello.incarnation", INCARNATION_SIZE, INCARNATION_SIZE),
    )


def _d_client_hello(m: list[Any]) -> ClientHello:
    _arity(m, 4, "ClientHello")
    _, client_id, cluster_id, nonce = m
    return ClientHello(
        _text(client_id, "ClientHello.client_id", MAX_ID, 1),
        _text(cluster_id, "ClientHello.cluster_id", MAX_ID, 1),
        _bytes(nonce, "ClientHello.nonce", MAX_NONCE, MIN_NONCE),
    )


def _d_hello_auth(m: list[Any]) -> HelloAuth:
    _arity(m, 2, "HelloAuth")
    return HelloAuth(_bytes(m[1], "HelloAuth.mac", MAC_SIZE, MAC_SIZE))


def _d_hello_reject(m: list[Any]) -> HelloReject:
    _arity(m, 3, "HelloReject")
    return HelloReject(
        _text(m[1], "HelloReject.code", MAX_CODE, 1),
        _text(m[2], "HelloReject.message", MAX_TEXT),
    )


_DECODERS: dict[int, Callable[[list[Any]], AnyMessage]] = {
    T_REQUEST_VOTE: _d_request_vote,
    T_REQUEST_VOTE_RESPONSE: _d_request_vote_response,
    T_APPEND_ENTRIES: _d_append_entries,
    T_APPEND_ENTRIES_RESPONSE: _d_append_entries_response,
    T_HEARTBEAT: _d_heartbeat,
    T_HEARTBEAT_RESPONSE: _d_heartbeat_response,
    T_INSTALL_SNAPSHOT: _d_install_snapshot,
    T_TIMEOUT_NOW: _d_timeout_now,
    T_SNAPSHOT_CHUNK: _d_snapshot_chunk,
    T_SNAPSHOT_CHUNK_ACK: _d_snapshot_chunk_ack,
    T_CLIENT_REQUEST: _d_client_request,
    T_CLIENT_RESPONSE: _d_client_response,
    T_HELLO: _d_hello,
    T_CLIENT_HELLO: _d_client_hello,
    T_HELLO_AUTH: _d_hello_auth,
    T_HELLO_REJECT: _d_hello_reject,
}


# --------------------------------------------------------------------------
# Decoding: the envelope.
# --------------------------------------------------------------------------


def _reject_tag(*args: object) -> NoReturn:
    # cbor2 5.x calls tag_hook(decoder, tag), 6.x tag_hook(tag, immutable).
    tags = [a.tag for a in args if isinstance(a, cbor2.CBORTag)]
    raise ProtocolError(f"CBOR tag {tags[0] if tags else '?'} is not allowed")


def _rejecter(number: int) -> Callable[..., NoReturn]:
    def reject(*args: object) -> NoReturn:
        raise ProtocolError(f"CBOR tag {number} is not allowed")

    return reject


# Tags cbor2 decodes by itself (datetimes, bignums, decimals, shared and string
# references, sets, regexes, UUIDs, IP addresses, the self-describe marker...).
# Overriding them makes every tag reach a rejection.
_BUILTIN_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261)
_SEMANTIC: dict[int, Any] = {t: _rejecter(t) for t in (*_BUILTIN_TAGS, 1004, 43000, 55799)}

# What the decoder refuses in every frame: any tag, nesting deeper than
# _MAX_DEPTH, indefinite-length items, duplicate map keys, and map keys other
# than text or byte strings (no keys crafted to collide in a hash).
_DECODER_POLICY: Final[dict[str, Any]] = {
    "tag_hook": _reject_tag,
    "semantic_decoders": _SEMANTIC,
    "max_depth": _MAX_DEPTH,
    "allow_indefinite": False,
    "allow_duplicate_keys": False,
    "strict_hashable_types": True,
}


# One strict decoder per thread, pointed at each value's bytes in turn: building
# a CBORDecoder with the policy above costs about as much as decoding a small
# frame.  A decode that fails leaves the decoder out (the next call builds a
# fresh one), so no state of a refused frame can reach the next.
_decoders = threading.local()


def _loads(data: bytes) -> Any:
    stream = io.BytesIO(data)
    decoder = getattr(_decoders, "decoder", None)
    if decoder is None:
        decoder = cbor2.CBORDecoder(stream, **_DECODER_POLICY)
    else:
        _decoders.decoder = None  # taken until this decode has succeeded
        decoder.fp = stream
    try:
        obj = decoder.decode()
    except ProtocolError:
        raise
    except Exception as exc:
        # cbor2 raises CBORDecodeError, and on some inputs ValueError,
        # OverflowError or RecursionError: all mean "not an acceptable frame".
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, ProtocolError):
            cause = cause.__cause__ or cause.__context__
        raise ProtocolError(f"invalid CBOR: {cause or exc}") from None
    if type(obj) is cbor2.CBORTag:  # pragma: no cover - hooks above refuse every tag
        raise ProtocolError("CBOR tags are not allowed")
    if stream.tell() != len(data):
        raise ProtocolError(f"{len(data) - stream.tell()} trailing bytes after the frame")
    _decoders.decoder = decoder
    return obj


def encode_value(value: Any, where: str = "value") -> bytes:
    """``value`` as CBOR bytes, once checked to be a plain value :func:`decode_value` accepts.

    Raises:
        ProtocolError: ``value`` is not a plain CBOR value (the message names ``where``).
    """
    return bytes(cbor2.dumps(_check_value(value, where, 0)))


def decode_value(data: bytes, where: str = "value") -> Any:
    """One free-form value encoded alone (e.g. a command carried as bytes), decoded
    as strictly as a frame: no tags, no duplicate keys, bounded size and nesting.

    Raises:
        ProtocolError: ``data`` is not one plain CBOR value (the message names ``where``).
    """
    if len(data) > MAX_VALUE_BYTES:
        raise ProtocolError(f"{where}: {len(data)} bytes exceeds {MAX_VALUE_BYTES}")
    try:
        return _check_value(_loads(data), where, 0)
    except ProtocolError as exc:
        message = str(exc)
        raise ProtocolError(
            message if message.startswith(where) else f"{where}: {message}"
        ) from None


def decode_envelope(
    data: bytes | bytearray | memoryview,
    *,
    max_size: int = DEFAULT_MAX_FRAME,
    cluster_id: str | None = None,
) -> Frame:
    """Decode and validate one frame, keeping its envelope fields.

    ``cluster_id``, when given, must equal the frame's ``"c"`` if it has one
    (frames may omit it).  Raises :class:`ProtocolError` for anything wrong.
    """
    version, cid, messages = _decode(data, max_size, cluster_id)
    return Frame(version, cid, tuple(messages))


def decode_frame(
    data: bytes | bytearray | memoryview,
    *,
    max_size: int = DEFAULT_MAX_FRAME,
    cluster_id: str | None = None,
) -> list[AnyMessage]:
    """Decode and validate one frame into its messages.

    Raises:
        ProtocolError: oversized (checked before decoding), not CBOR, another
            protocol version, an unknown message type, a missing, extra,
            mistyped or out-of-range field, or a broken cross-field rule.
    """
    return _decode(data, max_size, cluster_id)[2]


_FRAME_KEYS: Final = frozenset({"v", "c", "m"})


def _decode(
    data: bytes | bytearray | memoryview, max_size: int, cluster_id: str | None
) -> tuple[int, str | None, list[AnyMessage]]:
    """What :func:`decode_envelope` and :func:`decode_frame` share: (version, cluster id,
    messages), without building a :class:`Frame` for every frame a peer sends."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"a frame is bytes, got {type(data).__name__}")
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size > max_size:
        raise ProtocolError(f"frame of {size} bytes exceeds the limit of {max_size}")
    obj = _loads(bytes(data))
    if type(obj) is not dict:
        _fail("frame", "a map", obj)
    version = obj.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"unsupported protocol version {_describe(version)} (we speak {PROTOCOL_VERSION})"
        )
    if not obj.keys() <= _FRAME_KEYS:
        extra = obj.keys() - _FRAME_KEYS
        raise ProtocolError(f"frame: unknown keys {sorted(map(repr, extra))}")
    cid = obj.get("c")
    if cid is not None or "c" in obj:
        _text(cid, "frame.c", MAX_ID, 1)
        if cluster_id is not None and cid != cluster_id:
            raise ProtocolError(f"frame for cluster {cid!r}, this is {cluster_id!r}")
    raw = obj.get("m")
    if type(raw) is not list:
        _fail("frame.m", "an array of messages", raw)
    if not 1 <= len(raw) <= MAX_MESSAGES:
        raise ProtocolError(f"frame: {len(raw)} messages, allowed 1..{MAX_MESSAGES}")
    messages: list[AnyMessage] = []
    for m in raw:
        if type(m) is not list or not m:
            _fail(f"frame.m[{len(messages)}]", "a non-empty array", m)
        tag = m[0]
        dec = _DECODERS.get(tag) if type(tag) is int else None
        if dec is None:
            raise ProtocolError(f"frame.m[{len(messages)}]: unknown message type {_describe(tag)}")
        messages.append(dec(m))
    return version, cid, messages


# --------------------------------------------------------------------------
# Handshake (docs/protocol.md, "Handshake").  The secret never travels: each
# side proves it holds it by a MAC over a transcript that binds both nonces,
# both identities, the cluster and the side's role.
# --------------------------------------------------------------------------

DIALER: Final = "dialer"
LISTENER: Final = "listener"


def new_nonce() -> bytes:
    """32 fresh random bytes for a Hello."""
    return secrets.token_bytes(32)


def _transcript(role: str, opener: Hello | ClientHello, reply: Hello) -> bytes:
    if role not in (DIALER, LISTENER):
        raise ValueError(f"role must be {DIALER!r} or {LISTENER!r}, got {role!r}")
    if isinstance(opener, Hello):
        who: list[Any] = ["node", opener.node_id]
        opener_incarnation = opener.incarnation
    else:
        who = ["client", opener.client_id]
        opener_incarnation = b""
    return cbor2.dumps(
        [
            "trioraft-handshake",
            PROTOCOL_VERSION,
            role,
            *who,
            opener.cluster_id,
            opener.nonce,
            opener_incarnation,
            reply.node_id,
            reply.cluster_id,
            reply.nonce,
            reply.incarnation,
        ]
    )


def handshake_mac(
    secret: str | bytes, role: str, opener: Hello | ClientHello, reply: Hello
) -> bytes:
    """The MAC that ``role`` (``"dialer"`` or ``"listener"``) sends in its HelloAuth.

    ``opener`` is the dialer's first message, ``reply`` the listener's Hello;
    ``secret`` is the cluster secret (peers) or the client token (clients),
    text being UTF-8 encoded.
    """
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, _transcript(role, opener, reply), hashlib.sha256).digest()


def verify_handshake_mac(
    secret: str | bytes, role: str, opener: Hello | ClientHello, reply: Hello, mac: bytes
) -> bool:
    """Constant-time check of the peer's MAC; also refuses a reflected nonce."""
    if opener.nonce == reply.nonce:
        return False
    return hmac.compare_digest(handshake_mac(secret, role, opener, reply), mac)
