"""Runtime tests run under a mock clock with blocking I/O inline."""

from __future__ import annotations

import functools
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


def bounded(seconds: float) -> Callable[[F], F]:
    """Fail the test if it takes longer than ``seconds`` of (virtual) time."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            with trio.fail_after(seconds):
                return await fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return deco
