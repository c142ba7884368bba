"""Limits the leader, the followers and the handshake must agree on.

Whatever a leader may append (an entry of the proposal limit with the
longest session id), a follower decodes; whatever an address or cluster id
names, one rule judges it on both sides.
"""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
import trio

from trioraft.core.types import AppendEntries, Entry, InstallSnapshot, Membership, SnapshotMeta
from trioraft.runtime import config
from trioraft.transport import _ws
from trioraft.transport._ws import (
    Closed,
    FrameSocket,
    HandshakeFailed,
    accept_stream,
    dial,
    listener_handshake,
)
from trioraft.transport.codec import (
    DEFAULT_MAX_FRAME,
    FRAME_OVERHEAD,
    LISTENER,
    MAX_ENTRY_DATA,
    MAX_ID,
    MAX_SESSION_ID,
    PROTOCOL_VERSION,
    ProtocolError,
    assemble_frame,
    decode_frame,
    encode_frame,
    encode_message,
    handshake_mac,
    new_nonce,
)
from trioraft.transport.messages import Hello, HelloAuth, HelloReject

from .wshelpers import CLUSTER, SECRET, fake_dialer


def append(*entries: Entry) -> AppendEntries:
    return AppendEntries(7, 1, 2, 0, 0, entries, 0)


# ---------------------------------------------------------------- entries


def test_largest_entry_with_longest_session_fits_a_frame_and_decodes() -> None:
    assert MAX_SESSION_ID == 2 * MAX_ID + 1
    e = Entry(2**63 - 1 - 1, 7, data=b"\xff" * MAX_ENTRY_DATA, client_id="\U0001d11e" * 513)
    msg = AppendEntries(7, 1, 2, 2**63 - 1 - 2, 7, (e,), 2**63 - 1)
    encoded = encode_message(msg)
    assert len(encoded) <= DEFAULT_MAX_FRAME - FRAME_OVERHEAD  # what the peer sender allows
    frame = assemble_frame([encoded], cluster_id="\U0001d11e" * MAX_ID)
    assert len(frame) <= DEFAULT_MAX_FRAME
    assert decode_frame(frame) == [msg]


def test_session_id_limit_is_enforced_by_the_decoder() -> None:
    ok = append(Entry(1, 1, client_id="s" * MAX_SESSION_ID))
    assert decode_frame(encode_frame([ok])) == [ok]
    too_long = append(Entry(1, 1, client_id="s" * (MAX_SESSION_ID + 1)))
    with pytest.raises(ProtocolError, match=r"entries\[0\]\.client_id: 514 characters"):
        decode_frame(encode_frame([too_long]))


def test_entry_over_the_proposal_limit_from_an_earlier_log_still_decodes() -> None:
    # 10 MB sent raw by earlier code: the decoder takes what a frame carries,
    # so such a log heals instead of freezing replication.
    old = append(Entry(1, 1, data=b"d" * 10_000_047))
    assert decode_frame(encode_frame([old])) == [old]
    huge = cbor2.dumps(
        {"v": PROTOCOL_VERSION, "m": [[3, 7, 1, 2, 0, 0, 0, [[1, 1, 0, b"", "", 0, 0]]]]}
    )
    assert decode_frame(huge)


# -------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    "address",
    [
        "None",
        "",
        "host",
        ":7000",
        "host:",
        "host:port",
        "host:65536",
        "host:-1",
        "host:+1",
        "host: 1",
        "ho st:1",
        "[::1:7000",
        "h" * 300 + ":1",
        "host:\u0661",
        "h:1:2",  # found by the docstore fuzz: accepted, a learner no one could reach
        "::1:7000",
    ],
)
def test_one_address_rule_refuses(address: str) -> None:
    for parse in (config.parse_address, _ws.parse_address):
        with pytest.raises(ValueError, match="address"):
            parse(address)


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        ("127.0.0.1:7000", ("127.0.0.1", 7000)),
        ("[::1]:7000", ("::1", 7000)),
        ("node-1.example:0", ("node-1.example", 0)),
        ("mem:3", ("mem", 3)),
    ],
)
def test_one_address_rule_accepts(address: str, parsed: tuple[str, int]) -> None:
    assert config.parse_address(address) == parsed
    assert _ws.parse_address(address) == parsed


