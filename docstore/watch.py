"""Change feeds: a bounded history and bounded per-watcher buffers.

Writers call :meth:`Hub.publish` without awaiting; a watcher whose buffer is
full is marked overflowed and its next read raises
:class:`docstore.ResyncRequired`.  A writer is never slowed by a watcher.
``since_rev`` replays from the retained history; asking for revisions older
than the history raises ``ResyncRequired`` at once.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from collections.abc import Iterable
from typing import Any

import trio

from docstore.engine.errors import DatabaseClosedError, InvalidCommandError, ResyncRequired
from docstore.engine.filters import Predicate, compile_filter
from docstore.engine.state import Change
from docstore.engine.validate import MAX_WATCH_BUFFER
from docstore.engine.values import check_name, clone

log = logging.getLogger("docstore.watch")


class Watcher:
    """``async for change in watcher`` yields ``{"rev", "coll", "key", "op", "doc"}`` maps.

    ``op`` is ``"put"``, ``"delete"`` (``doc`` is the deleted document) or
    ``"drop"`` (the collection was dropped).  Use as ``async with`` or call
    :meth:`aclose` to stop watching.
    """

    def __init__(self, hub: Hub, coll: str, pred: Predicate, buffer: int) -> None:
        self._hub = hub
        self.coll = coll
        self._pred = pred
        self._buffer = buffer
        self._queue: deque[Change] = deque()
        self._overflow = False
        self._closed = False
        self._wakeup = trio.Event()

    def _push(self, ch: Change) -> None:
        if ch.coll != self.coll or self._overflow or self._closed:
            return
        try:
            match = ch.op == "drop" or (ch.doc is not None and self._pred(ch.doc))
        except Exception:  # the filter was validated: a bug, not the writer's fault
            log.exception("watch filter on %r failed; the watcher must resync", self.coll)
            match, self._overflow = False, True
            self._queue.clear()
            self._wakeup.set()
        if not match:
            return
        if len(self._queue) >= self._buffer:
            self._overflow = True
            self._queue.clear()
        else:
            self._queue.append(ch)
        self._wakeup.set()

    def _close(self) -> None:
        self._closed = True
        self._wakeup.set()

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while True:
            if self._overflow:
                raise ResyncRequired(
                    f"watcher on {self.coll!r} fell behind (buffer {self._buffer}); "
                    "read the current state and watch again from its revision"
                )
            if self._queue:
                out = self._queue.popleft().to_dict()
                if out["doc"] is not None:
                    out["doc"] = clone(out["doc"])
                return out
            if self._closed:
                if self._hub.closed:
                    raise DatabaseClosedError("the database was closed")
                raise StopAsyncIteration
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    async def aclose(self) -> None:
        self._hub.discard(self)
        self._close()

    async def __aenter__(self) -> Watcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Hub:
    """Fans committed changes out to watchers; keeps the last ``history`` changes."""

    def __init__(self, history: int = 10_000) -> None:
        self._history: deque[Change] = deque(maxlen=history)
        self._watchers: weakref.WeakSet[Watcher] = weakref.WeakSet()
        self._floor = 0  # changes with rev <= floor may have left the history
        self.closed = False

    def publish(self, changes: Iterable[Change]) -> None:
        # Every apply chunk publishes, watched or not: the watchers are listed
        # once per call (pushing adds or removes none), not once per change.
        history = self._history
        watchers = list(self._watchers) if self._watchers else ()
        for ch in changes:
            if len(history) == history.maxlen:
                self._floor = history[0].rev
            history.append(ch)
            for w in watchers:
                w._push(ch)

    def reset(self, rev: int) -> None:
        """The state was replaced (restore, reopen): history before ``rev`` is gone."""
        self._history.clear()
        self._floor = rev
        for w in list(self._watchers):
            w._overflow = True
            w._wakeup.set()

    def watch(
        self, coll: str, flt: object, since_rev: int | None, current_rev: int, buffer: int
    ) -> Watcher:
        check_name(coll, "collection")
        if type(buffer) is not int or not 1 <= buffer <= MAX_WATCH_BUFFER:
            raise InvalidCommandError(f"buffer: an integer in 1 .. {MAX_WATCH_BUFFER}")
        if since_rev is not None and (type(since_rev) is not int or since_rev < 0):
            raise InvalidCommandError("since_rev: a revision number")
        w = Watcher(self, coll, compile_filter(flt), buffer)
        if since_rev is not None and since_rev < current_rev:
            if since_rev < self._floor:
                raise ResyncRequired(
                    f"revision {since_rev} is older than the retained change history "
                    f"(from {self._floor}); read the current state and watch from it"
                )
            for ch in self._history:
                if ch.rev > since_rev:
                    w._push(ch)
        if self.closed:
            w._close()
        self._watchers.add(w)
        return w

    def discard(self, w: Watcher) -> None:
        self._watchers.discard(w)

    def close(self) -> None:
        self.closed = True
        for w in list(self._watchers):
            w._close()
