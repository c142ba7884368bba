"""Run the log store conformance suite against both stores."""

from __future__ import annotations

from trioraft.storage import FileLogStore, LogStore, MemoryLogStore
from trioraft.testing.storage_suite import LogStoreSuite


class TestFileLogStore(LogStoreSuite):
    options: dict[str, int] = {}  # for FileLogStore.open

    def make_store(self, path: str) -> LogStore:
        return FileLogStore.open(path, **self.options)

    def reopen(self, store: LogStore, path: str) -> LogStore:
        store.close()
        return self.make_store(path)


class TestFileLogStoreTinySegments(TestFileLogStore):
    """Every batch lands in its own segment, exercising rolls and segment deletion."""

    options = {"segment_bytes": 1}


class TestMemoryLogStore(LogStoreSuite):
    def make_store(self, path: str) -> LogStore:
        return MemoryLogStore()

    def reopen(self, store: LogStore, path: str) -> LogStore:
        assert isinstance(store, MemoryLogStore)
        return store.reopen()
