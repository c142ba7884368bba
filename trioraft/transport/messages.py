"""Wire messages that are not Raft core messages.

Snapshot chunk transfer, client calls and the connection handshake.  Like the
core messages in :mod:`trioraft.core.types` they are frozen dataclasses; the
codec (:mod:`trioraft.transport.codec`) turns them into CBOR and back, and
docs/protocol.md describes their wire form and limits.
"""

from __future__ import annotations

from dataclasses import dataclass

from trioraft.core.types import Message, NodeId, fast_init

__all__ = [
    "AnyMessage",
    "ClientHello",
    "ClientRequest",
    "ClientResponse",
    "Hello",
    "HelloAuth",
    "HelloReject",
    "SnapshotChunk",
    "SnapshotChunkAck",
]


@fast_init
@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """One piece of a snapshot file streamed from leader ``src`` to ``dst``.

    The snapshot is identified by ``(snapshot_index, snapshot_term)``.  Chunks
    are sent in order; ``offset`` is the position of ``data`` in the file,
    ``total_size`` the file's size and ``sha256`` (32 raw bytes) the digest of
    the whole file, repeated in every chunk so a receiver can resume or
    restart a transfer knowing what it is building.  ``done`` marks the last
    chunk (``offset + len(data) == total_size``).  ``term`` is the leader's
    term: a chunk from an older term is ignored.
    """

    term: int
    src: NodeId
    dst: NodeId
    snapshot_index: int
    snapshot_term: int
    offset: int
    data: bytes
    total_size: int
    sha256: bytes
    done: bool


@fast_init
@dataclass(frozen=True, slots=True)
class SnapshotChunkAck:
    """Follower to leader: "send from ``next_offset``" (flow control and resume).

    After a lost connection the leader resumes at ``next_offset`` instead of
    starting over; ``next_offset == 0`` means the follower has nothing usable.
    """

    term: int
    src: NodeId
    dst: NodeId
    snapshot_index: int
    snapshot_term: int
    next_offset: int


@fast_init
@dataclass(frozen=True, slots=True)
class ClientRequest:
    """A client call to a node.

    ``kind`` names the operation (``"propose"``, ``"read"``, ``"status"``,
    ...; an open set, lowercase ``[a-z0-9_.-]``).  ``payload`` is the command
    or query: bytes or any plain CBOR value.  ``client_id`` and ``sequence``
    identify a write for de-duplication on retry (empty ``client_id``: no
    session).  ``consistency`` is ``"linearizable"``, ``"lease"`` or ``"local"``.
    """

    request_id: int
    kind: str
    payload: object = None
    client_id: str = ""
    sequence: int = 0
    consistency: str = "linearizable"


@fast_init
@dataclass(frozen=True, slots=True)
class ClientResponse:
    """The answer to the :class:`ClientRequest` with the same ``request_id``.

    On success ``ok`` is True and ``result`` holds the value; on failure
    ``error_code`` is a stable machine-readable code (e.g. ``"not_leader"``)
    and ``error_message`` a human-readable text.  ``leader_id`` and
    ``leader_addr`` say where to retry when known.
    """

    request_id: int
    ok: bool
    result: object = None
    error_code: str = ""
    error_message: str = ""
    leader_id: NodeId | None = None
    leader_addr: str | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class Hello:
    """Handshake opener from a peer node, or the listener's reply to any opener.

    ``nonce`` is 16 to 64 fresh random bytes (32 recommended).
    ``incarnation`` is the 16-byte id of the sender's data directory (the
    incarnation rule: a voter speaking from another data directory than the
    one the cluster recorded is not counted).
    """

    node_id: NodeId
    cluster_id: str
    nonce: bytes
    incarnation: bytes


@fast_init
@dataclass(frozen=True, slots=True)
class ClientHello:
    """Handshake opener from a client; the key proven is the client token."""

    client_id: str
    cluster_id: str
    nonce: bytes


@fast_init
@dataclass(frozen=True, slots=True)
class HelloAuth:
    """Proof of the shared secret: HMAC-SHA256 over the handshake transcript."""

    mac: bytes


@fast_init
@dataclass(frozen=True, slots=True)
class HelloReject:
    """The handshake failed; the sender closes the connection after it."""

    code: str
    message: str = ""


AnyMessage = (
    Message
    | SnapshotChunk
    | SnapshotChunkAck
    | ClientRequest
    | ClientResponse
    | Hello
    | ClientHello
    | HelloAuth
    | HelloReject
)
