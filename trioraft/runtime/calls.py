"""What a caller asks of a node: propose, read, change the membership, hand over leadership.

Owns the checks a request passes before it reaches the core (the wire's
limits: a command of at most ``MAX_ENTRY_DATA`` bytes, a session id of at
most ``MAX_SESSION_ID`` characters, node ids in 1..2**63-1, ``host:port``
addresses, so no entry a follower would refuse reaches the log; too many
proposals pending), the call into the core (plain synchronous code, safe
between ``ready()`` and ``advance()``), the wake-up of the Raft loop, and
the wait for the answer (trioraft/runtime/pending.py).  Reads: ``linearizable``
(ReadIndex), ``lease`` and ``local``.  A membership change waits for one in
progress, then for its entry and, for voters, for the joint configuration
to be left; ``proposal_timeout`` bounds the whole.

:class:`NodeCalls` is a part of :class:`~trioraft.runtime.node.Node` (a
mixin): its methods are the node's public calls.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import trio
import trio.lowlevel

from trioraft.core.errors import NotLeader, ProposalRejected
from trioraft.core.raft import RaftCore
from trioraft.core.types import Membership, NodeId, Role, check_node_id, parse_address
from trioraft.runtime.config import NodeConfig
from trioraft.runtime.errors import (
    EntryTooLargeError,
    NotCaughtUpError,
    NotLeaderError,
    OverloadedError,
    ProposalRejectedError,
    ReadFailedError,
)
from trioraft.runtime.metrics import Histogram
from trioraft.runtime.pending import Done, Pending
from trioraft.statemachine import StateMachine
from trioraft.transport.codec import MAX_ENTRY_DATA, MAX_INT, MAX_SESSION_ID

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["CONSISTENCY", "NodeCalls"]

#: The read consistencies :meth:`NodeCalls.read` takes.
CONSISTENCY = ("linearizable", "lease", "local")


class NodeCalls:
    """The public calls of a node (see the module docstring)."""

    # The node's, used here (set by Node.__init__).
    config: NodeConfig
    state_machine: StateMachine
    wall_clock: Callable[[], float]
    _pending: Pending
    _read_seconds: dict[str, Histogram]

    if TYPE_CHECKING:

        @property
        def _changed(self) -> trio.Event: ...
        def _check_open(self) -> RaftCore: ...
        def _kick(self) -> None: ...
        def _not_leader_error(self, leader: NodeId | None, reason: str = "") -> NotLeaderError: ...
        def _update_peers(self) -> None: ...

    # ------------------------------------------------------ proposals, reads

    async def propose(
        self,
        command: bytes,
        *,
        client_id: str = "",
        sequence: int = 0,
    ) -> object:
        """Replicate ``command`` and return the state machine's result for it.

        Raises:
            NotLeaderError: this node is not the leader (carries the leader's id and address).
            OverloadedError: too many proposals are pending.
            ProposalRejectedError: a leadership transfer is in progress.
            ProposalDroppedError: a new leader replaced the entry; retry with the same session.
            TimeoutError: not applied within ``proposal_timeout`` (wrap the call in
                ``trio.fail_after`` for a shorter one); it may still be applied later.
            NodeClosedError: the node stopped.
        """
        core = self._check_open()
        index = self._append_proposal(core, command, client_id, sequence)
        return await self._wait_index(index, core.term)

    def propose_nowait(
        self, command: bytes, done: Done, *, client_id: str = "", sequence: int = 0
    ) -> None:
        """Like :meth:`propose`, but calls ``done(result, error)`` instead of waiting.

        For services that answer many requests: no task per proposal.  The
        errors :meth:`propose` raises before appending are raised here;
        later ones (dropped, timeout, closed) reach ``done`` as ``error``.
        ``done`` runs in the node's apply task and must not block.
        """
        core = self._check_open()
        index = self._append_proposal(core, command, client_id, sequence)
        self._pending.wait_for(index, core.term, done)
        self._kick()

    def _append_proposal(
        self, core: RaftCore, command: bytes, client_id: str, sequence: int
    ) -> int:
        # Followers refuse an entry beyond the wire's limits: refuse it here,
        # before it is in the log, or replication would stop for good.
        if not isinstance(command, bytes | bytearray | memoryview):
            raise TypeError("a command is bytes")
        data = bytes(command)
        if len(data) > MAX_ENTRY_DATA:
            raise EntryTooLargeError(
                f"a command of {len(data)} bytes is over the entry limit of {MAX_ENTRY_DATA}"
            )
        if not isinstance(client_id, str):
            raise TypeError("client_id is a str")
        if len(client_id) > MAX_SESSION_ID:
            raise ValueError(f"client_id of {len(client_id)} characters; at most {MAX_SESSION_ID}")
        if not isinstance(sequence, int) or isinstance(sequence, bool):
            raise TypeError("sequence is an int")
        if not 0 <= sequence <= MAX_INT:
            raise ValueError(f"sequence must be in 0..{MAX_INT}, got {sequence}")
        if len(self._pending) >= self.config.max_pending_proposals:
            raise OverloadedError(f"{len(self._pending)} proposals pending")
        try:
            return core.propose(
                data,
                client_id=client_id,
                sequence=sequence,
                timestamp_ms=int(self.wall_clock() * 1000),
            )
        except NotLeader as exc:
            raise self._not_leader_error(exc.leader) from None
        except ProposalRejected as exc:
            raise ProposalRejectedError(str(exc)) from None

    async def _wait_index(self, index: int, term: int) -> object:
        w = self._pending.wait_for(index, term)
        self._kick()
        return await self._pending.result(index, w)

    async def read(
        self,
        query: object,
        *,
        consistency: str = "linearizable",
    ) -> object:
        """Answer ``query`` from the state machine.

        ``"linearizable"`` (ReadIndex: confirmed by a quorum, sees every
        write acknowledged before it started), ``"lease"`` (the leader's
        lease, no round trip; relies on bounded clock drift) or ``"local"``
        (this node's state as it is, possibly stale; any node: a follower
        learns a commit from the leader's next append or heartbeat, so when
        writes pause it may lag by up to ``heartbeat_interval``).
        """
        core = self._check_open()
        if consistency not in CONSISTENCY:
            raise ValueError(f"consistency must be one of {CONSISTENCY}")
        started = time.perf_counter()
        await self._read_point(core, consistency)
        result = await self.state_machine.query(query)
        self._read_seconds[consistency].observe(time.perf_counter() - started)
        return result

    async def read_many(
        self,
        queries: Sequence[object],
        *,
        consistency: str = "linearizable",
    ) -> list[tuple[object, Exception | None]]:
        """Answer several queries, in order, from one read point: one ReadIndex for all.

        Each answer is one :meth:`read` could have given: every query was
        asked before this call, and the read point (for ``"linearizable"``, a
        quorum's confirmation of leadership) is taken after the call starts,
        so each sees every write acknowledged before it was asked.  The cost
        of the confirmation (a pending read, a core call, a wake-up) is paid
        once for the batch instead of once per query.

        Returns ``(result, None)`` or ``(None, error)`` per query (a query
        the state machine refuses fails alone); raises what :meth:`read`
        raises before any query is answered.

        Example::

            (a, _), (b, _) = await node.read_many([query_a, query_b])
        """
        core = self._check_open()
        if consistency not in CONSISTENCY:
            raise ValueError(f"consistency must be one of {CONSISTENCY}")
        started = time.perf_counter()
        await self._read_point(core, consistency)
        query = self.state_machine.query
        outcomes: list[tuple[object, Exception | None]] = []
        for q in queries:
            try:
                outcomes.append((await query(q), None))
            except Exception as exc:  # this query's answer, not the others'
                outcomes.append((None, exc))
        took = time.perf_counter() - started
        seconds = self._read_seconds[consistency]
        for _ in outcomes:
            seconds.observe(took)
        return outcomes

    async def _read_point(self, core: RaftCore, consistency: str) -> None:
        """Return once the state machine may answer a read of ``consistency``."""
        if consistency == "local":
            await trio.lowlevel.checkpoint()  # a loop of local reads must not starve the node
            return
        rid, r = self._pending.new_read()
        try:
            core.read(rid, trio.current_time(), lease=consistency == "lease")
            self._kick()
            await r.event.wait()
        finally:
            self._pending.done_read(rid)
        if r.error is not None:
            if isinstance(r.error, NotLeaderError) and core.role is Role.LEADER:
                raise ReadFailedError(str(r.error))
            raise r.error

    # ----------------------------------------------------------- membership

    async def _change(
        self,
        voters: set[NodeId],
        learners: set[NodeId],
        addresses: dict[NodeId, str],
    ) -> None:
        core = self._check_open()
        # proposal_timeout bounds the change as a whole: waiting for one in
        # progress, the entry's apply and, for a voter change, leaving the
        # joint configuration.
        deadline = trio.current_time() + self.config.proposal_timeout
        # A change in progress (the leader may be recording an incarnation on
        # its own) is waited for rather than refused.
        with trio.move_on_at(deadline):
            while core.role is Role.LEADER and (
                core.membership.joint or core.commit < core.config_index
            ):
                await self._changed.wait()
        try:
            index = core.change_membership(voters, learners, addresses)
        except NotLeader as exc:
            raise self._not_leader_error(exc.leader) from None
        except ProposalRejected as exc:
            raise ProposalRejectedError(str(exc)) from None
        with trio.move_on_at(deadline) as scope:
            await self._wait_index(index, core.term)
            while core.membership.joint or core.commit < core.config_index:
                if core.role is not Role.LEADER:
                    raise self._not_leader_error(core.leader)
                await self._changed.wait()
        if scope.cancelled_caught:
            raise TimeoutError(
                f"membership change at entry {index} not done within "
                f"{self.config.proposal_timeout}s; it may still complete"
            )
        self._update_peers()

    def _membership_about(self, node_id: NodeId) -> tuple[RaftCore, Membership]:
        """Check ``node_id`` and the node: the core, and the membership a change
        about ``node_id`` starts from."""
        check_node_id(node_id)
        core = self._check_open()
        return core, core.membership

    async def add_learner(self, node_id: NodeId, address: str) -> None:
        """Add ``node_id`` (listening at ``address``) as a learner: it gets the log, never votes.

        Raises ValueError for a node id outside 1..2**63-1 or an address that
        is not ``host:port``, before anything is proposed.
        """
        parse_address(address)
        _, m = self._membership_about(node_id)
        if m.is_voter(node_id):
            raise ValueError(f"node {node_id} is already a voter")
        await self._change(set(m.voters), set(m.learners) | {node_id}, {node_id: address})

    async def promote(self, node_id: NodeId) -> None:
        """Make learner ``node_id`` a voter, once it has caught up with the log."""
        core, m = self._membership_about(node_id)
        if node_id not in m.learners:
            raise ValueError(f"node {node_id} is not a learner")
        conflict = core.incarnation_conflict(node_id)
        if conflict is not None:
            raise ValueError(
                f"node {node_id} presents incarnation {conflict[1]}, not the {conflict[0]}"
                " it was added with: remove it and add it again"
            )
        pr = core.progress.get(node_id)
        lag = core.last_index() - (pr.match if pr else 0)
        if lag > self.config.promote_max_lag:
            raise NotCaughtUpError(f"node {node_id} lags {lag} entries")
        await self._change(set(m.voters) | {node_id}, set(m.learners) - {node_id}, {})

    async def remove_node(self, node_id: NodeId) -> None:
        """Remove a voter or learner (the leader may remove itself: it then steps down)."""
        _, m = self._membership_about(node_id)
        if node_id not in m.members:
            raise ValueError(f"node {node_id} is not a member")
        voters = set(m.voters) - {node_id}
        if not voters:
            raise ValueError("cannot remove the last voter")
        await self._change(voters, set(m.learners) - {node_id}, {})

    async def transfer_leadership(self, target: NodeId | None = None) -> NodeId:
        """Hand leadership to ``target`` (default: the most caught-up voter); returns it."""
        if target is not None:
            check_node_id(target)
        core = self._check_open()
        if core.role is not Role.LEADER:
            raise self._not_leader_error(core.leader)
        if target is None:
            refused = core.refused_peers()
            candidates = [
                (p.match, n)
                for n, p in core.progress.items()
                if core.membership.is_voter(n) and n not in refused
            ]
            if not candidates:
                raise ValueError("no other voter to transfer to")
            target = max(candidates)[1]
        core.transfer_leadership(target)
        self._kick()
        limit = self.config.election_timeout_max * 2
        with trio.move_on_after(limit):
            while core.leader != target or core.role is Role.LEADER:
                await self._changed.wait()
            return target
        raise TimeoutError(f"leadership did not move to {target} within {limit}s")
