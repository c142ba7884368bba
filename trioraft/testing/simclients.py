"""Clients inside the whole-node simulator: docstore writes and reads, and their history.

Theory of operation
===================

Each client is a task with its own session (``client_id``, ``sequence``,
opened by the session's registration entry) and its own random stream.  It
runs one operation at a time against the node it believes leads, and
retries the same sequence on another node after ``not_leader``, a dropped
proposal, a closed node or an attempt's timeout, until the operation's
deadline; the session makes a retried write apply once.  An operation
that gets no answer by then is *unknown* (it may take effect later, or
never).  ``session_expired`` (the session was evicted or expired, by the
entries' leader timestamps) is unknown too, and the client opens a new
session.

Operations and what the history records (one register per key of
collection ``r``, :mod:`trioraft.testing.linearizability`):

* ``put`` of a unique value: a write; ``delete``: a write of None;
* a conditional put (``if_match`` on the value, or ``if_rev: 0`` for "must
  not exist"): a cas, whose ``conflict`` answer is a cas that did not swap;
* ``patch`` with ``$inc`` (upsert) on a counter of collection ``n``: counted
  as acknowledged or unknown per counter;
* ``batch`` of a put and an increment: both, all or nothing;
* reads (``get``) with ``linearizable`` or ``lease`` consistency: register
  reads; ``local`` reads may be stale, so they are only checked for
  phantoms (a value nobody wrote).

:meth:`Workload.check` judges the history once the run is over.
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from docstore.state_machine import OPEN_SESSION, encode_command
from trioraft.runtime.errors import (
    NodeClosedError,
    NotLeaderError,
    OverloadedError,
    ProposalDroppedError,
    ProposalRejectedError,
    ReadFailedError,
)
from trioraft.testing.linearizability import History, Op, check

if TYPE_CHECKING:
    from trioraft.runtime.node import Node
    from trioraft.testing.simnode import Simulation

__all__ = ["Workload"]

RETRYABLE = (
    NodeClosedError,
    ProposalDroppedError,
    ProposalRejectedError,
    OverloadedError,
    ReadFailedError,
    TimeoutError,
)


@dataclass
class _Client:
    index: int
    rng: random.Random
    generation: int = 0
    sequence: int = -1  # -1: no session open
    leader: int | None = None
    values: int = 0

    @property
    def cid(self) -> str:
        return f"c{self.index}.{self.generation}"


@dataclass
class _Counter:
    acked: int = 0
    unknown: int = 0


@dataclass
class Workload:
    """The clients of one simulated run and what they saw."""

    sim: Simulation
    clients: int = 4
    keys: int = 4
    counters: int = 2
    #: Simulated seconds: an operation's deadline, one attempt's, a client's think time.
    op_timeout: float = 4.0
    attempt: float = 1.0
    think: float = 0.02
    #: Pause after a failed attempt that named no leader: doubling from
    #: ``retry_pause`` up to ``retry_pause_max``, as real clients back off.
    #: False keeps a fixed 5-20 ms pause: the schedule the seeds pinned in
    #: tests/sim/test_found_by_simnode.py were found on (it spends most of a
    #: run's events on retries while no leader is known).
    backoff: bool = True
    retry_pause: float = 0.01
    retry_pause_max: float = 0.2
    history: History = field(default_factory=lambda: History(clock=trio.current_time))
    counts: dict[str, _Counter] = field(default_factory=dict)
    written: set[Hashable] = field(default_factory=lambda: {None})
    stats: dict[str, int] = field(default_factory=dict)

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    # ------------------------------------------------------------ history

    def _finished(self, op: Op) -> None:
        self.sim.note(f"op {op.process} {op.kind} {op.key} {op.value} {op.status} {op.output}")

    # ------------------------------------------------------------ clients

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for i in range(self.clients):
                cl = _Client(i, random.Random(self.sim.rng.random()))
                nursery.start_soon(self._client, cl)

    async def _client(self, cl: _Client) -> None:
        r = cl.rng
        while True:
            await self.sim.timers.sleep(r.expovariate(1 / self.think))
            if cl.sequence < 0:
                status, res = await self._propose(cl, encode_command(OPEN_SESSION), 0)
                if status == "ok" and isinstance(res, dict) and res.get("ok"):
                    cl.sequence = 0
                continue
            x = r.random()
            key = f"k{r.randrange(self.keys)}"
            if x < 0.25:
                await self._put(cl, key)
            elif x < 0.35:
                await self._cas(cl, key)
            elif x < 0.40:
                await self._write(cl, key, None, {"op": "delete", "coll": "r", "key": key})
            elif x < 0.55:
                await self._inc(cl)
            elif x < 0.60:
                await self._batch(cl, key)
            elif x < 0.90:
                await self._read(cl, key, "lease" if r.random() < 0.4 else "linearizable")
            else:
                await self._local_read(cl, key)

    def _value(self, cl: _Client) -> int:
        cl.values += 1
        v = cl.index * 1_000_000 + cl.values
        self.written.add(v)
        return v

    async def _put(self, cl: _Client, key: str) -> None:
        v = self._value(cl)
        await self._write(cl, key, v, {"op": "put", "coll": "r", "key": key, "doc": {"v": v}})

    async def _write(self, cl: _Client, key: str, v: int | None, cmd: dict[str, Any]) -> None:
        h = self.history.invoke(cl.cid, key, "write", v)
        res = await self._session_write(cl, cmd)
        ok = res is not None and bool(res.get("ok"))
        self._finished(self.history.ok(h) if ok else self.history.timeout(h))
        if res is not None and not res.get("ok"):
            self.sim.violation(f"client {cl.cid}: {cmd['op']} answered {res}")

    async def _cas(self, cl: _Client, key: str) -> None:
        r = cl.rng
        recent = self.history.finished()[-50:]
        seen = [op.value for op in recent if op.key == key and op.kind != "read"]
        expected = r.choice(seen) if seen and r.random() < 0.8 else None
        v = self._value(cl)
        cmd: dict[str, Any] = {"op": "put", "coll": "r", "key": key, "doc": {"v": v}}
        if expected is None:
            cmd["if_rev"] = 0
        else:
            cmd["if_match"] = {"v": expected}
        h = self.history.invoke(cl.cid, key, "cas", v, expected=expected)
        res = await self._session_write(cl, cmd)
        if res is not None and (res.get("ok") or res.get("error") == "conflict"):
            self._finished(self.history.ok(h, bool(res.get("ok"))))
        else:
            self._finished(self.history.timeout(h))
        if res is not None and not res.get("ok") and res.get("error") != "conflict":
            self.sim.violation(f"client {cl.cid}: conditional put answered {res}")

    async def _inc(self, cl: _Client) -> None:
        r = cl.rng
        c = f"n{r.randrange(self.counters)}"
        d = r.randint(1, 3)
        cmd = {"op": "patch", "coll": "n", "key": c, "ops": {"$inc": {"n": d}}, "upsert": True}
        count = self.counts.setdefault(c, _Counter())
        count.unknown += d  # until answered
        res = await self._session_write(cl, cmd)
        ok = res is not None and bool(res.get("ok"))
        self.sim.note(f"op {cl.cid} inc {c} +{d} seq {cl.sequence} {'ok' if ok else 'info'}")
        if ok:
            count.unknown -= d
            count.acked += d
        elif res is not None:
            self.sim.violation(f"client {cl.cid}: $inc answered {res}")

    async def _batch(self, cl: _Client, key: str) -> None:
        r = cl.rng
        v = self._value(cl)
        c = f"n{r.randrange(self.counters)}"
        cmd = {
            "op": "batch",
            "commands": [
                {"op": "put", "coll": "r", "key": key, "doc": {"v": v}},
                {"op": "patch", "coll": "n", "key": c, "ops": {"$inc": {"n": 1}}, "upsert": True},
            ],
        }
        count = self.counts.setdefault(c, _Counter())
        count.unknown += 1
        h = self.history.invoke(cl.cid, key, "write", v)
        res = await self._session_write(cl, cmd)
        ok = res is not None and bool(res.get("ok"))
        self._finished(self.history.ok(h) if ok else self.history.timeout(h))
        self.sim.note(f"op {cl.cid} inc {c} +1 seq {cl.sequence} {'ok' if ok else 'info'}")
        if ok:
            count.unknown -= 1
            count.acked += 1
        elif res is not None:
            self.sim.violation(f"client {cl.cid}: batch answered {res}")

    async def _session_write(self, cl: _Client, cmd: dict[str, Any]) -> dict[str, Any] | None:
        """The write's result map, or None if its outcome is unknown."""
        cl.sequence += 1
        status, res = await self._propose(cl, encode_command(cmd), cl.sequence)
        self._count(f"write {status}")
        if status != "ok":
            return None
        if not isinstance(res, dict):
            self.sim.violation(f"client {cl.cid}: a write answered {res!r}")
            return None
        if res.get("error") == "session_expired":
            self._count("session expired")
            cl.generation += 1
            cl.sequence = -1
            return None
        return res

    def _usable(self, node_id: int | None) -> Node | None:
        sn = self.sim.nodes.get(node_id) if node_id is not None else None
        return sn.usable() if sn is not None else None

    async def _propose(self, cl: _Client, data: bytes, sequence: int) -> tuple[str, object]:
        r = cl.rng
        ids = sorted(self.sim.nodes)
        deadline = trio.current_time() + self.op_timeout
        target = cl.leader
        pause = self.retry_pause

        async def back_off(fixed: float) -> None:
            nonlocal pause
            if not self.backoff:
                await self.sim.timers.sleep(fixed)
                return
            await self.sim.timers.sleep(r.uniform(pause / 2, pause))
            pause = min(pause * 2, self.retry_pause_max)

        while trio.current_time() < deadline:
            node = self._usable(target)
            if node is None:
                target = r.choice(ids)
                await back_off(0.02)
                continue
            try:
                with trio.move_on_at(min(deadline, trio.current_time() + self.attempt)):
                    res = await node.propose(data, client_id=cl.cid, sequence=sequence)
                    cl.leader = target
                    return "ok", res
                target = r.choice(ids)
            except NotLeaderError as exc:
                hint = exc.leader_id
                if hint in self.sim.nodes and (hint != target or not self.backoff):
                    target = hint  # try it at once
                    await self.sim.timers.sleep(0.005)
                else:
                    target = r.choice(ids)
                    await back_off(0.005)
            except Exception:
                await back_off(0.02)
        return "info", None

    async def _query(
        self, cl: _Client, query: dict[str, Any], consistency: str, node_id: int | None
    ) -> tuple[bool, object]:
        node = self._usable(node_id)
        if node is None:
            return False, None
        try:
            with trio.move_on_after(self.attempt):
                res = await node.read(query, consistency=consistency)
                if not isinstance(res, dict) or not res.get("ok"):
                    self.sim.violation(f"client {cl.cid}: read {query} answered {res!r}")
                    return False, None
                return True, res["value"]
        except NotLeaderError as exc:
            cl.leader = exc.leader_id
        except Exception:
            pass
        return False, None

    async def _read(self, cl: _Client, key: str, consistency: str) -> None:
        h = self.history.invoke(cl.cid, key, "read")
        ok, doc = await self._query(
            cl, {"op": "get", "coll": "r", "key": key}, consistency, cl.leader
        )
        if ok:
            self._count(f"{consistency} read")
            self._finished(self.history.ok(h, doc["v"] if isinstance(doc, dict) else None))
        else:
            if cl.leader is None:
                cl.leader = cl.rng.choice(sorted(self.sim.nodes))
            self._finished(self.history.fail(h))

    async def _local_read(self, cl: _Client, key: str) -> None:
        target = cl.rng.choice(sorted(self.sim.nodes))
        ok, doc = await self._query(cl, {"op": "get", "coll": "r", "key": key}, "local", target)
        if ok:
            self._count("local read")
            v = doc.get("v") if isinstance(doc, dict) else None
            if v not in self.written:
                self.sim.violation(
                    f"local read of {key} at node {target} found {v!r}, never written"
                )

    # ------------------------------------------------------------- checks

    def check(self, counters: dict[str, int]) -> list[str]:
        """Violations of the history (linearizability per key) and of the counters."""
        out = []
        res = check(self.history.ops(), budget=500_000)
        if res.ok is False:
            out.append("linearizability: " + res.explain())
        elif res.ok is None:
            self._count("linearizability unknown")
        for c, count in sorted(self.counts.items()):
            got = counters.get(c, 0)
            if not count.acked <= got <= count.acked + count.unknown:
                out.append(
                    f"counter {c} is {got}: {count.acked} acknowledged increments and "
                    f"{count.unknown} unknown"
                )
        return out
