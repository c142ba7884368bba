"""The Ready driver: the core's contract (persist -> send -> apply -> advance), carried out once.

Owns the order of one Ready's work, and nothing else.  Every user of the
core - the Trio runtime (trioraft/runtime/node.py), the test harness
(trioraft/testing/harness.py) and the simulator (trioraft/testing/sim.py) -
calls it instead of writing the order again; what differs between them (how
a message travels, how entries are applied) is the :class:`ReadyIO` they
hand in, and how a write becomes durable is theirs to do between
:meth:`ReadyDriver.start` and :meth:`ReadyDriver.finish`.

Pure like the core: no I/O of its own and no awaits, so a runtime can run
the write in a worker thread and a simulator at a later simulated instant.
Which messages may leave before the write is the core's decision
(``Ready.early_messages``); the driver only sends them first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from trioraft.core.raft import RaftCore
from trioraft.core.types import Message, Ready

__all__ = ["ReadyDriver", "ReadyIO"]


class ReadyIO(Protocol):
    """What a driver's user does with a Ready's work."""

    def send(self, message: Message) -> None:
        """Send one message (never blocks; Raft tolerates loss)."""

    def apply(self, rd: Ready) -> int | None:
        """Hand over ``rd.snapshot``, ``rd.committed``, ``rd.reads`` and ``rd.failed_reads``.

        Returns the state machine's applied index now, or None when
        everything handed over has been applied already.
        """


class ReadyDriver:
    """Runs the core's Ready cycle in the order its contract states.

    Example (a synchronous user)::

        ReadyDriver(core, io).run(persist=lambda rd: store.persist(
            rd.hard_state, rd.entries, rd.snapshot))
    """

    __slots__ = ("core", "io")

    def __init__(self, core: RaftCore, io: ReadyIO) -> None:
        self.core = core
        self.io = io

    def start(self) -> Ready | None:
        """Take the next Ready (None: no work) and send what may leave before its write.

        The caller then persists it (if ``rd.needs_persist``) and calls
        :meth:`finish`; no other Ready is taken in between.
        """
        if not self.core.has_ready():
            return None
        rd = self.core.ready()
        for m in rd.early_messages:
            self.io.send(m)
        return rd

    def finish(self, rd: Ready) -> None:
        """``rd`` is durable: send the rest of its messages, hand over its applies, advance."""
        for m in rd.messages_after_persist():
            self.io.send(m)
        applied = self.io.apply(rd)
        self.core.advance(rd, applied=applied)

    def run(self, persist: Callable[[Ready], None]) -> None:
        """Drive until the core has no work, persisting each Ready with ``persist`` (blocking)."""
        while (rd := self.start()) is not None:
            if rd.needs_persist:
                persist(rd)
            self.finish(rd)
