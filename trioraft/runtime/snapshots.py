"""A node's snapshots: taking them, streaming them to followers, receiving them from a leader.

Owns the snapshot state of a node (the snapshot it serves, the one being
taken, the streams in and out) and the three jobs on it:

* take: after ``snapshot_entries`` applied entries (or ``snapshot_bytes``)
  the state machine writes a snapshot, the snapshot store commits it, the
  state machine flushes, and the log is compacted (keeping
  ``snapshot_keep_entries`` behind it, and everything after the oldest
  snapshot kept, so a damaged newest one can fall back);
* send: a follower behind the log start gets the file streamed in
  checksummed chunks with acknowledgements (resumable, a small window in
  flight), one task per follower;
* receive: chunks are written to an incoming file; only when the whole file
  has arrived, verified and been committed does the core see the
  ``InstallSnapshot`` (the apply task then restores the state machine).

A bad stream (a chunk out of place, a failed checksum: ``SnapshotError``)
starts over; a storage error is fatal and stops the node, never retried.

:class:`NodeSnapshots` is a part of :class:`~trioraft.runtime.node.Node`
(a mixin): its methods run on the node's state, in the node's tasks.
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import suppress
from typing import TYPE_CHECKING

import trio

from trioraft.core.raft import RaftCore
from trioraft.core.types import InstallSnapshot, Membership, NodeId, Role, SnapshotMeta
from trioraft.runtime.config import NodeConfig
from trioraft.statemachine import SnapshotError, StateMachine
from trioraft.storage.errors import StorageFatalError
from trioraft.storage.fs import FileSystem
from trioraft.storage.snapshots import (
    SnapshotReceiver,
    SnapshotStore,
    StaleSnapshotError,
    StoredSnapshot,
)
from trioraft.transport.base import Transport
from trioraft.transport.messages import AnyMessage, SnapshotChunk, SnapshotChunkAck

if TYPE_CHECKING:
    from trioraft.runtime.node import _InboxItem
    from trioraft.storage import LogStore

__all__ = ["NodeSnapshots"]


class NodeSnapshots:
    """The snapshot part of a node (see the module docstring)."""

    # The node's, used here (set by Node.__init__ and Node._run).
    id: NodeId
    config: NodeConfig
    state_machine: StateMachine
    log: logging.Logger
    fs: FileSystem
    core: RaftCore | None
    transport: Transport | None
    _nursery: trio.Nursery | None
    _closed: bool
    _fatal: BaseException | None
    _applied: int
    _stats: dict[str, int]
    _logstore: LogStore | None
    _snaps: SnapshotStore | None
    _storage_lock: trio.Lock
    _inbox_send: trio.MemorySendChannel[_InboxItem]

    if TYPE_CHECKING:

        def _check_open(self) -> RaftCore: ...
        def _kick(self) -> None: ...
        def _reachable_membership(self, m: Membership) -> Membership: ...

    def _init_snapshots(self) -> None:
        self._chunks_send, self._chunks_recv = trio.open_memory_channel[SnapshotChunk](256)
        self._snapshot_lock = trio.Lock()
        self._snapshot_running = False
        self._last_snapshot_index = 0
        self._bytes_since_snapshot = 0
        #: The snapshot this node serves (the core's; what a leader streams).
        self._current_snapshot: StoredSnapshot | None = None
        self._snap_senders: dict[NodeId, trio.MemorySendChannel[SnapshotChunkAck]] = {}
        self._snap_rx_meta: dict[NodeId, InstallSnapshot] = {}
        self._snap_rx: dict[NodeId, tuple[SnapshotReceiver, int]] = {}

    def _route_snapshot_message(self, m: AnyMessage) -> bool:
        """Transport callback part (never blocks): take ``m`` if it is about a snapshot stream."""
        if isinstance(m, SnapshotChunk):
            try:
                self._chunks_send.send_nowait(m)
            except trio.WouldBlock:
                self._stats["inbox_dropped"] += 1
        elif isinstance(m, SnapshotChunkAck):
            ch = self._snap_senders.get(m.src)
            if ch is not None:
                with suppress(trio.WouldBlock):
                    ch.send_nowait(m)
        elif isinstance(m, InstallSnapshot):
            # Held back until its bytes have arrived and verified.
            self._snap_rx_meta[m.src] = m
        else:
            return False
        return True

    # ------------------------------------------------------------------ take

    def _maybe_snapshot(self) -> None:
        due = (
            self._applied - self._last_snapshot_index >= self.config.snapshot_entries
            or self._bytes_since_snapshot >= self.config.snapshot_bytes
        )
        if due and not self._snapshot_running and self._nursery is not None:
            self._snapshot_running = True
            self._nursery.start_soon(self._take_snapshot_task)

    async def _take_snapshot_task(self) -> None:
        try:
            await self.snapshot()
        finally:
            self._snapshot_running = False

    async def snapshot(self) -> SnapshotMeta:
        """Snapshot the state machine now and compact the log behind it.

        Returns the newest snapshot's metadata: this one's, or that of a
        newer snapshot received from the leader while this one was written
        (an older snapshot is never committed over a newer one).  The log
        store keeps the entries after the oldest snapshot kept
        (``SnapshotStore.fallback_index``), so a damaged newest snapshot can
        fall back to the older one at a restart.

        A storage error stops the node, whoever called (and is raised here).
        """
        try:
            return await self._snapshot()
        except (OSError, StorageFatalError) as exc:
            self._stop_fatally(exc)
            raise

    def _stop_fatally(self, exc: BaseException) -> None:
        """Storage failed in a caller's task (not the node's own): stop the node with it."""
        if self._fatal is None:
            self._fatal = exc
            self.log.critical("node %d stops: %r", self.id, exc)
        if self._nursery is not None and not self._closed:
            self._nursery.start_soon(_fail, StorageFatalError(f"storage failed: {exc!r}"))

    async def _snapshot(self) -> SnapshotMeta:
        core = self._check_open()
        assert self._snaps is not None and self._logstore is not None
        snaps, logstore = self._snaps, self._logstore
        async with self._snapshot_lock:
            path = snaps.new_path()
            info = await self.state_machine.write_snapshot(path)
            newest = await trio.to_thread.run_sync(snaps.latest_stored)
            known = max(
                self._last_snapshot_index,
                core.snapshot.index if core.snapshot is not None else 0,
                newest.meta.index if newest is not None else 0,
            )
            newer = newest.meta if newest is not None else core.snapshot
            if info.index <= known and newer is not None:
                await trio.to_thread.run_sync(self.fs.unlink, path)
                return self._skip_snapshot(known, newer)
            meta = SnapshotMeta(info.index, info.term, core.membership_at(info.index))
            try:
                stored = await trio.to_thread.run_sync(
                    snaps.commit, path, meta, info.checksum, info.size
                )
            except StaleSnapshotError:  # a received snapshot won the race (path is gone)
                newest = await trio.to_thread.run_sync(snaps.latest_stored)
                assert newest is not None
                return self._skip_snapshot(newest.meta.index, newest.meta)
            await self.state_machine.flush()  # its own state must not lag the log start
            self._adopt(stored)
            self._last_snapshot_index = info.index
            self._bytes_since_snapshot = 0
            core.compact(info.index, self.config.snapshot_keep_entries)
            floor = await trio.to_thread.run_sync(snaps.fallback_index)
            start = min(core.offset, floor)
            async with self._storage_lock:
                if start > logstore.boundary()[0]:
                    term = logstore.term(start)  # committed: the log's term is the one
                    await trio.to_thread.run_sync(logstore.compact, start, term)
            self._stats["snapshots_taken"] += 1
            self.log.info("node %d took snapshot %d, log starts at %d", self.id, info.index, start)
            return meta

    def _skip_snapshot(self, known: int, newer: SnapshotMeta) -> SnapshotMeta:
        """The snapshot just written is not newer than one stored: drop it."""
        self._last_snapshot_index = max(self._last_snapshot_index, known)
        self._bytes_since_snapshot = 0
        return newer

    def _adopt(self, stored: StoredSnapshot) -> None:
        """``stored`` is the core's snapshot now (what a leader streams); never go back."""
        cur = self._current_snapshot
        if cur is None or stored.meta.index > cur.meta.index:
            self._current_snapshot = stored

    async def _stored(self, meta: SnapshotMeta) -> StoredSnapshot:
        """The stored snapshot the core installed (the receiver committed it first)."""
        assert self._snaps is not None
        cur = self._current_snapshot
        if cur is not None and (cur.meta.index, cur.meta.term) == (meta.index, meta.term):
            return cur
        stored = await trio.to_thread.run_sync(self._snaps.find, meta)
        if stored is None:
            raise RuntimeError(f"snapshot {meta.index} (term {meta.term}) to install is not stored")
        return stored

    # ------------------------------------------------------------------ send

    def _start_snapshot_send(self, msg: InstallSnapshot) -> None:
        if msg.dst in self._snap_senders or self._nursery is None:
            return
        members = self._reachable_membership(msg.meta.membership)
        if members is not msg.meta.membership:  # the codec carries host:port only
            msg = dataclasses.replace(msg, meta=dataclasses.replace(msg.meta, membership=members))
        send, recv = trio.open_memory_channel[SnapshotChunkAck](64)
        self._snap_senders[msg.dst] = send
        self._nursery.start_soon(self._send_snapshot, msg, recv)

    async def _send_snapshot(
        self, msg: InstallSnapshot, acks: trio.MemoryReceiveChannel[SnapshotChunkAck]
    ) -> None:
        """Stream the snapshot file to one follower, resuming where its acks say."""
        core = self.core
        assert core is not None and self.transport is not None
        peer, ok = msg.dst, False
        stored = self._current_snapshot
        try:
            if stored is None or stored.meta.index != msg.meta.index:
                return
            digest = bytes.fromhex(stored.checksum)
            size, chunk = stored.size, self.config.snapshot_chunk_bytes
            acked, failures = 0, 0
            try:
                f = await trio.to_thread.run_sync(self.fs.open, stored.path)
            except FileNotFoundError:
                # Pruned: a newer snapshot was committed and not adopted yet (the
                # node's own snapshot task between commit and adopt).  Lost like a
                # failed stream; the core asks again with the newer one.
                return
            try:
                while acked < size or size == 0:
                    if core.term != msg.term or core.role is not Role.LEADER:
                        # A stream of an earlier term never ends by itself: the
                        # follower refuses its chunks and acks offset 0.
                        return
                    self.transport.send(peer, msg)
                    offset = acked
                    for _ in range(4):  # a small window of chunks in flight
                        if offset >= size and size > 0:
                            break
                        data = await trio.to_thread.run_sync(f.pread, chunk, offset)
                        done = offset + len(data) >= size
                        self.transport.send(
                            peer,
                            SnapshotChunk(
                                term=msg.term,
                                src=self.id,
                                dst=peer,
                                snapshot_index=msg.meta.index,
                                snapshot_term=msg.meta.term,
                                offset=offset,
                                data=data,
                                total_size=size,
                                sha256=digest,
                                done=done,
                            ),
                        )
                        offset += len(data)
                        if done:
                            break
                    with trio.move_on_after(self.config.election_timeout_max) as cs:
                        ack = await acks.receive()
                        while ack.snapshot_index != msg.meta.index:
                            ack = await acks.receive()
                    if cs.cancelled_caught:
                        failures += 1
                        if failures >= 5 or core.role is not Role.LEADER:
                            return
                        continue
                    failures = 0
                    acked = ack.next_offset
                    if acked >= size:
                        ok = True
                        self._stats["snapshots_sent"] += 1
                        return
            finally:
                f.close()
        finally:
            del self._snap_senders[peer]
            if not self._closed:
                core.report_snapshot(peer, ok)
                self._kick()

    # --------------------------------------------------------------- receive

    async def _snapshot_receiver(self) -> None:
        """Collect streamed snapshot chunks; hand the core a verified InstallSnapshot."""
        assert self._snaps is not None and self.transport is not None
        async for c in self._chunks_recv:
            meta_msg = self._snap_rx_meta.get(c.src)
            core = self.core
            assert core is not None
            if (
                meta_msg is None
                or meta_msg.meta.index != c.snapshot_index
                or meta_msg.meta.term != c.snapshot_term
                or c.term < core.term
            ):
                self._ack_chunk(c, 0)
                continue
            rx = self._snap_rx.get(c.src)
            if rx is None and meta_msg.meta.index <= core.commit:
                # We hold all of it already (a leader restarting a stream it
                # lost track of): no bytes needed; the core answers with our commit.
                self._ack_chunk(c, c.total_size)
                if c.offset == 0:
                    await self._inbox_send.send(meta_msg)
                continue
            if rx is not None and (rx[0].meta.index, rx[0].meta.term) != (
                c.snapshot_index,
                c.snapshot_term,
            ):
                await trio.to_thread.run_sync(rx[0].abort)
                rx = None
            if rx is None:
                if c.offset != 0:
                    self._ack_chunk(c, 0)
                    continue
                receiver = await trio.to_thread.run_sync(
                    self._snaps.receive, meta_msg.meta, c.sha256.hex(), c.total_size
                )
                rx = (receiver, 0)
            receiver, expect = rx
            if c.offset != expect:
                self._snap_rx[c.src] = rx
                self._ack_chunk(c, expect)
                continue
            try:
                await trio.to_thread.run_sync(receiver.write, c.data)
                expect += len(c.data)
                if c.done:
                    install = await self._commit_received(receiver, meta_msg)
                    self._snap_rx.pop(c.src, None)
                    self._ack_chunk(c, expect)
                    self.log.info("node %d received snapshot %d", self.id, c.snapshot_index)
                    try:
                        self._inbox_send.send_nowait(install)
                    except trio.WouldBlock:
                        await self._inbox_send.send(install)
                    continue
            except SnapshotError as exc:  # a bad stream: start over (storage errors are fatal)
                self.log.warning("node %d: snapshot stream from %d failed: %s", self.id, c.src, exc)
                self._snap_rx.pop(c.src, None)
                self._ack_chunk(c, 0)
                continue
            self._snap_rx[c.src] = (receiver, expect)
            self._ack_chunk(c, expect)

    async def _commit_received(
        self, receiver: SnapshotReceiver, msg: InstallSnapshot
    ) -> InstallSnapshot:
        """Commit a received snapshot; the InstallSnapshot the core should step.

        The core does not see the snapshot before it is durable.  If a newer
        one is stored already (one the core refused earlier, its term having
        moved), the core is handed that one instead: any committed snapshot
        is committed state, whichever leader sent it, and the older one would
        not even be stored (the store never commits one below its newest).
        """
        assert self._snaps is not None
        with suppress(StaleSnapshotError):
            await trio.to_thread.run_sync(receiver.commit)
        newest = await trio.to_thread.run_sync(self._snaps.latest_stored)
        if newest is not None and newest.meta.index > msg.meta.index:
            return dataclasses.replace(msg, meta=newest.meta)
        return msg

    def _ack_chunk(self, c: SnapshotChunk, next_offset: int) -> None:
        assert self.transport is not None and self.core is not None
        self.transport.send(
            c.src,
            SnapshotChunkAck(
                term=self.core.term,
                src=self.id,
                dst=c.src,
                snapshot_index=c.snapshot_index,
                snapshot_term=c.snapshot_term,
                next_offset=next_offset,
            ),
        )


async def _fail(exc: BaseException) -> None:
    raise exc
