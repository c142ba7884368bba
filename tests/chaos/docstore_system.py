"""docstore as a chaos system: ``docstore.server.serve`` nodes driven through ``docstore.connect``.

Run by hand (the repository root on ``sys.path``)::

    python -m trioraft.testing.chaos --system tests.chaos.docstore_system:SYSTEM --duration 300

Each node process runs :func:`docstore.server.serve` as ``docstore serve``
would (the real state machine, client service and leader duties: the
settings record and TTL expiry).  Each client task holds its own
``docstore.connect`` (its own sessions and lanes, retries until
``op_timeout``), and runs one operation at a time:

* ``put`` of a unique value on register ``r/KEY`` (half of them with a TTL
  of a day, longer than any clock jump: they must never vanish), ``delete``
  (a write of None), a conditional put (``if_match`` on the value this
  client last saw, or ``if_rev: 0``): a cas whose ``conflict`` is "did not
  swap";
* ``patch`` ``$inc`` (upsert) on a counter ``n/cX``; ``batch`` of a put and
  an increment (both or neither);
* reads of a register, ``linearizable`` or ``lease`` through the client;
  ``local`` reads of any node (may be stale: checked for phantoms only);
* ``put`` of a short-TTL document ``t/KEY`` (1-3 s) and reads of it
  (phantoms only).

Outcomes: an answer is ``ok``; ``conflict`` on a conditional put is ``ok``
(not swapped); :class:`~docstore.client.UnavailableError` (no answer within
the deadline) and ``session_expired`` (a forward clock jump of the leader
expires every session) are unknown; any other error of a write is a
violation.  The checks after the run: the register history with and
without the final reads is linearizable per key (the harness); each
counter lies between its acknowledged increments and those plus its
unknown ones; no read returned a value nobody wrote; once the run is over
and the clocks are true again, no short-TTL document is visible on any node
(the leader's ``expire`` duty ran and every replica applied it).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

import trio

import docstore
from docstore.client import RemoteDatabase, UnavailableError
from docstore.engine.errors import DocstoreError
from docstore.server import ServerConfig, serve
from trioraft.testing.chaos.process import NodeSpec
from trioraft.testing.chaos.router import Router
from trioraft.testing.chaos.run import ChaosRun

__all__ = ["SYSTEM", "DocstoreSystem", "Records"]

COUNTERS: Final = 4
#: A register put with a TTL gets this one: longer than any clock jump (3 h).
LONG_TTL: Final = 86_400.0
#: How long after the run short-TTL documents may still be visible.
TTL_GRACE: Final = 20.0


@dataclass
class _Counter:
    acked: int = 0
    unknown: int = 0


@dataclass
class Records:
    """What the clients of one run did, beyond the register history."""

    counters: dict[str, _Counter] = field(default_factory=dict)
    #: Every value a write carried (None: absent), for the phantom check.
    written: set[object] = field(default_factory=lambda: {None})
    violations: list[str] = field(default_factory=list)
    #: Counter values read after the run.
    final_counters: dict[str, int] = field(default_factory=dict)

    def counter(self, name: str) -> _Counter:
        return self.counters.setdefault(name, _Counter())

    def check(self) -> list[str]:
        out = list(self.violations)
        for name, c in sorted(self.counters.items()):
            got = self.final_counters.get(name)
            if got is None:
                out.append(f"counter {name} was not read after the run")
            elif not c.acked <= got <= c.acked + c.unknown:
                out.append(
                    f"counter {name} is {got}: {c.acked} acknowledged increments and "
                    f"{c.unknown} unknown"
                )
        return out


def _records(run: ChaosRun) -> Records:
    rec = run.scratch.get("docstore")
    if rec is None:
        rec = run.scratch["docstore"] = Records()
    assert isinstance(rec, Records)
    return rec


def _value(doc: object) -> object:
    return doc.get("v") if isinstance(doc, dict) else None


class DocstoreSystem:
    """docstore nodes and clients (see the module docstring)."""

    name = "tests.chaos.docstore_system:SYSTEM"
    spec_settings: Mapping[str, Any] = {
        "cluster_id": "docstore-chaos",
        "client_id": "docstore",  # the operator's token: admin calls
        "token": "docstore-chaos-token",
    }

    async def serve(self, spec: NodeSpec) -> None:
        # The settings both name alike (listen, join, the cluster's id and
        # secret, the token, the timings) mean the same: copied as they are.
        same = {f.name for f in fields(ServerConfig)} & {f.name for f in fields(NodeSpec)}
        config = ServerConfig(
            id=spec.node_id,
            advertise=spec.address,
            peers=spec.peers,
            data=f"{spec.data_dir}/docstore",
            **{name: getattr(spec, name) for name in same},
        )
        await serve(config)

    def connect(self, run: ChaosRun, timeout: float) -> Any:
        """A ``docstore.connect`` to the run's nodes, calls bounded by ``timeout``."""
        s = next(iter(run.procs.values())).spec
        return docstore.connect(
            [p.direct for p in run.procs.values()],
            token=s.token,
            cluster_id=s.cluster_id,
            call_timeout=timeout,
            connect_timeout=1.0,
        )

    # ------------------------------------------------------------ clients

    async def client(self, run: ChaosRun, router: Router, worker: int) -> None:
        rng = run.rng_for(worker)
        last: dict[str, object] = {}
        async with self.connect(run, run.o.op_timeout) as db:
            while not run.stop_clients:
                key = rng.choice(run.keys)
                x = rng.random()
                if x < 0.18:
                    await self._put(run, db, worker, key, last, ttl=rng.random() < 0.5)
                elif x < 0.28:
                    await self._cas(run, db, worker, key, last)
                elif x < 0.32:
                    cmd = {"op": "delete", "coll": "r", "key": key}
                    await self._write(run, db, worker, key, None, cmd, last)
                elif x < 0.45:
                    await self._inc(run, db, f"c{rng.randrange(COUNTERS)}", rng.randint(1, 3))
                elif x < 0.50:
                    await self._batch(run, db, worker, key, f"c{rng.randrange(COUNTERS)}", last)
                elif x < 0.75:
                    consistency = "lease" if rng.random() < 0.4 else "linearizable"
                    await self._read(run, db, key, consistency, last, worker)
                elif x < 0.85:
                    await self._local_read(run, db, rng.choice(sorted(run.procs)), key)
                elif x < 0.92:
                    await self._ttl_put(run, db, worker, key, rng.uniform(1.0, 3.0))
                else:
                    await self._ttl_read(run, db, key)
                await trio.sleep(rng.uniform(0, run.o.think))

    async def _execute(self, run: ChaosRun, db: RemoteDatabase, cmd: dict[str, Any]) -> str:
        """``ok``, ``conflict`` or ``unknown``; other errors are violations (and unknown)."""
        try:
            await db.execute(cmd)
            return "ok"
        except UnavailableError:
            return "unknown"
        except DocstoreError as exc:
            if exc.code == "conflict":
                return "conflict"
            if exc.code == "session_expired":
                run.report.ops["session expired"] += 1
                return "unknown"
            _records(run).violations.append(f"{cmd['op']} on {cmd.get('key')}: {exc.code} {exc}")
            return "unknown"

    async def _write(
        self,
        run: ChaosRun,
        db: RemoteDatabase,
        worker: int,
        key: str,
        value: str | None,
        cmd: dict[str, Any],
        last: dict[str, object],
    ) -> str:
        """Run ``cmd``, which writes ``value`` to register ``key``, into the history.

        Returns the outcome, also counted under the command's op.
        """
        h = run.history.invoke(f"c{worker}", f"r/{key}", "write", value)
        outcome = await self._execute(run, db, cmd)
        if outcome == "ok":
            run.history.ok(h)
            last[key] = value
        else:
            run.history.timeout(h)
            last.pop(key, None)
        run.report.ops[f"{cmd['op']} {outcome}"] += 1
        return outcome

    async def _put(
        self,
        run: ChaosRun,
        db: RemoteDatabase,
        worker: int,
        key: str,
        last: dict[str, object],
        *,
        ttl: bool,
    ) -> None:
        value = run.next_value(worker)
        _records(run).written.add(value)
        doc: dict[str, Any] = {"v": value}
        if ttl:
            doc["_expires"] = int((time.time() + LONG_TTL) * 1000)
        cmd = {"op": "put", "coll": "r", "key": key, "doc": doc}
        await self._write(run, db, worker, key, value, cmd, last)

    async def _cas(
        self, run: ChaosRun, db: RemoteDatabase, worker: int, key: str, last: dict[str, object]
    ) -> None:
        expected = last.get(key)
        value = run.next_value(worker)
        _records(run).written.add(value)
        cmd: dict[str, Any] = {"op": "put", "coll": "r", "key": key, "doc": {"v": value}}
        if expected is None:
            cmd["if_rev"] = 0
        else:
            cmd["if_match"] = {"v": expected}
        h = run.history.invoke(f"c{worker}", f"r/{key}", "cas", value, expected=expected)
        outcome = await self._execute(run, db, cmd)
        if outcome == "ok":
            run.history.ok(h, True)
            last[key] = value
        elif outcome == "conflict":
            run.history.ok(h, False)
            last.pop(key, None)
        else:
            run.history.timeout(h)
            last.pop(key, None)
        run.report.ops[f"cas {outcome}"] += 1

    async def _inc(self, run: ChaosRun, db: RemoteDatabase, counter: str, by: int) -> None:
        c = _records(run).counter(counter)
        c.unknown += by
        cmd = {"op": "patch", "coll": "n", "key": counter, "ops": {"$inc": {"n": by}}}
        outcome = await self._execute(run, db, {**cmd, "upsert": True})
        if outcome == "ok":
            c.unknown -= by
            c.acked += by
        run.report.ops[f"inc {outcome}"] += 1

    async def _batch(
        self,
        run: ChaosRun,
        db: RemoteDatabase,
        worker: int,
        key: str,
        counter: str,
        last: dict[str, object],
    ) -> None:
        value = run.next_value(worker)
        rec = _records(run)
        rec.written.add(value)
        c = rec.counter(counter)
        c.unknown += 1
        cmd = {
            "op": "batch",
            "commands": [
                {"op": "put", "coll": "r", "key": key, "doc": {"v": value}},
                {
                    "op": "patch",
                    "coll": "n",
                    "key": counter,
                    "ops": {"$inc": {"n": 1}},
                    "upsert": True,
                },
            ],
        }
        if await self._write(run, db, worker, key, value, cmd, last) == "ok":
            c.unknown -= 1
            c.acked += 1

    async def _read(
        self,
        run: ChaosRun,
        db: RemoteDatabase,
        key: str,
        consistency: str,
        last: dict[str, object],
        worker: int,
    ) -> None:
        h = run.history.invoke(f"c{worker}", f"r/{key}", "read")
        try:
            doc = await db.collection("r").get(key, consistency=consistency)
        except (UnavailableError, DocstoreError):
            run.history.fail(h)  # a read that failed changed nothing
            run.report.ops[f"{consistency} read fail"] += 1
            return
        run.history.ok(h, _value(doc))
        last[key] = _value(doc)
        run.report.ops[f"{consistency} read ok"] += 1

    async def _local_read(self, run: ChaosRun, db: RemoteDatabase, node: int, key: str) -> None:
        """A local read of one node: possibly stale, never a value nobody wrote."""
        try:
            res = await db.client.request_node(
                run.procs[node].direct, "query", {"op": "get", "coll": "r", "key": key}
            )
        except (Exception, trio.TooSlowError):
            run.report.ops["local read fail"] += 1
            return
        value = _value(res.get("value")) if isinstance(res, dict) else None
        if value not in _records(run).written:
            _records(run).violations.append(
                f"local read of r/{key} on node {node} found {value!r}, never written"
            )
        run.report.ops["local read ok"] += 1

    async def _ttl_put(
        self, run: ChaosRun, db: RemoteDatabase, worker: int, key: str, ttl: float
    ) -> None:
        value = run.next_value(worker)
        _records(run).written.add(value)
        try:
            await db.collection("t").put(key, {"v": value}, ttl=ttl)
            run.report.ops["ttl put ok"] += 1
        except UnavailableError:
            run.report.ops["ttl put unknown"] += 1
        except DocstoreError as exc:
            if exc.code != "session_expired":
                _records(run).violations.append(f"ttl put on t/{key}: {exc.code} {exc}")
            run.report.ops["ttl put unknown"] += 1

    async def _ttl_read(self, run: ChaosRun, db: RemoteDatabase, key: str) -> None:
        try:
            doc = await db.collection("t").get(key)
        except (UnavailableError, DocstoreError):
            run.report.ops["ttl read fail"] += 1
            return
        if _value(doc) not in _records(run).written:
            _records(run).violations.append(f"read of t/{key} found {doc!r}, never written")
        run.report.ops["ttl read ok"] += 1

    # ------------------------------------------------------------ the end

    async def final_reads(self, run: ChaosRun, router: Router) -> None:
        rec = _records(run)
        async with self.connect(run, 10.0) as db:
            for key in run.keys:
                while True:
                    h = run.history.invoke("final", f"r/{key}", "read")
                    try:
                        doc = await db.collection("r").get(key)
                    except (UnavailableError, DocstoreError):
                        run.history.fail(h)
                        continue
                    run.history.ok(h, _value(doc))
                    run.report.final_values[f"r/{key}"] = _value(doc)
                    break
            for name in rec.counters:
                doc = await db.collection("n").get(name)
                rec.final_counters[name] = int(doc["n"]) if isinstance(doc, dict) else 0
                run.report.final_values[f"n/{name}"] = rec.final_counters[name]
            # Every short-TTL document has expired by now (true clocks): none may
            # stay visible on any node once the leader's expire duty has run.
            deadline = trio.current_time() + TTL_GRACE
            left: dict[int, object] = {}
            while True:
                left = {}
                for n, p in run.procs.items():
                    try:
                        left[n] = await db.client.request_node(
                            p.direct, "query", {"op": "count", "coll": "t"}
                        )
                    except (Exception, trio.TooSlowError) as exc:
                        left[n] = repr(exc)
                counts = {n: c.get("value") if isinstance(c, dict) else c for n, c in left.items()}
                if all(c == 0 for c in counts.values()):
                    break
                if trio.current_time() > deadline:
                    rec.violations.append(
                        f"short-TTL documents still visible {TTL_GRACE:g}s after the run: {counts}"
                    )
                    break
                await trio.sleep(0.5)

    def check(self, run: ChaosRun) -> list[str]:
        return _records(run).check()


SYSTEM: Final = DocstoreSystem()
