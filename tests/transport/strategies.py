"""Hypothesis strategies producing every valid wire message."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from trioraft.core import types as core
from trioraft.transport import messages as wire
from trioraft.transport.codec import CONSISTENCY_LEVELS, MAX_INT

# Mostly small numbers (realistic), sometimes the extremes.
uints = st.one_of(st.integers(0, 1000), st.integers(0, MAX_INT))
terms = uints
node_ids = st.one_of(st.integers(1, 9), st.integers(1, MAX_INT))
ids = st.text(max_size=20)
names = st.from_regex(r"[a-z][a-z0-9_.\-]{0,15}", fullmatch=True)


@st.composite
def peers(draw: st.DrawFn) -> tuple[int, int]:
    src = draw(node_ids)
    dst = draw(node_ids.filter(lambda n: n != src))
    return src, dst


@st.composite
def log_pos(draw: st.DrawFn, max_term: int) -> tuple[int, int]:
    """(index, term) with index 0 exactly when term 0, term <= max_term."""
    if max_term == 0 or draw(st.booleans()):
        return 0, 0
    return draw(st.integers(1, MAX_INT - 100)), draw(st.integers(1, max_term))


free_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.binary(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def request_votes(draw: st.DrawFn) -> core.RequestVote:
    term = draw(terms)
    src, dst = draw(peers())
    li, lt = draw(log_pos(term))
    return core.RequestVote(term, src, dst, li, lt, draw(st.booleans()), draw(st.booleans()))


@st.composite
def request_vote_responses(draw: st.DrawFn) -> core.RequestVoteResponse:
    src, dst = draw(peers())
    return core.RequestVoteResponse(draw(terms), src, dst, draw(st.booleans()), draw(st.booleans()))


@st.composite
def entries_after(
    draw: st.DrawFn, prev_index: int, prev_term: int, term: int
) -> tuple[core.Entry, ...]:
    n = draw(st.integers(0, 8))
    out = []
    t = max(prev_term, 1)
    for i in range(n):
        t = draw(st.integers(t, max(t, term)))
        kind = draw(st.sampled_from(core.EntryKind))
        if kind == core.EntryKind.CONFIG:
            voters = draw(st.sets(node_ids, min_size=1, max_size=3))
            data = core.Membership(frozenset(voters)).encode()
        else:
            data = draw(st.binary(max_size=64))
        out.append(
            core.Entry(
                prev_index + 1 + i,
                t,
                kind,
                data,
                draw(ids),
                draw(uints),
                draw(uints),
            )
        )
    return tuple(out)


@st.composite
def append_entries(draw: st.DrawFn) -> core.AppendEntries:
    term = draw(st.integers(1, 1000) | st.integers(1, MAX_INT))
    src, dst = draw(peers())
    pi, pt = draw(log_pos(term))
    return core.AppendEntries(
        term, src, dst, pi, pt, draw(entries_after(pi, pt, term)), draw(uints)
    )


@st.composite
def append_entries_responses(draw: st.DrawFn) -> core.AppendEntriesResponse:
    src, dst = draw(peers())
    return core.AppendEntriesResponse(
        draw(terms), src, dst, draw(st.booleans()), draw(uints), draw(uints), draw(uints)
    )


@st.composite
def heartbeats(draw: st.DrawFn) -> core.Heartbeat:
    src, dst = draw(peers())
    return core.Heartbeat(draw(terms), src, dst, draw(uints), draw(uints))


@st.composite
def heartbeat_responses(draw: st.DrawFn) -> core.HeartbeatResponse:
    src, dst = draw(peers())
    return core.HeartbeatResponse(draw(terms), src, dst, draw(uints))


@st.composite
def memberships(draw: st.DrawFn) -> core.Membership:
    voters = draw(st.sets(node_ids, min_size=1, max_size=5))
    outgoing = draw(st.sets(node_ids, max_size=5))
    learners = draw(st.sets(node_ids, max_size=3)) - voters
    members = sorted(voters | outgoing | learners)
    with_addr = draw(st.sets(st.sampled_from(members), max_size=len(members)))
    addresses = tuple(sorted((n, f"host{n}:{7000 + n % 1000}") for n in with_addr))
    with_inc = draw(st.sets(st.sampled_from(members), max_size=len(members)))
    incarnations = tuple(sorted((n, f"{n:032x}") for n in with_inc))
    return core.Membership(
        frozenset(voters), frozenset(outgoing), frozenset(learners), addresses, incarnations
    )


@st.composite
def install_snapshots(draw: st.DrawFn) -> core.InstallSnapshot:
    term = draw(st.integers(1, MAX_INT))
    src, dst = draw(peers())
    meta = core.SnapshotMeta(
        draw(st.integers(1, MAX_INT)), draw(st.integers(1, term)), draw(memberships())
    )
    return core.InstallSnapshot(term, src, dst, meta)


@st.composite
def timeout_nows(draw: st.DrawFn) -> core.TimeoutNow:
    src, dst = draw(peers())
    return core.TimeoutNow(draw(terms), src, dst)


@st.composite
def snapshot_chunks(draw: st.DrawFn) -> wire.SnapshotChunk:
    src, dst = draw(peers())
    data = draw(st.binary(max_size=64))
    offset = draw(uints.filter(lambda o: o <= MAX_INT - 10_000))
    done = draw(st.booleans())
    total = offset + len(data) + (0 if done else draw(st.integers(1, 1000)))
    return wire.SnapshotChunk(
        draw(terms),
        src,
        dst,
        draw(st.integers(1, MAX_INT)),
        draw(st.integers(1, MAX_INT)),
        offset,
        data,
        total,
        draw(st.binary(min_size=32, max_size=32)),
        done,
    )


@st.composite
def snapshot_chunk_acks(draw: st.DrawFn) -> wire.SnapshotChunkAck:
    src, dst = draw(peers())
    return wire.SnapshotChunkAck(
        draw(terms), src, dst, draw(st.integers(1, MAX_INT)), draw(st.integers(1, 99)), draw(uints)
    )


client_requests = st.builds(
    wire.ClientRequest,
    request_id=uints,
    kind=names,
    payload=free_values,
    client_id=ids,
    sequence=uints,
    consistency=st.sampled_from(sorted(CONSISTENCY_LEVELS)),
)


@st.composite
def client_responses(draw: st.DrawFn) -> wire.ClientResponse:
    ok = draw(st.booleans())
    return wire.ClientResponse(
        draw(uints),
        ok,
        draw(free_values),
        "" if ok else draw(names),
        draw(st.text(max_size=30)),
        draw(st.none() | node_ids),
        draw(st.none() | st.text(min_size=1, max_size=30)),
    )


nonces = st.binary(min_size=16, max_size=64)
incarnations = st.binary(min_size=16, max_size=16)
hellos = st.builds(wire.Hello, node_ids, st.text(min_size=1, max_size=20), nonces, incarnations)
client_hellos = st.builds(
    wire.ClientHello, st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20), nonces
)
hello_auths = st.builds(wire.HelloAuth, st.binary(min_size=32, max_size=32))
hello_rejects = st.builds(wire.HelloReject, names, st.text(max_size=30))

BY_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "RequestVote": request_votes(),
    "RequestVoteResponse": request_vote_responses(),
    "AppendEntries": append_entries(),
    "AppendEntriesResponse": append_entries_responses(),
    "Heartbeat": heartbeats(),
    "HeartbeatResponse": heartbeat_responses(),
    "InstallSnapshot": install_snapshots(),
    "TimeoutNow": timeout_nows(),
    "SnapshotChunk": snapshot_chunks(),
    "SnapshotChunkAck": snapshot_chunk_acks(),
    "ClientRequest": client_requests,
    "ClientResponse": client_responses(),
    "Hello": hellos,
    "ClientHello": client_hellos,
    "HelloAuth": hello_auths,
    "HelloReject": hello_rejects,
}

any_message: st.SearchStrategy[wire.AnyMessage] = st.one_of(*BY_TYPE.values())

# One plain instance of each type, for tests that need a sample, not a search.
SAMPLES: dict[str, wire.AnyMessage] = {
    "RequestVote": core.RequestVote(3, 1, 2, 7, 2, True, False),
    "RequestVoteResponse": core.RequestVoteResponse(3, 2, 1, True, True),
    "AppendEntries": core.AppendEntries(3, 1, 2, 4, 2, (core.Entry(5, 3, data=b"x"),), 4),
    "AppendEntriesResponse": core.AppendEntriesResponse(3, 2, 1, False, 4, 3, 2),
    "Heartbeat": core.Heartbeat(3, 1, 2, 4, 9),
    "HeartbeatResponse": core.HeartbeatResponse(3, 2, 1, 9),
    "InstallSnapshot": core.InstallSnapshot(
        3, 1, 2, core.SnapshotMeta(10, 2, core.Membership(frozenset({1, 2, 3})))
    ),
    "TimeoutNow": core.TimeoutNow(3, 1, 2),
    "SnapshotChunk": wire.SnapshotChunk(3, 1, 2, 10, 2, 0, b"abc", 3, b"h" * 32, True),
    "SnapshotChunkAck": wire.SnapshotChunkAck(3, 2, 1, 10, 2, 3),
    "ClientRequest": wire.ClientRequest(1, "propose", {"op": "put"}, "c", 1),
    "ClientResponse": wire.ClientResponse(1, False, None, "not_leader", "", 2, "h:1"),
    "Hello": wire.Hello(1, "c", b"n" * 32, b"i" * 16),
    "ClientHello": wire.ClientHello("me", "c", b"n" * 32),
    "HelloAuth": wire.HelloAuth(b"m" * 32),
    "HelloReject": wire.HelloReject("bad_mac", "no"),
}
