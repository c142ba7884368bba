"""The Database and Collection API, and the embedded executor behind it.

``Database`` methods build command maps and hand them to an *executor*:
``execute(cmd) -> result map`` and ``query(q) -> value``.  The embedded
executor (:class:`LocalExecutor`) runs them on the replicated state machine
(:class:`~docstore.state_machine.DocstoreStateMachine`) driven by a local
sequencer, so an embedded directory has the same files as a node's; a
remote executor can send the same maps to a cluster, so both kinds of
database offer the same methods.

Durability: a write returns only after its record is fsynced.  Concurrent
writers share fsyncs (group commit): while one batch is being written the
next one collects.  An fsync failure is fatal: the database refuses every
later call with :class:`DatabaseClosedError`.  A directory written by an
older version (``data.dslog`` only) is migrated on open
(:mod:`docstore.storage.legacy`).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import trio

from docstore.engine import commands as C
from docstore.engine.errors import (
    DatabaseClosedError,
    DocstoreError,
    InvalidCommandError,
    raise_for_result,
)
from docstore.engine.queries import run_query
from docstore.engine.registry import Registry
from docstore.engine.state import Change, Engine
from docstore.engine.values import (
    DEFAULT_LIMITS,
    Limits,
    check_key,
    check_name,
    clone,
    expires_at,
)
from docstore.state_machine import DocstoreStateMachine
from docstore.storage import legacy
from docstore.watch import Hub, Watcher


def now_ms() -> int:
    return int(time.time() * 1000)


class ChangeStream(Protocol):
    """What ``Collection.watch`` returns: :class:`Watcher` embedded, a resuming
    remote watcher (``docstore.client.RemoteWatcher``) when connected."""

    def __aiter__(self) -> ChangeStream: ...

    async def __anext__(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> ChangeStream: ...

    async def __aexit__(self, *exc: object) -> None: ...


class Executor(Protocol):
    """Runs command and query maps; what ``Database`` is built on."""

    async def execute(self, cmd: dict[str, Any]) -> dict[str, Any]: ...

    async def query(self, q: dict[str, Any]) -> Any: ...

    def watch(self, coll: str, flt: object, since_rev: int | None, buffer: int) -> ChangeStream: ...

    async def aclose(self) -> None: ...


class LocalExecutor:
    """The embedded executor: the replicated state machine driven by a local sequencer.

    Where a node gets its entries from Raft, this assigns each write the next
    index itself, applies it at once (:meth:`DocstoreStateMachine.apply_local`)
    and group-commits the machine's apply log: one flush task at a time
    fsyncs every record written so far, while the next writes are applied and
    queue behind it.  A write returns, and watchers see its changes, only
    once its record is durable.  When the log has grown past
    ``compact_bytes`` that flush folds it into a new base instead, and writes
    wait until it is done (the log is replaced under them).
    """

    def __init__(
        self,
        path: str,
        *,
        registry: Registry | None = None,
        limits: Limits = DEFAULT_LIMITS,
        sync: bool = True,
        watch_history: int = 10_000,
    ) -> None:
        self.dir = path
        self.limits = limits
        self.sm = DocstoreStateMachine(
            path, registry=registry, limits=limits, watch_history=watch_history, sync=sync
        )
        self._unflushed = 0  # records applied since the current batch was taken
        self._pending_changes: list[Change] = []
        self._batch_done = trio.Event()  # set when the batch being collected is durable
        self._flushing = False
        self._paused: trio.Event | None = None  # set while a compaction runs
        self._io_lock = trio.Lock()
        self._failure: BaseException | None = None
        self._closed = False
        self._lock_fd = -1

    @property
    def engine(self) -> Engine:
        return self.sm.engine

    @property
    def hub(self) -> Hub:
        return self.sm.hub

    @property
    def rev(self) -> int:
        """The last revision applied (the machine's last applied index)."""
        return self.sm.last_applied().index

    async def start(self) -> None:
        await trio.to_thread.run_sync(self._lock_and_migrate)
        try:
            await self.sm.start()
        except BaseException:
            os.close(self._lock_fd)
            raise

    def _lock_and_migrate(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        self._lock_fd = os.open(os.path.join(self.dir, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise DocstoreError(f"{self.dir} is open in another process") from None
        try:
            legacy.migrate(self.dir, self.sm.registry, self.limits)
        except BaseException:
            os.close(self._lock_fd)
            raise

    def _check(self) -> None:
        if self._failure is not None:
            raise DatabaseClosedError(f"the database failed: {self._failure!r}")
        if self._closed:
            raise DatabaseClosedError("the database is closed")

    async def execute(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self._check()
        while self._paused is not None:
            await self._paused.wait()
            self._check()
        # No separate validate_command here: apply runs the same checks in this
        # process before anything is logged, and reports them the same way.
        before = self.sm.last_applied().index
        # A copy: the engine keeps what it stores, and the caller may change
        # its own lists and maps after the call (in a cluster the command
        # arrives as bytes, so nothing is shared).
        result, changes = self.sm.apply_local(clone(cmd), now_ms())
        if self.sm.last_applied().index != before:  # a record was written
            await self._durable(changes)
        return result

    async def _durable(self, changes: list[Change]) -> None:
        """Wait until this write's record is fsynced (group commit).

        The first writer to find no flush running leads: it flushes batch
        after batch until no record is left unflushed; the others wait for
        the batch their record is in.
        """
        self._unflushed += 1
        self._pending_changes.extend(changes)
        done = self._batch_done
        if self._flushing:
            await done.wait()
            self._check()
            return
        self._flushing = True
        try:
            while self._unflushed:
                chs, done = self._pending_changes, self._batch_done
                self._unflushed, self._pending_changes = 0, []
                self._batch_done = trio.Event()
                try:
                    # Shielded: the batch holds other tasks' records, so it is
                    # made durable even if the task that happens to lead is
                    # cancelled.
                    with trio.CancelScope(shield=True):
                        async with self._io_lock:
                            if self.sm.compaction_due:
                                await self._compact_paused()
                            else:
                                await self.sm.flush()
                except BaseException as exc:
                    self._failure = exc
                    self._batch_done.set()
                    raise
                finally:
                    done.set()
                self.hub.publish(chs)
        finally:
            self._flushing = False
        self._check()

    async def _compact_paused(self) -> None:
        self._paused = paused = trio.Event()
        try:
            await self.sm.compact()
        finally:
            self._paused = None
            paused.set()

    async def query(self, q: dict[str, Any]) -> Any:
        self._check()
        return clone(run_query(self.engine, q, now_ms()))

    def get(self, coll: str, key: str) -> dict[str, Any] | None:
        """Fast path for ``Collection.get`` (no query map)."""
        self._check()
        if type(key) is not str:
            check_key(key, self.limits)
        c = self.engine.colls.get(coll)
        if c is None:
            return None
        d = c.docs.get(key)
        if d is None or ((exp := expires_at(d)) is not None and exp <= now_ms()):
            return None
        return clone(d)  # type: ignore[no-any-return]

    def watch(self, coll: str, flt: object, since_rev: int | None, buffer: int) -> Watcher:
        self._check()
        return self.hub.watch(coll, flt, since_rev, self.rev, buffer)

    async def compact(self) -> None:
        """Fold the apply log into a new base snapshot (revisions are kept)."""
        self._check()
        async with self._io_lock:
            self._check()
            try:
                with trio.CancelScope(shield=True):
                    await self._compact_paused()
            except BaseException as exc:
                self._failure = exc
                raise

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._io_lock:
            try:
                await self.sm.close(flush=self._failure is None)
            finally:
                if self._lock_fd >= 0:
                    os.close(self._lock_fd)
                    self._lock_fd = -1


class Collection:
    """A named set of documents; every method maps to one command or query."""

    def __init__(self, db: Database, name: str) -> None:
        self.db = db
        self.name = name

    def __repr__(self) -> str:
        return f"<Collection {self.name!r}>"

    async def get(self, key: str, *, consistency: str | None = None) -> dict[str, Any] | None:
        """The document (with ``_key`` and ``_rev``) or None.

        ``consistency`` (``"linearizable"``, ``"lease"``, ``"local"``) matters
        for a clustered database; an embedded one is always current.
        """
        if self.db._local is not None:
            if consistency is not None:
                _check_consistency(consistency)
            return self.db._local.get(self.name, key)
        q = {"op": "get", "coll": self.name, "key": check_key(key)}
        return await self.db._query(q, consistency)  # type: ignore[no-any-return]

    async def put(
        self,
        key: str,
        doc: dict[str, Any],
        *,
        if_rev: int | None = None,
        if_exists: bool | None = None,
        if_match: object = None,
        ttl: float | None = None,
    ) -> int:
        """Create or replace; returns the new revision.  ``ttl`` seconds sets ``_expires``."""
        cmd = C.put(
            self.name, key, _ttl(doc, ttl), if_rev=if_rev, if_exists=if_exists, if_match=if_match
        )
        return int((await self.db._execute(cmd))["rev"])

    async def insert(self, doc: dict[str, Any], *, ttl: float | None = None) -> str:
        """Store ``doc`` under a key the database assigns (ordered by revision)."""
        return str((await self.db._execute(C.insert(self.name, _ttl(doc, ttl))))["key"])

    async def patch(
        self,
        key: str,
        ops: dict[str, Any],
        *,
        upsert: bool = False,
        if_rev: int | None = None,
        if_exists: bool | None = None,
        if_match: object = None,
    ) -> int:
        """Apply update operators (``$set``, ``$inc``, ...); returns the new revision."""
        cmd = C.patch(
            self.name,
            key,
            ops,
            upsert=upsert,
            if_rev=if_rev,
            if_exists=if_exists,
            if_match=if_match,
        )
        return int((await self.db._execute(cmd))["rev"])

    async def delete(
        self,
        key: str,
        *,
        if_rev: int | None = None,
        if_exists: bool | None = None,
        if_match: object = None,
    ) -> bool:
        """Delete; returns whether a document was there."""
        cmd = C.delete(self.name, key, if_rev=if_rev, if_exists=if_exists, if_match=if_match)
        return bool((await self.db._execute(cmd))["deleted"])

    async def update_many(self, filter: object, ops: dict[str, Any]) -> int:
        """Patch every matching document (one revision); returns how many."""
        return int((await self.db._execute(C.update_many(self.name, filter, ops)))["matched"])

    async def delete_many(self, filter: object) -> int:
        return int((await self.db._execute(C.delete_many(self.name, filter)))["deleted"])

    async def find(
        self,
        filter: object = None,
        *,
        sort: object = None,
        limit: int | None = None,
        consistency: str | None = None,
    ) -> list[dict[str, Any]]:
        """Matching documents, by ``sort`` (``"f"``, ``"-f"``, ``[["f", -1], ...]``) else key."""
        q = {"op": "find", "coll": self.name, "filter": filter, "sort": sort, "limit": limit}
        return await self.db._query(q, consistency)  # type: ignore[no-any-return]

    async def scan(
        self,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        limit: int | None = None,
        consistency: str | None = None,
    ) -> list[dict[str, Any]]:
        """Documents in key order with ``prefix`` and/or ``start <= key < end``."""
        q = {
            "op": "scan",
            "coll": self.name,
            "prefix": prefix,
            "start": start,
            "end": end,
            "limit": limit,
        }
        return await self.db._query(q, consistency)  # type: ignore[no-any-return]

    async def count(self, filter: object = None, *, consistency: str | None = None) -> int:
        q = {"op": "count", "coll": self.name, "filter": filter}
        return int(await self.db._query(q, consistency))

    def watch(
        self, filter: object = None, since_rev: int | None = None, *, buffer: int = 1024
    ) -> ChangeStream:
        """Async iterator of changes after ``since_rev`` (or from now).

        Example:
            async with users.watch({"age": {"$gte": 18}}) as changes:
                async for ch in changes:
                    print(ch["op"], ch["key"], ch["rev"])
        """
        return self.db._executor.watch(self.name, filter, since_rev, buffer)

    async def create_index(
        self, fields: list[str] | str, unique: bool = False, *, name: str | None = None
    ) -> str:
        res = await self.db._execute(C.create_index(self.name, fields, unique=unique, name=name))
        return str(res["name"])

    async def drop_index(self, name: str) -> bool:
        return bool((await self.db._execute(C.drop_index(self.name, name)))["dropped"])


def _check_consistency(c: object) -> str:
    if c not in ("linearizable", "lease", "local"):
        raise InvalidCommandError(f"consistency is linearizable, lease or local, not {c!r}")
    return str(c)


def _ttl(doc: dict[str, Any], ttl: float | None) -> dict[str, Any]:
    if ttl is None:
        return doc
    if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not ttl > 0:
        raise DocstoreError("ttl is a positive number of seconds")
    if not isinstance(doc, dict):
        return doc  # validation reports it
    return {**doc, "_expires": now_ms() + int(ttl * 1000)}


class Database:
    """A docstore database (embedded via :func:`open`)."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self._local = executor if isinstance(executor, LocalExecutor) else None

    async def _execute(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if self._local is None:
            # Refuse a bad command before it travels; the replicas check again.
            # Its documents' sizes: once it is encoded (RemoteExecutor.execute).
            C.validate_command(cmd, sizes=False)
        return raise_for_result(await self._executor.execute(cmd))

    async def _query(self, q: dict[str, Any], consistency: str | None = None) -> Any:
        if consistency is not None:
            q["consistency"] = _check_consistency(consistency)
        return await self._executor.query(q)

    def collection(self, name: str) -> Collection:
        return Collection(self, check_name(name, "collection"))

    async def collections(self) -> list[str]:
        return await self._query({"op": "collections"})  # type: ignore[no-any-return]

    async def create_collection(
        self, name: str, *, type: str | None = None, if_not_exists: bool = False
    ) -> Collection:
        await self._execute(C.create_collection(name, type=type, if_not_exists=if_not_exists))
        return Collection(self, name)

    async def drop_collection(self, name: str) -> bool:
        return bool((await self._execute(C.drop_collection(name)))["dropped"])

    async def batch(self, cmds: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Apply commands (see :mod:`docstore.commands`) atomically at one revision.

        Raises the first failing command's error (with a note naming it); then
        nothing was applied.
        """
        return list((await self._execute(C.batch(cmds)))["results"])

    async def call(self, name: str, version: int, args: object = None) -> list[dict[str, Any]]:
        """Run a registered extension command."""
        return list((await self._execute(C.call(name, version, args)))["results"])

    async def execute(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Run any command map; returns its result or raises its error."""
        return await self._execute(cmd)

    async def digest(self) -> str:
        """SHA-256 over the whole state in canonical order."""
        return str(await self._query({"op": "digest"}))

    async def expire(self, now: int | None = None) -> int:
        """Delete documents whose ``_expires`` is at or before ``now`` (ms; default: now)."""
        res = await self._execute(C.expire(now_ms() if now is None else now))
        return int(res["expired"])

    async def compact(self) -> None:
        """Fold the apply log into a new base snapshot (a connected database
        snapshots the leader instead: :meth:`docstore.RemoteDatabase.compact`)."""
        if self._local is None:
            raise DocstoreError("compaction is a local operation")
        await self._local.compact()

    @property
    def rev(self) -> int:
        """The last revision written (embedded; a connected database raises
        :class:`~docstore.client.NotSupportedRemotely`: use :meth:`current_rev`)."""
        if self._local is None:
            raise DocstoreError("rev is known to an embedded database only: use current_rev()")
        return self._local.rev

    async def current_rev(self) -> int:
        """The database's current revision: every write acknowledged before the call
        has a ``_rev`` at or below it, and ``watch(since_rev=it)`` starts here.
        Embedded it is :attr:`rev`."""
        if self._local is None:
            raise DocstoreError("current_rev needs an embedded or connected database")
        return self._local.rev

    async def aclose(self) -> None:
        await self._executor.aclose()

    async def _expire_loop(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            local = self._local
            if local is not None and not any(c.expiring for c in local.engine.colls.values()):
                continue
            try:
                await self.expire()
            except DatabaseClosedError:
                return


@asynccontextmanager
async def open(
    path: str | os.PathLike[str],
    *,
    registry: Registry | None = None,
    limits: Limits = DEFAULT_LIMITS,
    sync: bool = True,
    expire_interval: float | None = 1.0,
    watch_history: int = 10_000,
) -> AsyncIterator[Database]:
    """Open (creating if needed) the embedded database in directory ``path``.

    Extensions in ``registry`` that the database does not have at their
    version yet are registered on open.  ``sync=False`` skips fsync (tests,
    scratch data only).  A background task deletes expired documents every
    ``expire_interval`` seconds (None: only when :meth:`Database.expire` is called).

    Example:
        async with docstore.open("data/app") as db:
            users = db.collection("users")
            rev = await users.put("ann", {"age": 31})
    """
    ex = LocalExecutor(
        os.fspath(path), registry=registry, limits=limits, sync=sync, watch_history=watch_history
    )
    await ex.start()
    db = Database(ex)
    try:
        if registry is not None:
            have = ex.engine.extensions
            for kind, table in registry.local_versions().items():
                for name, version in table.items():
                    if have[kind].get(name) != version:
                        await db._execute(C.register(kind[:-1], name, version))
        body_exc: BaseException | None = None
        async with trio.open_nursery() as nursery:
            if expire_interval:
                nursery.start_soon(db._expire_loop, expire_interval)
            try:
                yield db
            except BaseException as exc:
                # Re-raised below, outside the nursery, so the caller sees its
                # own exception rather than a group wrapping it.
                body_exc = exc
            nursery.cancel_scope.cancel()
        if body_exc is not None:
            raise body_exc
    finally:
        with trio.CancelScope(shield=True):
            await db.aclose()
