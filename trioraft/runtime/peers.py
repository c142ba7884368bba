"""A node's peers: routes to them, their addresses, the incarnations they present.

Owns the peer table the transport is given (the membership's addresses,
overridden by locally configured routes, since an operator may reach a peer
through a proxy), the addresses given out as leader hints, and the warnings
about incarnations: a node whose data directory was lost or replaced comes
back under a new incarnation, and the cluster does not count it until an
operator removes it and adds it back.  A log written by earlier code may
still hold a member address that is not ``host:port``: it is ignored, with
one warning, wherever the node would use it (peer routes, InstallSnapshot,
leader hints).

:class:`NodePeers` is a part of :class:`~trioraft.runtime.node.Node` (a
mixin).
"""

from __future__ import annotations

import logging

from trioraft.core.raft import RaftCore
from trioraft.core.types import Membership, NodeId
from trioraft.runtime.config import NodeConfig
from trioraft.runtime.errors import NotLeaderError
from trioraft.transport.base import Transport

__all__ = ["NodePeers"]


class NodePeers:
    """The peer part of a node (see the module docstring)."""

    # The node's, used here (set by Node.__init__ and Node._run).
    id: NodeId
    config: NodeConfig
    log: logging.Logger
    core: RaftCore | None
    transport: Transport | None

    def _init_peers(self) -> None:
        # What each peer presented in its connection's handshake (transport news).
        self._peer_incarnations: dict[NodeId, str] = {}
        self._incarnations_told: set[tuple[NodeId, str]] = set()
        self._reachable: tuple[Membership, Membership] | None = None
        self._bad_addresses_seen: set[tuple[NodeId, str]] = set()

    def _on_peer(self, src: NodeId, incarnation: bytes) -> None:
        """Transport callback: the batches from ``src`` that follow come from ``incarnation``."""
        self._peer_incarnations[src] = incarnation.hex()

    def _tell_incarnation(self, core: RaftCore, node: NodeId) -> None:
        """One warning per node and incarnation the cluster does not know it by."""
        conflict = core.incarnation_conflict(node)
        if conflict is None or (node, conflict[1]) in self._incarnations_told:
            return
        self._incarnations_told.add((node, conflict[1]))
        old, new = conflict
        if node == self.id:
            self.log.warning(
                "node %(n)d: this data directory is incarnation %(new)s but the cluster knows"
                " node %(n)d as incarnation %(old)s (its data was lost or replaced): it will"
                " not vote or campaign; an operator must remove node %(n)d and add it back as"
                " a new member (docstore remove-node %(n)d, then docstore add-node %(n)d %(a)s)",
                {"n": node, "new": new, "old": old, "a": self.config.address},
            )
        else:
            self.log.warning(
                "node %(me)d: node %(n)d presents incarnation %(new)s but the cluster knows it"
                " as incarnation %(old)s (its data directory was lost or replaced): its votes"
                " and acknowledgements are not counted until an operator removes it and adds"
                " it back as a new member (docstore remove-node %(n)d, then docstore add-node"
                " %(n)d ADDRESS)",
                {"me": self.id, "n": node, "new": new, "old": old},
            )

    def _address_of(self, node: NodeId | None) -> str | None:
        if node is None:
            return None
        if node == self.id:
            return self.config.address
        core = self.core
        if core is not None:
            addr = self._reachable_membership(core.membership).address_of(node)
            if addr is not None:
                return addr
        return self.config.peers.get(node)

    def _not_leader_error(self, leader: NodeId | None, reason: str = "") -> NotLeaderError:
        return NotLeaderError(leader, self._address_of(leader))

    def _update_peers(self) -> None:
        core, transport = self.core, self.transport
        if core is None or transport is None:
            return
        # Locally configured routes win over the addresses in the membership
        # (an operator may reach a peer through a proxy or another interface).
        addresses = {**self._reachable_membership(core.membership).address_map, **self.config.peers}
        members = core.membership.members | set(self.config.peers)
        transport.set_peers({n: a for n, a in addresses.items() if n in members and n != self.id})

    def _reachable_membership(self, m: Membership) -> Membership:
        """``m`` without addresses that are not ``host:port``; warns once for each.

        Only a log written by earlier code holds such an address (the core
        refuses them now).  Using it would stop the transport, or make an
        InstallSnapshot no follower decodes.
        """
        if self._reachable is not None and self._reachable[0] is m:
            return self._reachable[1]
        clean = m.without_bad_addresses()
        for n, a in set(m.addresses) - set(clean.addresses) - self._bad_addresses_seen:
            self._bad_addresses_seen.add((n, a))
            self.log.warning(
                "node %d: ignoring the address %r of member %d in the configuration:"
                " not host:port (written by an earlier version?)",
                self.id,
                a,
                n,
            )
        self._reachable = (m, clean)
        return clean
