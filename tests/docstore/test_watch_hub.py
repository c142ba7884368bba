"""docstore.watch.Hub: the history and its floor, whether or not anyone watches.

Every apply chunk publishes its changes in one call; the history keeps the
last ``history`` of them and the floor says from which revision a watch can
resume.
"""

from __future__ import annotations

import pytest

from docstore.engine.errors import ResyncRequired
from docstore.engine.journal import Change
from docstore.watch import Hub


def _changes(revs: range) -> list[Change]:
    return [Change(r, "c", f"k{r}", "put", {"_rev": r}) for r in revs]


def test_history_and_floor_after_one_large_publish_with_no_watcher() -> None:
    hub = Hub(history=5)
    hub.publish(_changes(range(1, 9)))  # 8 changes, history of 5: revisions 1-3 leave
    w = hub.watch("c", None, since_rev=3, current_rev=8, buffer=100)
    assert [ch.rev for ch in w._queue] == [4, 5, 6, 7, 8]
    with pytest.raises(ResyncRequired):
        hub.watch("c", None, since_rev=2, current_rev=8, buffer=100)


def test_every_watcher_sees_every_change_of_a_publish() -> None:
    hub = Hub(history=5)
    a = hub.watch("c", None, since_rev=None, current_rev=0, buffer=100)
    b = hub.watch("c", {"_rev": {"$gt": 2}}, since_rev=None, current_rev=0, buffer=100)
    other = hub.watch("d", None, since_rev=None, current_rev=0, buffer=100)
    hub.publish(_changes(range(1, 5)))
    assert [ch.rev for ch in a._queue] == [1, 2, 3, 4]
    assert [ch.rev for ch in b._queue] == [3, 4]
    assert not other._queue
