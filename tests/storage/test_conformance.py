"""Run the log store conformance suite against both stores."""

from __future__ import annotations

from trioraft.storage import FileLogStore, LogStore, MemoryLogStore
from trioraft.testing.storage_suite import LogStoreSuite


class TestFileLogStore(LogStoreSuite):
    def make_store(self, path: str) -> LogStore:
        return FileLogStore.open(path)

    def reopen(self, store: LogStore, path: str) -> LogStore:
        store.close()
        return FileLogStore.open(path)


class TestFileLogStoreTinySegments(LogStoreSuite):
    """Every batch lands in its own segment, exercising rolls and segment deletion."""

    def make_store(self, path: str) -> LogStore:
        return FileLogStore.open(path, segment_bytes=1)

    def reopen(self, store: LogStore, path: str) -> LogStore:
        store.close()
        return FileLogStore.open(path, segment_bytes=1)


class TestMemoryLogStore(LogStoreSuite):
    def make_store(self, path: str) -> LogStore:
        return MemoryLogStore()

    def reopen(self, store: LogStore, path: str) -> LogStore:
        assert isinstance(store, MemoryLogStore)
        return store.reopen()
