"""The whole-node simulator's clock and sleeps (trioraft/testing/simtime.py)."""

from __future__ import annotations

import math
import random

import pytest
import trio
import trio._core._run as trio_run
import trio.lowlevel

from trioraft.testing.simtime import (
    POLL_EVERY,
    Alarm,
    JumpClock,
    Timers,
    deterministic_scheduling,
    skip_idle_polls,
)


def _wake_log(seed: int, *, timers: bool) -> list[tuple[float, int]]:
    """Twelve tasks sleeping random times on a 1 ms grid (some zero, many equal),
    under the simulator's clock and scheduler: who woke when.

    Tasks 0-5 sleep in Trio's cancel scopes, as the nodes do; tasks 6-11 sleep
    in them too, or with ``timers`` on :class:`Timers`, as the simulation
    does; every third wake-up a task yields a few times first, so others are
    runnable when one sleeps for zero.
    """
    woke: list[tuple[float, int]] = []
    heap = Timers() if timers else None

    async def sleeper(i: int) -> None:
        r = random.Random(seed * 100 + i)
        sleep = heap.sleep if heap is not None and i >= 6 else trio.sleep
        for n in range(40):
            await sleep(r.choice((0, 0, 1, 2, r.randrange(10))) / 1000)
            woke.append((trio.current_time(), i))
            if n % 3 == 0:
                for _ in range(r.randrange(3)):
                    await trio.lowlevel.checkpoint()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(sleeper, i)

    with deterministic_scheduling(seed):
        trio.run(main, clock=JumpClock(heap))
    return woke


def test_timers_wake_tasks_when_and_in_the_order_trio_sleep_would() -> None:
    """What keeps every seed's trace: a task parked on the timers runs in the same
    scheduler pass, at the same time, as one sleeping in a cancel scope."""
    for seed in range(8):
        expected = _wake_log(seed, timers=False)
        assert len(expected) == 480
        assert _wake_log(seed, timers=True) == expected


def test_an_alarm_moved_earlier_wakes_then_and_a_later_move_changes_nothing() -> None:
    timers = Timers()
    woke: list[float] = []

    async def main() -> None:
        alarm = Alarm(timers)

        async def sleeper() -> None:
            await alarm.sleep_until(10.0)
            woke.append(trio.current_time())
            await alarm.sleep_until(20.0)
            woke.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sleeper)
            await timers.sleep(1.0)
            alarm.move(12.0)  # later than it sleeps: ignored
            alarm.move(4.0)
            assert alarm.deadline == 4.0
            await timers.sleep(5.0)  # t = 6: woke at 4, sleeps until 20 now
            alarm.move(trio.current_time())  # due now: runs in the next pass
            await trio.lowlevel.checkpoint()
            await trio.lowlevel.checkpoint()
            assert woke == [4.0, 6.0]
            alarm.move(1.0)  # not sleeping: nothing to wake
        assert alarm.deadline == float("inf")

    trio.run(main, clock=JumpClock(timers))
    assert woke == [4.0, 6.0]


def test_a_cancelled_sleeper_leaves_the_heap_and_is_never_woken() -> None:
    timers = Timers()

    async def main() -> None:
        with trio.move_on_after(1.0):
            await timers.sleep(5.0)
        assert trio.current_time() == 1.0
        assert timers.next_deadline() == float("inf")
        await timers.sleep(10.0)  # the cancelled entry's deadline passes meanwhile
        assert trio.current_time() == 11.0

    trio.run(main, clock=JumpClock(timers))


def test_idle_polls_skip_the_system_call_but_every_so_often() -> None:
    calls: list[float] = []

    async def main() -> None:
        skip_idle_polls()
        io = trio_run.GLOBAL_RUN_CONTEXT.runner.io_manager
        real = io._epoll._epoll  # type: ignore[attr-defined]

        class Counting:
            def poll(self, timeout: float, maxevents: int) -> list[tuple[int, int]]:
                calls.append(timeout)
                return list(real.poll(timeout, maxevents))

            def __getattr__(self, name: str) -> object:
                return getattr(real, name)

        io._epoll._epoll = Counting()  # type: ignore[attr-defined]
        for _ in range(3 * POLL_EVERY):
            await trio.lowlevel.checkpoint()
        await trio.sleep(0.001)  # a real wait still reaches the kernel
        io._epoll._epoll = real  # type: ignore[attr-defined]

    trio.run(main)
    zero = [t for t in calls if t == 0]
    assert 2 <= len(zero) <= 4  # about one in POLL_EVERY of ~3 * POLL_EVERY
    assert any(t > 0 for t in calls)


def test_a_sleep_ending_at_its_cancel_scopes_deadline_is_cancelled_as_trio_sleep_is() -> None:
    """The clock wakes the sleeper before Trio expires the scope around it: the
    code after the sleep must not run once more at the deadline."""

    def ran(timers: Timers | None) -> list[float]:
        log: list[float] = []
        sleep = timers.sleep if timers is not None else trio.sleep

        async def main() -> None:
            with trio.move_on_at(0.5):
                while True:
                    await sleep(0.25)
                    log.append(trio.current_time())
            log.append(-trio.current_time())

        trio.run(main, clock=JumpClock(timers))
        return log

    assert ran(None) == [0.25, -0.5]
    assert ran(Timers()) == [0.25, -0.5]


def test_a_negative_or_nan_sleep_is_refused_as_trio_refuses_it() -> None:
    timers = Timers()

    async def main() -> None:
        with pytest.raises(ValueError, match="non-negative"):
            await timers.sleep(-1)
        with pytest.raises(ValueError, match="NaN"):
            await timers.sleep(math.nan)
        with pytest.raises(ValueError, match="NaN"):
            Alarm(timers).move(math.nan)
        assert timers.next_deadline() == math.inf  # nothing parked

    trio.run(main, clock=JumpClock(timers))
