"""Virtual time for the whole-node simulator: a clock that jumps, and cheap sleeps.

Theory of operation
===================

The simulator (:mod:`trioraft.testing.simnode`) runs on virtual time: when
no task can run, Trio asks its clock how long to sleep, and
:class:`JumpClock` moves time to the next deadline there and then.

A Trio sleep is a cancel scope whose deadline expires: Trio then delivers
``Cancelled`` into the task, which unwinds to the scope.  For the
simulation's own waits (the clients' think times and back-offs, the fault
driver, the memory network's deliveries: most of a seed's sleeps) that
was a large share of a seed's work.  :class:`Timers` is a heap of parked
tasks instead: a sleeping task waits to be rescheduled, and the clock,
when it is asked to sleep and a timer is due no later than Trio's own
next deadline, moves time to the timer's deadline and reschedules every
task due then.  They run in that scheduler pass, in the order Trio's
(seeded) scheduler gives the pass, so a seed still replays exactly.

Nothing changes for the code under test: the nodes' own timers and
timeouts are Trio's, and the clock still jumps to them.

A run has no I/O (the memory transport, a simulated disk, threads run
inline), yet Trio polls epoll once per scheduler pass: a system call for
nothing, about 6% of a seed.  :func:`skip_idle_polls` answers those polls
without one.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio
import trio.lowlevel

__all__ = ["Alarm", "JumpClock", "Timers", "deterministic_scheduling", "skip_idle_polls"]

#: Every this many zero-timeout polls one still reaches the kernel, so a
#: Ctrl-C (which Trio's signal handler reports through a wake-up socket)
#: still stops a sweep.
POLL_EVERY = 1024


class Timers:
    """Tasks parked until a moment of virtual time; :class:`JumpClock` wakes them."""

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        # (deadline, sequence, entry); an entry is [task], emptied once it no
        # longer counts (woken, moved or cancelled).
        self._heap: list[tuple[float, int, list[trio.lowlevel.Task]]] = []
        self._seq = 0

    def next_deadline(self) -> float:
        """The earliest deadline a task still waits for (``inf``: none)."""
        heap = self._heap
        while heap and not heap[0][2]:
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf

    def wake_due(self, now: float) -> None:
        """Reschedule every task whose deadline is ``now`` or earlier, in deadline order."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)[2]
            if entry:
                trio.lowlevel.reschedule(entry.pop())

    def _park(self, deadline: float, task: trio.lowlevel.Task) -> list[trio.lowlevel.Task]:
        entry = [task]
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, entry))
        return entry

    async def sleep(self, seconds: float) -> None:
        """:func:`trio.sleep` on this clock."""
        if seconds < 0:
            raise ValueError("duration must be non-negative")
        await Alarm(self).sleep_until(trio.current_time() + seconds)


