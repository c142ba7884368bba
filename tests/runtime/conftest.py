"""Runtime tests run under a mock clock with blocking I/O inline."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

from trioraft.testing.cluster import inline_threads

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


@pytest.fixture
def mock_time(autojump_clock: trio.testing.MockClock) -> Iterator[trio.testing.MockClock]:
    """Virtual time that jumps when idle, with disk I/O done inline."""
    with inline_threads():
        yield autojump_clock


def virtual_time(seconds: float) -> Callable[[F], F]:
    """Run the test under :func:`mock_time`, failing past ``seconds`` of virtual time.

    The test does not name the clock: pytest-trio takes a clock only from the
    test's own arguments, so the wrapper's signature adds ``mock_time`` and
    the wrapper drops it before calling the test.
    """

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        async def wrapper(*args: Any, mock_time: trio.testing.MockClock, **kwargs: Any) -> Any:
            with trio.fail_after(seconds):
                return await fn(*args, **kwargs)

        sig = inspect.signature(fn)
        clock = inspect.Parameter("mock_time", inspect.Parameter.KEYWORD_ONLY)
        wrapper.__signature__ = sig.replace(  # type: ignore[attr-defined]
            parameters=[*sig.parameters.values(), clock]
        )
        return wrapper  # type: ignore[return-value]

    return deco
