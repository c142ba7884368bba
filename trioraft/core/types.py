"""Values shared by the Raft core, storage, transport and runtime.

Every value here is a frozen dataclass with slots: cheap to build, hashable
where that makes sense, safe to hand across layers.  Node ids are integers
in 1..2**63-1 (what the wire carries).  Log indexes start at 1; index 0 with
term 0 is the empty log's sentinel.  Nothing here does I/O.

Two rules live here because every layer applies them and they must agree:
:func:`check_node_id` and :func:`parse_address` (the one ``host:port``
rule; the runtime's config and the transport re-export it).  A membership
the core *builds* (:meth:`Membership.of`) obeys both; one it *reads* (a
CONFIG entry, a snapshot) may have been written by earlier code that checked
less, so reading stays lenient and the runtime ignores such an address where
it would use it (:meth:`Membership.without_bad_addresses`).
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any, TypeVar, get_args

NodeId = int

MAX_NODE_ID = 2**63 - 1  # ids travel as unsigned integers below 2**63
MAX_ADDRESS = 256  # characters of a "host:port" (the wire's limit)
#: A data directory's incarnation: 16 random bytes as 32 lowercase hex digits.
_INCARNATION_RE = re.compile(r"[0-9a-f]{32}")


def check_node_id(node: object, what: str = "node id") -> NodeId:
    """Return ``node`` if it is an int (not a bool) in 1..:data:`MAX_NODE_ID`; else ValueError."""
    if not isinstance(node, int) or isinstance(node, bool) or not 0 < node <= MAX_NODE_ID:
        raise ValueError(f"{what} must be an integer in 1..{MAX_NODE_ID}, got {node!r}")
    return node


def parse_address(address: object) -> tuple[str, int]:
    """Split ``"host:port"`` (``"[v6]:port"`` for IPv6 literals); ValueError if it is not one.

    The rule: a string of at most :data:`MAX_ADDRESS` characters; a non-empty
    host without whitespace or control characters, and without ``:`` unless
    it is a bracketed IPv6 literal; a port of ASCII digits in 0..65535.

    >>> parse_address("127.0.0.1:7000")
    ('127.0.0.1', 7000)
    """
    if not isinstance(address, str):
        raise ValueError(f"address must be host:port, got {address!r}")
    if len(address) > MAX_ADDRESS:
        raise ValueError(f"address of {len(address)} characters; at most {MAX_ADDRESS}")
    host, sep, port_text = address.rpartition(":")
    if not sep:
        raise ValueError(f"address must be host:port, got {address!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if not host or not host.isprintable() or any(c.isspace() or c in "[]" for c in host):
        raise ValueError(f"address {address!r} has no valid host")
    if ":" in host and not bracketed:
        raise ValueError(f"address {address!r}: an IPv6 host is written in brackets, [v6]:port")
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        raise ValueError(f"address {address!r} has a bad port")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"address {address!r}: port out of range")
    return host, port


def is_incarnation(value: object) -> bool:
    """True if ``value`` is an incarnation id: 32 lowercase hex digits (16 bytes)."""
    return isinstance(value, str) and _INCARNATION_RE.fullmatch(value) is not None


def is_address(address: object) -> bool:
    """True if :func:`parse_address` accepts ``address``."""
    try:
        parse_address(address)
    except ValueError:
        return False
    return True


class EntryKind(enum.IntEnum):
    """What an entry carries.  The values are part of the storage and wire formats."""

    NORMAL = 0  # an application command (opaque bytes)
    NOOP = 1  # the empty entry each new leader appends to commit in its term
    CONFIG = 2  # a membership; ``data`` is ``Membership.encode()``


_T = TypeVar("_T")


def fast_init(cls: type[_T]) -> type[_T]:
    """Give a frozen, slotted dataclass an ``__init__`` that sets its slots directly.

    The ``__init__`` a frozen dataclass gets assigns each field through
    ``object.__setattr__``, which costs several times a plain assignment; the
    one built here calls each slot's own setter (what ``object.__setattr__``
    ends up calling), with the same parameters and defaults.  Frozenness,
    equality, hashing and ``repr`` stay the dataclass's.  For the classes built
    once per log entry or message (proposed, decoded, sent) on every node.
    """
    if "__post_init__" in dir(cls):
        raise TypeError(f"{cls.__name__} has __post_init__: keep the dataclass's __init__")
    params: list[str] = []
    body: list[str] = []
    names: dict[str, Any] = {}
    for i, f in enumerate(fields(cls)):  # type: ignore[arg-type]
        if not f.init or f.kw_only or f.default_factory is not MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: fast_init takes plain fields only")
        slot = next(vars(k)[f.name] for k in cls.__mro__ if f.name in vars(k))
        names[f"_set{i}"] = slot.__set__
        if f.default is MISSING:
            params.append(f.name)
        else:
            names[f"_default{i}"] = f.default
            params.append(f"{f.name}=_default{i}")
        body.append(f"    _set{i}(self, {f.name})")
    source = f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body or ["    pass"])
    exec(source, names)  # built from the dataclass's own field names
    init: Callable[..., None] = names["__init__"]
    init.__annotations__ = dict(cls.__init__.__annotations__)
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


@fast_init
@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry.

    ``client_id`` and ``sequence`` identify a client's request so that a state
    machine can apply a retried write once (Raft dissertation 6.3); an empty
    ``client_id`` means "no session".  ``timestamp_ms`` is the leader's clock
    when it accepted the proposal: state machines use it instead of reading a
    clock during apply, so every replica computes the same result.
    """

    index: int
    term: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""
    client_id: str = ""
    sequence: int = 0
    timestamp_ms: int = 0

    def size(self) -> int:
        """Approximate bytes this entry occupies on the wire and on disk."""
        return len(self.data) + len(self.client_id) + 24


