"""Storage errors.

Three kinds, because the runtime must react differently to each:

* :class:`StorageCorruption` -- data that was durable is damaged.  Opening
  refuses to guess; an operator restores the node (or wipes it and lets it
  rejoin as a fresh member).
* :class:`StorageFatalError` -- an ``OSError`` while writing, syncing or
  deleting.  After a failed fsync the kernel may have dropped the dirty pages
  and cleared the error, so a retry can "succeed" without the data being on
  disk.  The store poisons itself and every later call raises too; the
  runtime must stop the node (never retry, never keep serving).
* :class:`LogCompacted` / :class:`LogUnavailable` -- a caller asked for an
  index outside ``[first_index, last_index]``.  These are also ``IndexError``
  so generic code can catch them as such.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error the storage layer raises on purpose."""


class StorageCorruption(StorageError):
    """Durable data failed validation.  ``path`` and ``offset`` locate it."""

    def __init__(self, message: str, path: str = "", offset: int | None = None) -> None:
        where = path + (f" at byte {offset}" if offset is not None else "")
        super().__init__(f"{where}: {message}" if where else message)
        self.path = path
        self.offset = offset


class StorageFatalError(StorageError):
    """An I/O error made the store's durable state unknown: stop the node."""


class LogCompacted(StorageError, IndexError):
    """The index lies at or below the snapshot boundary (its entry is gone)."""


class LogUnavailable(StorageError, IndexError):
    """The index lies beyond the last entry held."""
