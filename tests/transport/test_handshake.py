"""The challenge-response handshake: both sides prove the secret without sending it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from trioraft.transport.codec import (
    decode_frame,
    encode_frame,
    handshake_mac,
    new_nonce,
    verify_handshake_mac,
)
from trioraft.transport.messages import ClientHello, Hello, HelloAuth

SECRET = "correct horse battery staple"


def exchange(
    dialer_secret: str, listener_secret: str, opener: Hello | ClientHello | None = None
) -> tuple[bool, bool]:
    """Run the three-message handshake over real frames; return (dialer ok, listener ok)."""
    opener = opener or Hello(1, "prod", new_nonce(), bytes(16))
    (got_opener,) = decode_frame(encode_frame([opener], cluster_id="prod"))
    assert isinstance(got_opener, Hello | ClientHello)
    reply = Hello(2, "prod", new_nonce(), bytes(range(16)))
    listener_mac = handshake_mac(listener_secret, "listener", got_opener, reply)
    got_reply, auth = decode_frame(encode_frame([reply, HelloAuth(listener_mac)]))
    assert isinstance(got_reply, Hello) and isinstance(auth, HelloAuth)
    dialer_ok = verify_handshake_mac(dialer_secret, "listener", opener, got_reply, auth.mac)
    (auth2,) = decode_frame(
        encode_frame([HelloAuth(handshake_mac(dialer_secret, "dialer", opener, got_reply))])
    )
    assert isinstance(auth2, HelloAuth)
    listener_ok = verify_handshake_mac(listener_secret, "dialer", got_opener, reply, auth2.mac)
    return dialer_ok, listener_ok


def test_same_secret_authenticates_both_ways() -> None:
    assert exchange(SECRET, SECRET) == (True, True)


def test_client_opener_with_token() -> None:
    assert exchange("tok", "tok", ClientHello("cli-1", "prod", new_nonce())) == (True, True)
    assert exchange("tok", "other", ClientHello("cli-1", "prod", new_nonce())) == (False, False)


def test_wrong_secret_fails_both_ways() -> None:
    assert exchange(SECRET, SECRET + "!") == (False, False)


def test_the_secret_never_travels() -> None:
    opener = Hello(1, "prod", new_nonce(), bytes(16))
    reply = Hello(2, "prod", new_nonce(), bytes(range(16)))
    frames = encode_frame([opener]) + encode_frame(
        [reply, HelloAuth(handshake_mac(SECRET, "listener", opener, reply))]
    )
    assert SECRET.encode() not in frames


def test_roles_are_bound_so_a_mac_cannot_be_reflected() -> None:
    opener = Hello(1, "prod", new_nonce(), bytes(16))
    reply = Hello(2, "prod", new_nonce(), bytes(range(16)))
    listener_mac = handshake_mac(SECRET, "listener", opener, reply)
    assert not verify_handshake_mac(SECRET, "dialer", opener, reply, listener_mac)


def test_reflected_nonce_is_refused() -> None:
    nonce = new_nonce()
    opener = Hello(1, "prod", nonce, bytes(16))
    reply = Hello(2, "prod", nonce, bytes(16))
    mac = handshake_mac(SECRET, "listener", opener, reply)
    assert not verify_handshake_mac(SECRET, "listener", opener, reply, mac)


@pytest.mark.parametrize("field", ["node_id", "cluster_id", "nonce", "incarnation"])
def test_every_transcript_field_is_bound(field: str) -> None:
    opener = Hello(1, "prod", new_nonce(), bytes(16))
    reply = Hello(2, "prod", new_nonce(), bytes(range(16)))
    mac = handshake_mac(SECRET, "listener", opener, reply)
    changed: Any = {
        "node_id": 3,
        "cluster_id": "test",
        "nonce": new_nonce(),
        "incarnation": b"\xff" * 16,
    }[field]
    assert not verify_handshake_mac(
        SECRET, "listener", dataclasses.replace(opener, **{field: changed}), reply, mac
    )
    assert not verify_handshake_mac(
        SECRET, "listener", opener, dataclasses.replace(reply, **{field: changed}), mac
    )


def test_mac_is_deterministic_and_documented() -> None:
    # Pinned vector for docs/protocol.md: other implementations check against it.
    opener = Hello(1, "prod", bytes(range(16)), bytes(range(32, 48)))
    reply = Hello(2, "prod", bytes(range(16, 32)), bytes(range(48, 64)))
    mac = handshake_mac(b"secret", "dialer", opener, reply)
    assert mac == handshake_mac("secret", "dialer", opener, reply)
    assert mac.hex() == "0ba1a9639b2656c376b79654700442088178f62f70ebe262537bd760b7c51b68"
    listener = handshake_mac(b"secret", "listener", opener, reply)
    assert listener.hex() == "9b8ec73f2d57a7d7c3a02485512b79b8563248c9cdb0c78533f7cf068754cb1a"
    with pytest.raises(ValueError, match="role"):
        handshake_mac(SECRET, "server", opener, reply)