def test_install_snapshot_addresses_must_be_host_port() -> None:
    def snap(address: str) -> bytes:
        return cbor2.dumps(
            {
                "v": PROTOCOL_VERSION,
                "m": [[7, 5, 1, 2, 100, 4, [1], [], [2], [[1, "a:1"], [2, address]], []]],
            }
        )

    (msg,) = decode_frame(snap("b:2"))
    assert isinstance(msg, InstallSnapshot)
    with pytest.raises(ProtocolError, match=r"addresses\[1\]\.address"):
        decode_frame(snap("None"))
    good = InstallSnapshot(
        5, 1, 2, SnapshotMeta(100, 4, Membership.of([1], [2], addresses={1: "a:1", 2: "b:2"}))
    )
    assert decode_frame(encode_frame([good])) == [good]


# -------------------------------------------------------------- handshake


async def _listen(
    on_sock: Any, got: list[BaseException], done: trio.Event, nursery: trio.Nursery
) -> int:
    """Serve one hand-driven listener; what it raised (or recorded) ends up in ``got``."""

    async def handler(stream: trio.SocketStream) -> None:
        try:
            deadline = trio.current_time() + 5
            async with accept_stream(stream, max_frame=DEFAULT_MAX_FRAME, deadline=deadline) as s:
                await on_sock(s)
        except (HandshakeFailed, Closed) as exc:
            got.append(exc)
        finally:
            done.set()

    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def test_handshake_refuses_frame_of_other_cluster() -> None:
    # Listener side: a Hello naming our cluster inside a frame of another one.
    refused: list[BaseException] = []
    listener_done = trio.Event()

    async def listener(sock: FrameSocket) -> None:
        await listener_handshake(
            sock,
            node_id=1,
            cluster_id=CLUSTER,
            secret=SECRET,
            is_peer=lambda n: True,
            client_key=None,
            incarnation=bytes(16),
        )

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await _listen(listener, refused, listener_done, nursery)
            async with dial(f"127.0.0.1:{port}", max_frame=4096, connect_timeout=5) as sock:
                await sock.send(
                    encode_frame(
                        [Hello(2, CLUSTER, new_nonce(), bytes(16))], cluster_id="other-cluster"
                    )
                )
                answer = decode_frame(await sock.receive())
            assert [type(m) for m in answer] == [HelloReject]
            assert isinstance(answer[0], HelloReject) and answer[0].code == "wrong_cluster"
            await listener_done.wait()
            assert isinstance(refused[0], HandshakeFailed)
            assert refused[0].code == "wrong_cluster"
            nursery.cancel_scope.cancel()

    # Dialer side: the listener's (otherwise valid) reply comes in another cluster's frame.
    rejected: list[BaseException] = []
    impostor_done = trio.Event()

    async def impostor(sock: FrameSocket) -> None:
        (opener,) = decode_frame(await sock.receive())
        assert isinstance(opener, Hello)
        reply = Hello(1, CLUSTER, new_nonce(), bytes(16))
        mac = handshake_mac(SECRET, LISTENER, opener, reply)
        await sock.send(encode_frame([reply, HelloAuth(mac)], cluster_id="other-cluster"))
        (answer,) = decode_frame(await sock.receive())
        rejected.append(HandshakeFailed(answer.code, "", by_peer=True))  # type: ignore[union-attr]

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await _listen(impostor, rejected, impostor_done, nursery)
            with pytest.raises(HandshakeFailed) as err:
                async with fake_dialer(f"127.0.0.1:{port}", 2, expect=1, max_frame=4096):
                    pass
            assert err.value.code == "wrong_cluster" and not err.value.by_peer
            await impostor_done.wait()
            assert isinstance(rejected[0], HandshakeFailed)
            assert rejected[0].code == "wrong_cluster"
            nursery.cancel_scope.cancel()
