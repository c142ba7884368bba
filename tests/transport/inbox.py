"""What each node of a transport test received, for the memory and WebSocket transports."""

from __future__ import annotations

from collections import defaultdict

from trioraft.core.types import Heartbeat, NodeId
from trioraft.transport.base import OnMessages
from trioraft.transport.messages import AnyMessage


def hb(src: NodeId, dst: NodeId, n: int) -> Heartbeat:
    """A heartbeat that carries ``n`` as its commit index, to tell messages apart."""
    return Heartbeat(term=1, src=src, dst=dst, commit=n)


class Inbox:
    """Collects what each node receives, batch by batch."""

    def __init__(self) -> None:
        self.batches: dict[NodeId, list[tuple[NodeId, list[AnyMessage]]]] = defaultdict(list)

    def of(self, node: NodeId) -> OnMessages:
        def on_messages(src: NodeId, messages: list[AnyMessage]) -> None:
            self.batches[node].append((src, messages))

        return on_messages

    def messages(self, node: NodeId, src: NodeId | None = None) -> list[AnyMessage]:
        return [m for s, b in self.batches[node] for m in b if src is None or s == src]

    def commits(self, node: NodeId, src: NodeId | None = None) -> list[int]:
        return [m.commit for m in self.messages(node, src) if isinstance(m, Heartbeat)]