class Alarm:
    """One task's sleep whose deadline others may bring forward (:meth:`move`)."""

    __slots__ = ("_entry", "_timers", "deadline")

    def __init__(self, timers: Timers) -> None:
        self._timers = timers
        #: The sleeping task's heap entry: ``[task]`` until it is woken.
        self._entry: list[trio.lowlevel.Task] = []
        #: When the sleeping task wakes (``inf`` while it does not sleep).
        self.deadline = math.inf

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until ``deadline`` or an earlier one set by :meth:`move`; a checkpoint
        (the next scheduler pass) when it has passed."""
        if math.isnan(deadline):
            raise ValueError("deadline must not be NaN")  # it would stall the heap
        if deadline <= trio.current_time():
            await trio.lowlevel.checkpoint()
            return
        self.deadline = deadline
        self._entry = self._timers._park(deadline, trio.lowlevel.current_task())

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            self._entry.clear()
            return trio.lowlevel.Abort.SUCCEEDED

        try:
            await trio.lowlevel.wait_task_rescheduled(abort)
        finally:
            self._entry = []
            self.deadline = math.inf
        # Woken at the very deadline of a cancel scope around this sleep: the
        # clock rescheduled the task before Trio expired the scope, so no
        # Cancelled came.  trio.sleep would raise it; raise it here (a pass later).
        await trio.lowlevel.checkpoint_if_cancelled()

    def move(self, deadline: float) -> None:
        """Wake the sleeping task by ``deadline`` (no later than it would anyway)."""
        if math.isnan(deadline):
            raise ValueError("deadline must not be NaN")
        entry = self._entry
        if not entry or deadline >= self.deadline:
            return  # not sleeping, already woken, or due sooner anyway
        task = entry.pop()
        self.deadline = deadline
        if deadline <= trio.current_time():
            # As a cancel scope's deadline set in the past: it runs in the next pass.
            self._entry = []
            trio.lowlevel.reschedule(task)
        else:
            self._entry = self._timers._park(deadline, task)


class JumpClock(trio.abc.Clock):
    """Virtual time that moves to the next deadline as soon as no task can run.

    What ``MockClock(autojump_threshold=0)`` does, for less: Trio asks its
    clock how long to sleep only when no task is runnable, and in a run
    where nothing else can wake a task (no sockets, threads run inline)
    the clock can move to the deadline there and then.  MockClock instead
    polls once more, jumps, and polls again before the sleepers wake, and
    reads the real clock on every ``current_time()``.  With ``timers``, the
    earliest of Trio's deadlines and the timers' is the next one.
    """

    def __init__(self, timers: Timers | None = None) -> None:
        self._now = 0.0
        self._timers = timers

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return self._now

    def deadline_to_sleep_time(self, deadline: float) -> float:
        timers = self._timers
        if timers is not None:
            first = timers.next_deadline()
            if first <= deadline and first != math.inf:
                self._now = max(self._now, first)
                timers.wake_due(self._now)
                return 0.0
        if deadline == math.inf:
            return 999_999_999.0  # nothing will ever run again: hang, as MockClock does
        self._now = max(self._now, deadline)
        return 0.0


class _QuietEpoll:
    """Trio's epoll object, but a zero-timeout poll returns no events (see module doc)."""

    __slots__ = ("_calls", "_epoll")

    def __init__(self, epoll: Any) -> None:
        self._epoll = epoll
        self._calls = 0

    def poll(self, timeout: float = -1, maxevents: int = -1) -> list[tuple[int, int]]:
        if timeout == 0:
            self._calls += 1
            if self._calls % POLL_EVERY:
                return []
        result: list[tuple[int, int]] = self._epoll.poll(timeout, maxevents)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._epoll, name)


@contextmanager
def deterministic_scheduling(seed: int) -> Iterator[None]:
    """Trio runs started inside schedule deterministically, from ``seed``.

    Trio's own switch (``_ALLOW_DETERMINISTIC_SCHEDULING``, a private flag
    pytest-trio uses too) sorts each scheduler pass and shuffles it with its
    random stream, which is seeded here; both are put back after.
    """
    import trio._core._run as trio_run

    saved, state = trio_run._ALLOW_DETERMINISTIC_SCHEDULING, trio_run._r.getstate()
    setattr(trio_run, "_ALLOW_DETERMINISTIC_SCHEDULING", True)  # noqa: B010 - a Final flag
    trio_run._r.seed(seed)
    try:
        yield
    finally:
        setattr(trio_run, "_ALLOW_DETERMINISTIC_SCHEDULING", saved)  # noqa: B010
        trio_run._r.setstate(state)


def skip_idle_polls() -> None:
    """In the running Trio run, let zero-timeout polls skip the system call.

    Only for a run without I/O.  Uses Trio's private run state (as the
    simulator's deterministic scheduling does); a platform whose I/O manager
    is not epoll keeps its polls.
    """
    import trio._core._run as trio_run

    io = trio_run.GLOBAL_RUN_CONTEXT.runner.io_manager
    epoll = getattr(io, "_epoll", None)
    if epoll is not None and not isinstance(epoll, _QuietEpoll):
        io._epoll = _QuietEpoll(epoll)  # type: ignore[assignment]
