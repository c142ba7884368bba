"""Live fuzz: nasty requests of every kind at a real three-node docstore cluster.

Theory of operation.  Three ``docstore serve`` processes on 127.0.0.1 (small
``--snapshot-entries``, so Raft snapshots of the nasty state happen during
the run) get ``--requests`` requests from a client holding a valid token
that speaks the raw client protocol (:func:`open_client_connection`), so the
client library's own validation is bypassed: commands and queries from
``tests/docstore/nasty.py``, watches with nasty filters followed by writes
their filters are evaluated against, cancels, membership changes with nasty
ids and addresses, leadership transfers, snapshots, backups, unknown kinds
and nasty sessions.  After each request every node process must still be
alive.  At the end: a normal put and get through ``docstore.connect``, all
nodes' ``digest`` answers equal once caught up, the membership unchanged;
then every node is stopped and started again and must elect, answer and
agree again (a committed poison entry would stop it at replay).

What it finds is a list of *findings* (a node died, an ``internal``/``error``
answer, a check that failed), each with the request that preceded it.

    python3 -m tests.chaos.docstore_fuzz --seed 7 --requests 3000

``tests/chaos/test_docstore_fuzz.py`` runs a short one in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import random
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

import docstore
from docstore.state_machine import encode_command
from tests.docstore.nasty import Nasty, RandomChooser, safe_repr
from tests.e2e.test_cluster_cli import TIMING, docstore_cmd, free_base_port
from trioraft.client.connection import (
    ClientConnectionError,
    Connection,
    open_client_connection,
)
from trioraft.transport.messages import ClientRequest, ClientResponse

NODES = (1, 2, 3)
_EXCEPTION_LINE = re.compile(r"\b\w*(Error|Exception)\b: ")
CLUSTER_ID = "fuzz"
CLIENT = "docstore"  # the client id the node's ``token`` belongs to
REQUEST_TIMEOUT = 10.0
#: Codes that are never a proper answer (docs/protocol.md: "a bug or an unexpected failure").
BUG_CODES = frozenset({"internal", "error"})

#: (kind, weight) of the requests sent.
KINDS: tuple[tuple[str, int], ...] = (
    ("command", 45),
    ("query", 18),
    ("watch", 5),
    ("cancel", 3),
    ("info", 4),
    ("membership", 8),
    ("transfer_leader", 2),
    ("snapshot", 2),
    ("backup", 2),
    ("session", 6),
    ("kind", 3),
    ("depth", 2),
)

NASTY_IDS: tuple[Any, ...] = (
    0,
    -1,
    2**63,
    2**64 - 1,
    -(2**64),
    True,
    False,
    1.0,
    "1",
    b"\x01",
    None,
    [],
    {},
    [1],
)
NASTY_ADDRESSES: tuple[Any, ...] = (
    "",
    "x",
    ":",
    "127.0.0.1",
    "127.0.0.1:",
    "127.0.0.1:65536",
    "127.0.0.1:-1",
    "a b:1",
    "\x00:1",
    "h:1:2",
    "a" * 300 + ":1",
    b"127.0.0.1:1",
    7,
    None,
    "127.0.0.1:99999999999999999999",
)


@dataclass
class ClassCount:
    sent: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    unsendable: int = 0
    no_answer: int = 0


@dataclass(frozen=True, slots=True)
class Request:
    """One generated request: its class (``kind/label``) and the call it makes."""

    label: str
    call: ClientRequest

    @classmethod
    def of(cls, label: str, kind: str, *fields: Any, **named: Any) -> Request:
        """The rest as :class:`ClientRequest` takes them; its id is 0 (the connection's)."""
        return cls(label, ClientRequest(0, kind, *fields, **named))

    def describe(self) -> str:
        c = self.call
        session = f" session={c.client_id[:40]!r}/{c.sequence}" if c.client_id else ""
        return f"[{self.label}] {c.kind} {safe_repr(c.payload, 240)}{session}"


@dataclass
class FuzzReport:
    seed: int
    requests: int
    counts: dict[str, ClassCount] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    root: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.findings

    def count(self, label: str) -> ClassCount:
        return self.counts.setdefault(label, ClassCount())

    def summary(self) -> str:
        lines = [
            f"docstore fuzz: seed {self.seed}, {self.requests} requests, "
            f"{self.seconds:.1f}s, data in {self.root}",
            f"{'class':<28}{'sent':>6}{'ok':>6}{'unsent':>7}{'silent':>7}  errors by code",
        ]
        for label in sorted(self.counts):
            c = self.counts[label]
            errs = ", ".join(f"{k} {v}" for k, v in c.errors.most_common())
            lines.append(
                f"{label:<28}{c.sent:>6}{c.ok:>6}{c.unsendable:>7}{c.no_answer:>7}  {errs}"
            )
        total = ClassCount()
        for c in self.counts.values():
            total.sent += c.sent
            total.ok += c.ok
            total.unsendable += c.unsendable
            total.no_answer += c.no_answer
            total.errors.update(c.errors)
        lines.append(
            f"{'total':<28}{total.sent:>6}{total.ok:>6}{total.unsendable:>7}"
            f"{total.no_answer:>7}  {sum(total.errors.values())} errors"
        )
        lines += [f"check: {c}" for c in self.checks]
        if self.findings:
            lines.append(f"FOUND {len(self.findings)} problem(s):")
            for text, times in Counter(self.findings).items():  # first seen first
                lines.append(f"  - {text}" + (f" (x{times})" if times > 1 else ""))
        else:
            lines.append("found nothing: every node alive, answering and in agreement")
        return "\n".join(lines)


# ----------------------------------------------------------------------------
# The cluster: three `docstore serve` processes
# ----------------------------------------------------------------------------


class FuzzCluster:
    """Three ``docstore serve`` processes sharing one ``cluster.toml`` in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        base = free_base_port(len(NODES))
        self.addresses = {n: f"127.0.0.1:{base + i}" for i, n in enumerate(NODES)}
        self.token = secrets.token_urlsafe(16)
        self.config = root / "cluster.toml"
        lines = [
            f'cluster_id = "{CLUSTER_ID}"',
            f'secret = "{secrets.token_urlsafe(16)}"',
            f'token = "{self.token}"',
            "",
            "[nodes]",
            *(f'{n} = "{a}"' for n, a in self.addresses.items()),
        ]
        self.config.write_text("\n".join(lines) + "\n")
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def log_path(self, n: int) -> Path:
        return self.root / f"node{n}.log"

    def start(self, n: int) -> None:
        with open(self.log_path(n), "ab") as log:
            self.procs[n] = subprocess.Popen(
                docstore_cmd(
                    "serve",
                    "--config",
                    str(self.config),
                    "--id",
                    str(n),
                    "--snapshot-entries",
                    "100",
                    *TIMING,
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def start_all(self) -> None:
        for n in NODES:
            self.start(n)

    def dead(self) -> list[int]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def tail(self, n: int) -> str:
        """Why node ``n`` stopped, from its log: the critical line, the last exception
        raised and where."""
        try:
            text = self.log_path(n).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        picked = [t for t in text if " CRITICAL " in t][:1]
        for i in range(len(text) - 1, -1, -1):
            if _EXCEPTION_LINE.search(text[i]) and "ExceptionGroup" not in text[i]:
                where = [t for t in text[max(0, i - 6) : i] if "File " in t][-1:]
                picked += [*where, text[i]]
                break
        return " | ".join(line.strip(" |+")[:300] for line in picked) or "(nothing logged)"

    def warnings(self, n: int) -> str:
        """The first warning of node ``n``'s log that is not routine (start, stop)."""
        try:
            text = self.log_path(n).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        routine = ("serving on", "SIGTERM")
        for line in text:
            if " WARNING " in line and not any(r in line for r in routine):
                return line.strip()[:300]
        return ""

    async def settle(self, n: int, limit: float = 3.0) -> None:
        """Give node ``n`` time to exit if it is on its way out."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            await trio.to_thread.run_sync(functools.partial(self.procs[n].wait, timeout=limit))

    def stop_all(self) -> list[str]:
        """SIGTERM every node, then SIGKILL what has not stopped; returns what went wrong."""
        problems = []
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for n, p in self.procs.items():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                problems.append(f"node {n} did not stop within 15s of SIGTERM")
                p.kill()
                p.wait()
        return problems


@contextlib.asynccontextmanager
async def open_links(cluster: FuzzCluster) -> AsyncIterator[Links]:
    async with trio.open_nursery() as nursery:
        links = Links(cluster, nursery)
        try:
            yield links
        finally:
            nursery.cancel_scope.cancel()


class Links:
    """One raw client connection per node, reopened when it breaks."""

    def __init__(self, cluster: FuzzCluster, nursery: trio.Nursery) -> None:
        self.cluster = cluster
        self.nursery = nursery
        self.conns: dict[int, Connection] = {}
        self.leader: int = NODES[0]

    async def _hold(
        self, n: int, task_status: trio.TaskStatus[Connection] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with open_client_connection(
            self.cluster.addresses[n],
            cluster_id=CLUSTER_ID,
            client_id=CLIENT,
            token=self.cluster.token,
            connect_timeout=3.0,
        ) as conn:
            task_status.started(conn)
            await trio.sleep_forever()  # until the run ends; a broken one is replaced

    async def get(self, n: int) -> Connection:
        conn = self.conns.get(n)
        if conn is None or conn.closed:
            conn = await self.nursery.start(self._hold, n)
            self.conns[n] = conn
        return conn

    async def call(self, n: int, req: ClientRequest) -> ClientResponse:
        conn = await self.get(n)
        with trio.fail_after(REQUEST_TIMEOUT):
            return await conn.call(req)

    async def find_leader(self, limit: float = 20.0) -> int:
        with trio.fail_after(limit):
            while True:
                for n in NODES:
                    with contextlib.suppress(Exception, trio.TooSlowError):
                        resp = await self.call(n, ClientRequest(0, "status"))
                        result = resp.result if resp.ok else None
                        if isinstance(result, dict) and result.get("role") == "leader":
                            self.leader = n
                            return n
                await trio.sleep(0.1)


# ----------------------------------------------------------------------------
# Requests
# ----------------------------------------------------------------------------


class RequestMaker:
    """Nasty requests of every kind (see :data:`KINDS`), from one seeded generator."""

    def __init__(
        self,
        rng: random.Random,
        kinds: tuple[str, ...] | None = None,
        skip: tuple[str, ...] = (),
    ) -> None:
        self.rng = rng
        self.skip = skip
        self.gen = Nasty(RandomChooser(rng))
        self.kinds = [(k, w) for k, w in KINDS if kinds is None or k in kinds]
        if not self.kinds:
            raise ValueError(f"no request kinds among {kinds}; choose from {[k for k, _ in KINDS]}")
        self.lane_seq = 0
        self.watch_ids: list[int] = []

    def consistency(self) -> str:
        return self.rng.choice(("linearizable", "lease", "local"))

    def next(self) -> Request:
        kinds, weights = zip(*self.kinds, strict=True)
        while True:
            kind = self.rng.choices(kinds, weights)[0]
            req: Request = getattr(self, "_" + kind)()
            if req.label not in self.skip:
                return req

    def _command(self) -> Request:
        case = self.gen.command()
        return Request.of(f"command/{case.label}", "command", case.value)

    def _query(self) -> Request:
        case = self.gen.query()
        return Request.of(
            f"query/{case.label}", "query", case.value, consistency=self.consistency()
        )

    def _watch(self) -> Request:
        case = self.gen.watch()
        return Request.of(f"watch/{case.label}", "watch", case.value)

    def _cancel(self) -> Request:
        rid: Any = self.rng.choice(
            [*self.watch_ids[-3:], *NASTY_IDS, 2**63 - 1, 10**6] if self.watch_ids else NASTY_IDS
        )
        payload = self.rng.choice(({"request_id": rid}, {"request_id": rid, "x": 1}, rid, None))
        return Request.of("cancel", "cancel", payload)

    def _info(self) -> Request:
        payload = self.rng.choice((None, {}, b"\xff", [1], {"op": "digest"}, 2**64 - 1))
        kind = self.rng.choice(("status", "members", "digest"))
        return Request.of("info", kind, payload, consistency=self.consistency())

    def _membership(self) -> Request:
        # Never a change that could succeed: a fake learner that got promoted
        # would take the quorum away (an admin's mistake, not a bug).
        kind = self.rng.choice(("add_learner", "promote", "remove_node"))
        if kind == "add_learner":
            if self.rng.random() < 0.5:
                nid: Any = self.rng.choice(NASTY_IDS)
                address: Any = self.rng.choice(("127.0.0.1:1", *NASTY_ADDRESSES))
            else:
                nid = self.rng.choice((4, 5, 2**63 - 1, *NODES))
                address = self.rng.choice(NASTY_ADDRESSES)
                if nid in NODES:  # a voter: refused whatever the address
                    address = self.rng.choice(("127.0.0.1:1", *NASTY_ADDRESSES))
            payload: Any = {"id": nid, "address": address}
        elif kind == "promote":
            payload = {"id": self.rng.choice((*NASTY_IDS, *NODES, 4, 77))}
        else:
            payload = {"id": self.rng.choice((*NASTY_IDS, 4, 77, 2**63 - 1))}
        if self.rng.random() < 0.15:
            payload = self.rng.choice((None, [], "x", {b"id": 1}, {"id": 1, "extra": True}))
            if kind == "remove_node":
                payload = self.rng.choice((None, [], "x", {b"id": 1}))
        return Request.of(f"membership/{kind}", kind, payload)

    def _transfer_leader(self) -> Request:
        payload: Any = self.rng.choice(
            (
                {},
                {"target": None},
                {"target": self.rng.choice(NODES)},
                {"target": self.rng.choice((*NASTY_IDS, 4, 99))},
                None,
                [],
            )
        )
        return Request.of("transfer_leader", "transfer_leader", payload)

    def _snapshot(self) -> Request:
        return Request.of("snapshot", "snapshot", self.rng.choice((None, {}, {"x": 1}, b"\x00")))

    def _backup(self) -> Request:
        return Request.of(
            "backup", "backup", self.rng.choice((None, {}, [1])), consistency=self.consistency()
        )

    def _session(self) -> Request:
        """A plausible command with a nasty session (client id and sequence)."""
        case = self.gen.command("valid")
        self.lane_seq += 1
        client_id = self.rng.choice(
            ("lane", "x" * 256, "é" * 256, "/", "a/b/c", "\x00", " ", "lane")
        )
        sequence = self.rng.choice((self.lane_seq, 0, 2**63 - 1, 1, self.lane_seq))
        return Request.of("command/session", "command", case.value, client_id, sequence)

    def _kind(self) -> Request:
        """Kinds the docstore service does not offer, the generic ones included."""
        kind = self.rng.choice(("propose", "read", "nope", "command.x", "a" * 64))
        payload = self.rng.choice(
            (
                b"\xa1bop\xa0",  # CBOR bytes: what ``propose`` would put in the log
                encode_command({"op": "expire", "coll": "c"}),
                {"op": "expire", "coll": []},
                None,
            )
        )
        return Request.of(f"kind/{kind[:12]}", kind, payload)

    def _depth(self) -> Request:
        """A document as deep as the limits allow, written then read back."""
        depth = self.rng.choice((30, 31, 32))
        v: Any = 1
        for _ in range(depth):
            v = {"d": v}
        if self.rng.random() < 0.5:
            cmd = {"op": "put", "coll": "deep", "key": f"k{depth}", "doc": {"d": v}}
            return Request.of("depth/put", "command", cmd)
        q = {"op": self.rng.choice(("get", "find")), "coll": "deep"}
        q.update({"key": f"k{depth}"} if q["op"] == "get" else {})
        return Request.of("depth/read", "query", q, consistency="linearizable")

    def watch_write(self, payload: Any) -> list[Request]:
        """Writes into the watched collection that reach its filter."""
        coll = payload.get("coll") if isinstance(payload, dict) else None
        coll = coll if isinstance(coll, str) and coll else "c"
        key = f"w{self.rng.randrange(5)}"
        doc = {"arr": [1, 2, [3]], "n": 1, "o": {"arr": [[1], 2], "x": 1}, "s": "x"}
        return [
            Request.of(
                "watch/write", "command", {"op": "put", "coll": coll, "key": key, "doc": doc}
            ),
            Request.of(
                "watch/write",
                "command",
                {"op": "patch", "coll": coll, "key": key, "ops": {"$inc": {"n": 1}}},
            ),
        ]


# ----------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FuzzOptions:
    seed: int | None = None
    requests: int = 2000
    root: str | None = None
    progress: bool = False
    #: Only these request kinds (names of :data:`KINDS`); None: all.
    kinds: tuple[str, ...] | None = None
    #: Request classes not to send (``command/ttl``...): to look past a known bug.
    skip: tuple[str, ...] = ()


@dataclass
class Fuzzer:
    cluster: FuzzCluster
    links: Links
    report: FuzzReport
    maker: RequestMaker
    #: The last requests sent: a node dies some time after the one that killed it.
    recent: deque[Request] = field(default_factory=lambda: deque(maxlen=4))
    dead: set[int] = field(default_factory=set)
    unreachable: set[int] = field(default_factory=set)
    silent_in_a_row: int = 0

    @property
    def rng(self) -> random.Random:
        """One seeded generator picks the requests and the nodes they go to."""
        return self.maker.rng

    def finding(self, text: str) -> None:
        self.report.findings.append(text)

    def check_alive(self, when: str) -> None:
        for n in self.cluster.dead():
            if n in self.dead:
                continue
            self.dead.add(n)
            rc = self.cluster.procs[n].returncode
            last = "; ".join(r.describe() for r in reversed(self.recent)) or "-"
            self.finding(
                f"node {n} died (exit {rc}) {when}; log: {self.cluster.tail(n)}; "
                f"the last requests, newest first: {last}"
            )

    def target(self) -> int:
        alive = [n for n in NODES if n not in self.dead]
        if self.rng.random() < 0.8 and self.links.leader in alive:
            return self.links.leader
        return self.rng.choice(alive or list(NODES))

    def record(self, req: Request, resp: ClientResponse) -> None:
        c = self.report.count(req.label)
        if not resp.ok:
            code = resp.error_code
            c.errors[code] += 1
            if code == "not_leader" and resp.leader_id is not None:
                self.links.leader = resp.leader_id
            if code in BUG_CODES:
                self.finding(f"{code} answer ({resp.error_message[:200]}) to {req.describe()}")
            return
        result = resp.result
        if req.call.kind == "command" and isinstance(result, dict) and result.get("ok") is False:
            code = str(result.get("error"))
            c.errors[code] += 1
            if code in BUG_CODES:
                msg = str(result.get("message"))[:300]
                self.finding(f"{code} result ({msg}) to {req.describe()}")
            return
        c.ok += 1

    async def send(self, req: Request, node: int | None = None) -> ClientResponse | None:
        c = self.report.count(req.label)
        c.sent += 1
        n = self.target() if node is None else node
        try:
            conn = await self.links.get(n)
        except (ClientConnectionError, OSError) as exc:
            c.no_answer += 1
            self.silent_in_a_row += 1
            await self.cluster.settle(n)
            self.check_alive(f"before request {req.describe()}")
            if n not in self.dead and n not in self.unreachable:
                self.unreachable.add(n)
                self.finding(f"node {n} is alive but cannot be reached: {exc}")
            return None
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                resp = await conn.call(req.call)
        except (ValueError, TypeError):  # the codec refuses it (the ProtocolError family)
            c.unsendable += 1
            return None
        except (ClientConnectionError, trio.TooSlowError):
            c.no_answer += 1
            self.silent_in_a_row += 1
            return None
        self.silent_in_a_row = 0
        self.record(req, resp)
        return resp

    async def watch(self, req: Request, nursery: trio.Nursery) -> None:
        """Open the watch on the leader; keep draining it; then write what it filters."""
        c = self.report.count(req.label)
        c.sent += 1
        n = self.links.leader
        try:
            conn = await self.links.get(n)
        except (ClientConnectionError, OSError):
            c.no_answer += 1
            return
        first: trio.MemorySendChannel[ClientResponse | None]
        first, first_recv = trio.open_memory_channel[ClientResponse | None](1)

        async def drain() -> None:
            sent_first = False
            try:
                async with conn.stream(req.call, buffer=4096) as responses:
                    self.maker.watch_ids.append(conn._next_id)
                    async for resp in responses:
                        if not sent_first:
                            sent_first = True
                            first.send_nowait(resp)
                        if not resp.ok:
                            return
            except (ValueError, TypeError):
                c.unsendable += 1
            except ClientConnectionError:
                pass
            finally:
                if not sent_first:
                    first.send_nowait(None)

        nursery.start_soon(drain)
        with trio.move_on_after(REQUEST_TIMEOUT):
            resp = await first_recv.receive()
            if resp is not None:
                self.record(req, resp)
                if resp.ok:
                    for w in self.maker.watch_write(req.call.payload):
                        await self.send(w, node=n)
                return
            return
        c.no_answer += 1

    async def backup(self, req: Request) -> None:
        c = self.report.count(req.label)
        c.sent += 1
        try:
            conn = await self.links.get(self.links.leader)
            with trio.fail_after(2 * REQUEST_TIMEOUT):
                async with conn.stream(req.call, buffer=64) as responses:
                    async for resp in responses:
                        done = isinstance(resp.result, dict) and resp.result.get("done") is True
                        if not resp.ok or done:
                            self.record(req, resp)
                            return
        except (ValueError, TypeError):
            c.unsendable += 1
            return
        except (ClientConnectionError, trio.TooSlowError):
            pass
        c.no_answer += 1

    async def run(self, count: int, progress: bool) -> None:
        async with trio.open_nursery() as watches:
            for i in range(count):
                req = self.maker.next()
                self.recent.append(req)
                if req.call.kind == "watch":
                    await self.watch(req, watches)
                elif req.call.kind == "backup":
                    await self.backup(req)
                else:
                    await self.send(req)
                self.check_alive(f"by request #{i + 1}")
                if len(self.dead) == len(NODES):
                    self.finding(f"every node died; stopped after {i + 1} requests")
                    break
                if self.silent_in_a_row >= 5:
                    logs = "; ".join(f"node {n}: {self.cluster.warnings(n) or '-'}" for n in NODES)
                    last = "; ".join(r.describe() for r in reversed(self.recent))
                    self.finding(
                        f"no answer to 5 requests in a row; stopped after {i + 1}; first "
                        f"warnings: {logs}; the last requests, newest first: {last}"
                    )
                    break
                if progress and i % 200 == 199:
                    print(f"  {i + 1} requests sent", flush=True)
            # Cancel what is still open (the cancel kind, with real ids), then stop draining.
            if self.links.leader not in self.dead:
                for rid in self.maker.watch_ids:
                    cancel = Request.of("cancel", "cancel", {"request_id": rid})
                    await self.send(cancel, self.links.leader)
            watches.cancel_scope.cancel()


async def digests_agree(links: Links, limit: float = 15.0) -> tuple[bool, str]:
    """Poll every node's ``digest`` until all report the same applied index; compare."""
    last = "no answer"
    with trio.move_on_after(limit):
        while True:
            answers: dict[int, Any] = {}
            for n in NODES:
                with contextlib.suppress(Exception, trio.TooSlowError):
                    resp = await links.call(n, ClientRequest(0, "digest", consistency="local"))
                    if resp.ok:
                        answers[n] = resp.result
            indexes = {a.get("applied_index") for a in answers.values()}
            if len(answers) == len(NODES) and len(indexes) == 1:
                digests = {a.get("digest") for a in answers.values()}
                if len(digests) == 1:
                    return True, f"digests agree at applied index {indexes.pop()}"
                return False, f"digests differ at one applied index: {answers}"
            last = f"{answers}"
            await trio.sleep(0.2)
    return False, f"nodes did not catch up within {limit}s: {safe_repr(last, 400)}"


async def normal_use(cluster: FuzzCluster, tag: str) -> str | None:
    """A put and a get through ``docstore.connect``; None if fine, else what failed."""
    try:
        async with docstore.connect(
            list(cluster.addresses.values()),
            token=cluster.token,
            cluster_id=CLUSTER_ID,
            call_timeout=10,
        ) as db:
            coll = db.collection("fuzz_check")
            await coll.put(tag, {"tag": tag, "n": 1})
            doc = await coll.get(tag)
            if not doc or doc.get("tag") != tag:
                return f"put then get of {tag!r} read {doc!r}"
            m = await db.members()
            if sorted(m["voters"]) != list(NODES) or m["learners"]:
                return f"membership changed: {m}"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


async def run_fuzz(opts: FuzzOptions) -> FuzzReport:
    seed = opts.seed if opts.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    root = Path(opts.root or tempfile.mkdtemp(prefix="docstore-fuzz-"))
    report = FuzzReport(seed, opts.requests, root=str(root))
    started = time.monotonic()
    cluster = FuzzCluster(root)
    try:
        cluster.start_all()
        async with open_links(cluster) as links:
            try:
                await links.find_leader()
            except trio.TooSlowError:
                report.findings.append(f"no leader at start; logs: {cluster.tail(1)}")
                return report
            maker = RequestMaker(rng, opts.kinds, opts.skip)
            fuzzer = Fuzzer(cluster=cluster, links=links, report=report, maker=maker)
            await fuzzer.run(opts.requests, opts.progress)
            fuzzer.check_alive("after the last request")
            if len(cluster.dead()) < len(NODES):
                await after_run(cluster, links, report, "after the requests")
                fuzzer.check_alive("during the checks after the requests")
        report.findings += cluster.stop_all()
        for n in NODES:
            rc = cluster.procs[n].returncode
            if rc not in (0, -signal.SIGTERM):
                report.checks.append(f"node {n} exited with {rc} at stop")
        # Restart: every committed entry is replayed (or restored) by every node.
        cluster.start_all()
        async with open_links(cluster) as links:
            try:
                await links.find_leader()
                report.checks.append("restart: a leader was elected")
            except trio.TooSlowError:
                tails = "; ".join(f"node {n}: {cluster.tail(n)}" for n in NODES)
                report.findings.append(f"no leader after the restart; {tails}")
            await trio.sleep(0.5)
            reported: set[int] = set()
            for n in cluster.dead():
                reported.add(n)
                report.findings.append(f"node {n} died at restart; log: {cluster.tail(n)}")
            if len(cluster.dead()) < len(NODES):
                await after_run(cluster, links, report, "after the restart")
            for n in set(cluster.dead()) - reported:
                report.findings.append(
                    f"node {n} died soon after the restart; log: {cluster.tail(n)}"
                )
    finally:
        cluster.stop_all()
        report.seconds = time.monotonic() - started
    return report


async def after_run(cluster: FuzzCluster, links: Links, report: FuzzReport, when: str) -> None:
    problem = await normal_use(cluster, f"check-{when.replace(' ', '-')}")
    if problem:
        report.findings.append(f"{when}: normal use failed: {problem}")
    else:
        report.checks.append(f"{when}: put + get + members ok")
    agree, detail = await digests_agree(links)
    (report.checks if agree else report.findings).append(f"{when}: {detail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m tests.chaos.docstore_fuzz", description=__doc__)
    p.add_argument("--seed", type=int, help="replay a run (default: random, printed)")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--dir", help="keep the cluster's data and logs here")
    p.add_argument(
        "--kinds",
        help=f"only these request kinds, comma-separated ({','.join(k for k, _ in KINDS)})",
    )
    p.add_argument("--skip", help="request classes not to send, comma-separated (command/ttl)")
    args = p.parse_args(argv)
    kinds = tuple(args.kinds.split(",")) if args.kinds else None
    skip = tuple(args.skip.split(",")) if args.skip else ()
    opts = FuzzOptions(
        seed=args.seed,
        requests=args.requests,
        root=args.dir,
        progress=True,
        kinds=kinds,
        skip=skip,
    )
    if opts.seed is None:
        opts = dataclasses.replace(opts, seed=random.randrange(2**32))
    print(f"docstore fuzz: seed {opts.seed}, {opts.requests} requests", flush=True)
    report = trio.run(run_fuzz, opts)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