@dataclass(frozen=True, slots=True)
class HardState:
    """What a node must remember across a crash before it may speak.

    ``vote`` is the candidate voted for in ``term`` (None if none).  ``commit``
    is persisted so that a restarted node can apply without waiting for a
    leader; it is only a hint (it may lag), never ahead of the truth.
    """

    term: int = 0
    vote: NodeId | None = None
    commit: int = 0


def _lookup(pairs: tuple[tuple[NodeId, str], ...], node: NodeId) -> str | None:
    """The value paired with ``node`` in a membership's sorted ``(id, value)`` pairs."""
    for n, v in pairs:
        if n == node:
            return v
    return None


@dataclass(frozen=True, slots=True)
class Membership:
    """A cluster configuration.

    ``voters`` is the (incoming) voter set.  ``voters_outgoing`` is non-empty
    only in a joint configuration C(old,new): then every decision needs a
    majority of *both* sets.  ``learners`` receive the log but never count in
    any quorum and never become leader.  A node may be in ``voters_outgoing``
    and ``learners`` at once: a voter being demoted, which still votes in the
    old half of the joint configuration and stays a learner after it.

    The constructor (and :meth:`decode`) check the structure only, so a
    configuration written by earlier code still loads; :meth:`of` also
    checks every id and address against the wire's rules.

    ``incarnations`` records, per member, the incarnation id of the data
    directory the cluster knows it by (the incarnation rule,
    docs/architecture.md): a node presenting another one is not counted as
    a voter.  A member without a record is recorded by the leader the first
    time it presents one.
    """

    voters: frozenset[NodeId]
    voters_outgoing: frozenset[NodeId] = frozenset()
    learners: frozenset[NodeId] = frozenset()
    #: ``(node id, "host:port")`` pairs, sorted: where members listen, so a
    #: node added at run time is reachable by every replica.  Optional.
    addresses: tuple[tuple[NodeId, str], ...] = ()
    #: ``(node id, incarnation)`` pairs, sorted: each member's data directory.
    incarnations: tuple[tuple[NodeId, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.voters:
            raise ValueError("a membership needs at least one voter")
        both = self.voters & self.learners
        if both:
            raise ValueError(f"nodes {sorted(both)} cannot be both voter and learner")
        for n in self.voters | self.voters_outgoing | self.learners:
            if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
                raise ValueError(f"node ids are positive integers, got {n!r}")
        members = self.voters | self.voters_outgoing | self.learners
        seen: set[NodeId] = set()
        for n, addr in self.addresses:
            if n not in members or n in seen or not isinstance(addr, str) or not addr:
                raise ValueError(f"bad address entry ({n!r}, {addr!r})")
            seen.add(n)
        if list(self.addresses) != sorted(self.addresses):
            raise ValueError("addresses must be sorted by node id")
        seen.clear()
        for n, inc in self.incarnations:
            if n not in members or n in seen or not is_incarnation(inc):
                raise ValueError(f"bad incarnation entry ({n!r}, {inc!r})")
            seen.add(n)
        if list(self.incarnations) != sorted(self.incarnations):
            raise ValueError("incarnations must be sorted by node id")

    @classmethod
    def of(
        cls,
        voters: Iterable[NodeId],
        learners: Iterable[NodeId] = (),
        *,
        outgoing: Iterable[NodeId] = (),
        addresses: Mapping[NodeId, str] | None = None,
        incarnations: Mapping[NodeId, str] | None = None,
    ) -> Membership:
        """Build a new membership; ``addresses`` and ``incarnations`` are filtered to its members.

        Raises ValueError for a node id outside 1..2**63-1 or a member
        address that is not ``host:port`` (:func:`parse_address`), besides
        the structural rules.
        """
        v, o, lr = frozenset(voters), frozenset(outgoing), frozenset(learners)
        members = v | o | lr
        for n in members:
            check_node_id(n)
        addr = tuple(sorted((n, a) for n, a in (addresses or {}).items() if n in members))
        for n, a in addr:
            try:
                parse_address(a)
            except ValueError as exc:
                raise ValueError(f"node {n}: {exc}") from None
        inc = tuple(sorted((n, i) for n, i in (incarnations or {}).items() if n in members))
        return cls(v, o, lr, addr, inc)

    def without_bad_addresses(self) -> Membership:
        """This membership minus addresses :func:`parse_address` refuses (``self`` if none).

        Such an address can only come from a log written by earlier code;
        its node stays a member, it just cannot be reached at that address.
        """
        good = tuple((n, a) for n, a in self.addresses if is_address(a))
        if len(good) == len(self.addresses):
            return self
        return replace(self, addresses=good)

    def incarnation_of(self, node: NodeId) -> str | None:
        """The incarnation recorded for ``node`` (None: none recorded)."""
        return _lookup(self.incarnations, node)

    @property
    def incarnation_map(self) -> dict[NodeId, str]:
        return dict(self.incarnations)

    def recording(self, incarnations: Mapping[NodeId, str]) -> Membership:
        """This membership plus records for members that have none (never a change of one)."""
        got = self.incarnation_map
        for n, i in incarnations.items():
            if n in self.members and n not in got:
                got[n] = i
        if len(got) == len(self.incarnations):
            return self
        return replace(self, incarnations=tuple(sorted(got.items())))

    def address_of(self, node: NodeId) -> str | None:
        return _lookup(self.addresses, node)

    @property
    def address_map(self) -> dict[NodeId, str]:
        return dict(self.addresses)

    @property
    def joint(self) -> bool:
        return bool(self.voters_outgoing)

    @property
    def all_voters(self) -> frozenset[NodeId]:
        return self.voters | self.voters_outgoing

    def is_learner(self, node: NodeId) -> bool:
        return node in self.learners and not self.is_voter(node)

    @property
    def members(self) -> frozenset[NodeId]:
        return self.voters | self.voters_outgoing | self.learners

    def is_voter(self, node: NodeId) -> bool:
        return node in self.voters or node in self.voters_outgoing

    def has_quorum(self, acks: Iterable[NodeId]) -> bool:
        """True if ``acks`` holds a majority of every voter set in force."""
        got = set(acks)
        if len(got & self.voters) * 2 <= len(self.voters):
            return False
        out = self.voters_outgoing
        return not out or len(got & out) * 2 > len(out)

    def committed_index(self, match: dict[NodeId, int]) -> int:
        """The highest index replicated on a majority of every voter set."""

        def one(voters: frozenset[NodeId]) -> int:
            got = sorted((match.get(v, 0) for v in voters), reverse=True)
            return got[len(voters) // 2]

        idx = one(self.voters)
        if self.voters_outgoing:
            idx = min(idx, one(self.voters_outgoing))
        return idx

    def encode(self) -> bytes:
        """Canonical bytes for a CONFIG entry (sorted JSON, stable across versions)."""
        obj: dict[str, object] = {
            "voters": sorted(self.voters),
            "outgoing": sorted(self.voters_outgoing),
            "learners": sorted(self.learners),
        }
        if self.addresses:
            obj["addresses"] = [[n, a] for n, a in self.addresses]
        if self.incarnations:
            obj["incarnations"] = [[n, i] for n, i in self.incarnations]
        return json.dumps(obj, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Membership:
        """Inverse of :meth:`encode`; raises ValueError on anything malformed."""
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"membership is not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ValueError("membership must be a JSON object")

        def ids(key: str) -> frozenset[NodeId]:
            v = obj.get(key, [])
            if not isinstance(v, list) or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in v
            ):
                raise ValueError(f"membership field {key!r} must be a list of node ids")
            return frozenset(v)

        def pairs(key: str, what: str) -> tuple[tuple[int, str], ...]:
            raw = obj.get(key, [])
            if not isinstance(raw, list) or not all(
                isinstance(x, list)
                and len(x) == 2
                and isinstance(x[0], int)
                and not isinstance(x[0], bool)
                and isinstance(x[1], str)
                for x in raw
            ):
                raise ValueError(f"membership field {key!r} must be a list of [id, {what}]")
            return tuple(sorted((int(n), str(v)) for n, v in raw))

        return cls(
            ids("voters"),
            ids("outgoing"),
            ids("learners"),
            pairs("addresses", "address"),
            pairs("incarnations", "incarnation"),
        )


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Describes a snapshot: the state after applying every entry up to ``index``."""

    index: int
    term: int
    membership: Membership


# --------------------------------------------------------------------------
# Messages between cores.  Each opens with ``term``, ``src`` and ``dst``.
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Envelope:
    """What every message between cores opens with (its first three fields).

    ``src`` and ``dst`` are node ids; ``term`` is the sender's current term
    (for pre-vote requests: the term it would campaign in).
    """

    term: int
    src: NodeId
    dst: NodeId


@fast_init
@dataclass(frozen=True, slots=True)
class RequestVote(_Envelope):
    last_index: int
    last_term: int
    pre_vote: bool = False
    transfer: bool = False  # campaign started by TimeoutNow: ignores leader stickiness


@fast_init
@dataclass(frozen=True, slots=True)
class RequestVoteResponse(_Envelope):
    """The answer to a RequestVote; for a pre-vote ``term`` is the request's (etcd d4471b2)."""

    granted: bool
    pre_vote: bool = False


@fast_init
@dataclass(frozen=True, slots=True)
class AppendEntries(_Envelope):
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int


@fast_init
@dataclass(frozen=True, slots=True)
class AppendEntriesResponse(_Envelope):
    """Answer to AppendEntries or InstallSnapshot.

    On success ``index`` is the highest index known to match the leader.
    On rejection ``index`` is the rejected ``prev_index`` and the hint says
    where to retry: ``hint_term`` is the follower's term at ``hint_index``
    (0 when the follower's log is simply shorter).
    """

    success: bool
    index: int
    hint_index: int = 0
    hint_term: int = 0


@fast_init
@dataclass(frozen=True, slots=True)
class Heartbeat(_Envelope):
    """Leader liveness plus commit propagation and ReadIndex confirmation.

    ``commit`` is min(follower's match, leader commit) so a follower never
    learns a commit index beyond what it is known to hold.  ``ctx`` is the
    leader's read round counter: a response echoes it, and only responses
    with ``ctx`` at least a read's round confirm that read (etcd-io/raft #397).
    """

    commit: int
    ctx: int = 0


@fast_init
@dataclass(frozen=True, slots=True)
class HeartbeatResponse(_Envelope):
    ctx: int = 0


@fast_init
@dataclass(frozen=True, slots=True)
class InstallSnapshot(_Envelope):
    """Leader to a follower that needs entries the leader has compacted.

    The core carries only the metadata: the runtime streams the snapshot's
    bytes alongside and delivers this message once they have arrived intact.
    """

    meta: SnapshotMeta


@fast_init
@dataclass(frozen=True, slots=True)
class TimeoutNow(_Envelope):
    """Leadership transfer: the target campaigns at once, without pre-vote."""


Message = (
    RequestVote
    | RequestVoteResponse
    | AppendEntries
    | AppendEntriesResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshot
    | TimeoutNow
)

#: The classes of ``Message``, in its order.
MESSAGE_TYPES: tuple[type, ...] = get_args(Message)


# --------------------------------------------------------------------------
# Work handed from the core to the runtime.
# --------------------------------------------------------------------------


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@fast_init
@dataclass(frozen=True, slots=True)
class ReadState:
    """A read request that became safe: answer it once applied >= ``index``."""

    request_id: int
    index: int


@fast_init
@dataclass(frozen=True, slots=True)
class ReadFailed:
    """A read request the core cannot serve here (not leader, lost leadership)."""

    request_id: int
    leader: NodeId | None
    reason: str


@fast_init
@dataclass(frozen=True, slots=True)
class Ready:
    """One batch of work.  Do it in this order, then call ``core.advance(ready)``:

    0. send ``early_messages`` (those of ``messages`` the core allows to leave
       before the write; may be sent after it too);
    1. persist ``snapshot`` (if any), then ``entries`` (truncating the stored
       log from ``entries[0].index``) and ``hard_state`` (if not None; a new
       term and vote durable no later than the entries), group-committed
       (``LogStore.persist``);
    2. send the rest of ``messages`` (:meth:`messages_after_persist`);
    3. install ``snapshot`` into the state machine, then apply
       ``committed`` in order; answer ``reads`` once applied >= their index;
    4. ``core.advance(ready, applied=...)``.

    :class:`trioraft.core.driver.ReadyDriver` carries this out, once, for
    every user of the core.
    """

    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: SnapshotMeta | None = None
    messages: tuple[Message, ...] = ()
    committed: tuple[Entry, ...] = ()
    reads: tuple[ReadState, ...] = ()
    failed_reads: tuple[ReadFailed, ...] = ()
    #: The messages (a subset of ``messages``, the same objects) that may
    #: leave before the persist: decided by the core (the contract's one
    #: exception, see trioraft/core/raft.py), never by its user.
    early_messages: tuple[Message, ...] = ()

    @property
    def needs_persist(self) -> bool:
        """Whether the Ready carries anything to write (snapshot, entries, hard state)."""
        return self.snapshot is not None or bool(self.entries) or self.hard_state is not None

    def messages_after_persist(self) -> list[Message]:
        """The messages that must wait for the persist: ``messages`` minus ``early_messages``."""
        if not self.early_messages:
            return list(self.messages)
        early = {id(m) for m in self.early_messages}
        return [m for m in self.messages if id(m) not in early]

    def __bool__(self) -> bool:
        return bool(
            self.hard_state is not None
            or self.entries
            or self.snapshot is not None
            or self.messages
            or self.committed
            or self.reads
            or self.failed_reads
        )
