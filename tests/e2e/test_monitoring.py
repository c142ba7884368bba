"""Watching a running cluster: each node's HTTP port (docstore/monitor.py), end to end.

Real ``docstore cluster`` and ``docstore serve`` processes; the status page
runs in headless Chromium (Debian's ``chromium`` package; ``.ci/run``
installs it), driven over the DevTools protocol with trio-websocket.  A
missing browser fails the page test: it is never skipped.

``UPDATE_SCREENSHOT=1`` makes the page test save its screenshot as
docs/status-page.png.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import trio
import trio_websocket

import docstore
from docstore.monitor import MAX_HEAD
from tests.e2e.test_cluster_cli import TIMING, ClusterProcess, docstore_cmd, free_base_port

HTTP_OFFSET = 1000  # docstore.supervisor.HTTP_PORT_OFFSET, written out: the test pins it
REPO = pathlib.Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ HTTP


def http_raw(port: int, request: bytes, timeout: float = 10) -> bytes:
    """Send ``request`` as is and read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        chunks: list[bytes] = []
        while True:
            data = s.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    raw = http_raw(port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return parse_response(raw)


def parse_response(raw: bytes, *, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no end of head in {raw[:200]!r}"
    lines = head.decode("ascii").split("\r\n")
    version, status, _reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if head_only:
        assert body == b""
    else:
        assert int(headers["content-length"]) == len(body), headers
    assert headers["connection"] == "close"
    return int(status), headers, body


# ------------------------------------------------- Prometheus text format

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def parse_prometheus(text: str) -> dict[str, dict[str, Any]]:
    """Families by name: ``{"type", "help", "samples": [(name, labels, value)]}``.

    Strict about what the text format 0.0.4 requires: HELP and TYPE before a
    family's samples, each family once, samples named after their family
    (``_bucket``/``_sum``/``_count`` for histograms), label values escaped,
    numbers parseable, histogram buckets cumulative up to ``+Inf`` = count.
    """
    assert text.endswith("\n")
    families: dict[str, dict[str, Any]] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name not in families, f"{name} twice"
            families[name] = {"help": help_text, "type": None, "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name == current and kind in ("counter", "gauge", "histogram", "untyped"), line
            families[name]["type"] = kind
        else:
            m = _SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name, _, raw_labels, value = m.groups()
            assert current is not None and families[current]["type"], line
            kind = families[current]["type"]
            allowed = {current}
            if kind == "histogram":
                allowed = {current + s for s in ("_bucket", "_sum", "_count")}
            assert name in allowed, f"{name} in family {current}"
            labels: dict[str, str] = {}
            rest = raw_labels or ""
            while rest:
                lm = _LABEL.match(rest)
                assert lm, f"bad labels in {line!r}"
                labels[lm.group(1)] = (
                    lm.group(2).replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
                )
                rest = rest[lm.end() :]
            families[current]["samples"].append((name, labels, float(value)))
    for name, fam in families.items():
        if fam["type"] != "histogram":
            continue
        series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
        counts: dict[tuple[tuple[str, str], ...], float] = {}
        for sname, labels, value in fam["samples"]:
            key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
            if sname.endswith("_bucket"):
                series.setdefault(key, []).append((float(labels["le"]), value))
            elif sname.endswith("_count"):
                counts[key] = value
        for key, buckets in series.items():
            les = [le for le, _ in buckets]
            assert les == sorted(les) and les[-1] == float("inf"), (name, les)
            values = [v for _, v in buckets]
            assert values == sorted(values), f"{name} buckets not cumulative"
            assert values[-1] == counts[key], f"{name}: +Inf bucket != count"
    return families


FAMILIES = {
    "trioraft_role": "gauge",
    "trioraft_term": "gauge",
    "trioraft_commit_index": "gauge",
    "trioraft_applied_index": "gauge",
    "trioraft_follower_match_index": "gauge",
    "trioraft_follower_lag_entries": "gauge",
    "trioraft_proposals_committed_total": "counter",
    "trioraft_proposals_dropped_total": "counter",
    "trioraft_proposal_duration_seconds": "histogram",
    "trioraft_read_duration_seconds": "histogram",
    "trioraft_log_fsync_duration_seconds": "histogram",
    "trioraft_elections_total": "counter",
    "trioraft_leader_changes_total": "counter",
    "trioraft_snapshots_total": "counter",
    "trioraft_snapshot_size_bytes": "gauge",
    "trioraft_client_connections": "gauge",
    "trioraft_transport_bytes_total": "counter",
}


def value(fams: dict[str, dict[str, Any]], name: str, **labels: str) -> float:
    family = name if name in fams else re.sub(r"_(count|sum|bucket)$", "", name)
    for sname, lab, v in fams[family]["samples"]:
        if sname == name and all(lab.get(k) == x for k, x in labels.items()):
            return float(v)
    raise AssertionError(f"no {name} {labels}")


def test_prometheus_parser_refuses_what_the_format_forbids() -> None:
    ok = "# HELP a x\n# TYPE a gauge\na 1\n"
    assert parse_prometheus(ok)["a"]["samples"] == [("a", {}, 1.0)]
    for bad in (
        "a 1\n",  # no HELP/TYPE
        "# HELP a x\n# TYPE a gauge\nb 1\n",  # sample outside its family
        "# HELP h x\n# TYPE h histogram\n"
        'h_bucket{le="1.0"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',  # not cumulative
        '# HELP a x\n# TYPE a gauge\na{l="unterminated} 1\n',
    ):
        with pytest.raises(AssertionError):
            parse_prometheus(bad)


# -------------------------------------------------------------- clusters


@contextlib.contextmanager
def running_cluster(tmp_path: pathlib.Path) -> Iterator[tuple[ClusterProcess, int]]:
    base = free_base_port(also_at=HTTP_OFFSET)
    c = ClusterProcess(tmp_path / "c", base)
    try:
        c.wait_ready()
        yield c, base
    finally:
        c.stop()


def wait_until(check: Any, limit: float = 20, what: str = "") -> Any:
    deadline = time.monotonic() + limit
    while True:
        try:
            got = check()
        except (OSError, AssertionError, KeyError):
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.1)


def leader_of(http_ports: list[int]) -> int:
    for port in http_ports:
        with contextlib.suppress(OSError):
            status, _, body = http_get(port, "/status")
            st = json.loads(body)
            if status == 200 and st["role"] == "leader":
                return int(st["node_id"])
    raise AssertionError("no leader")


def test_metrics_health_ready_and_status_of_a_running_cluster(tmp_path: pathlib.Path) -> None:
    with running_cluster(tmp_path) as (c, base):
        out = (tmp_path / "c.out").read_text()
        ports = [base + HTTP_OFFSET + i for i in range(3)]
        for p in ports:
            assert f"http://127.0.0.1:{p}/" in out  # `docstore cluster` prints the URLs
        for p in ports:
            assert http_get(p, "/healthz")[:1] == (200,)
            wait_until(lambda p=p: http_get(p, "/readyz")[0] == 200, what=f"{p} ready")
            status, _, body = http_get(p, "/readyz")
            assert b"is ready" in body

        async def write_some() -> None:
            async with docstore.connect(c.addresses, token=c.token) as db:
                coll = db.collection("m")
                for i in range(10):
                    await coll.put(f"k{i}", {"i": i})
                await coll.get("k1")

        trio.run(write_some)
        leader = leader_of(ports)
        lport = base + HTTP_OFFSET + leader - 1
        status, headers, body = http_get(lport, "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        fams = parse_prometheus(body.decode())
        for name, kind in FAMILIES.items():
            assert fams[name]["type"] == kind, name
        node = str(leader)
        assert value(fams, "trioraft_role", node=node, role="leader") == 1
        assert value(fams, "trioraft_proposals_committed_total", node=node) >= 10
        assert value(fams, "trioraft_proposal_duration_seconds_count", node=node) >= 10
        assert value(fams, "trioraft_log_fsync_duration_seconds_count", node=node) >= 10
        assert value(fams, "trioraft_elections_total", node=node) >= 1
        assert value(fams, "trioraft_transport_bytes_total", direction="out", link="peer") > 0
        assert value(fams, "trioraft_transport_bytes_total", direction="in", link="client") > 0
        peers = {lab["peer"] for _, lab, _ in fams["trioraft_follower_lag_entries"]["samples"]}
        assert peers == {str(n) for n in (1, 2, 3)} - {node}

        # /status is this node's entry of `docstore status --json`.
        cli = subprocess.run(
            docstore_cmd("status", "--json", "--dir", str(c.dir)),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        entries = {e["node_id"]: e for e in json.loads(cli.stdout)}
        for n, p in enumerate(ports, 1):
            status, headers, body = http_get(p, "/status")
            mine = json.loads(body)
            assert status == 200 and headers["access-control-allow-origin"] == "*"
            assert set(mine) == set(entries[n]) and mine["node_id"] == n
            for key in ("address", "voters", "leader_id", "term"):
                assert mine[key] == entries[n][key], key
        status, _, body = http_get(ports[0], "/cluster")
        assert json.loads(body)["nodes"] == [
            {"id": n, "http": f"127.0.0.1:{p}", "member": True} for n, p in enumerate(ports, 1)
        ]
        status, headers, body = http_get(ports[0], "/")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b'id="leader"' in body and b"<script>" in body
        assert b"<script src" not in body and b"<link" not in body  # nothing from elsewhere


def test_bad_requests_get_an_error_and_the_node_serves_on(tmp_path: pathlib.Path) -> None:
    with running_cluster(tmp_path) as (c, base):
        port = base + HTTP_OFFSET
        wait_until(lambda: http_get(port, "/readyz")[0] == 200, what="ready")
        cases = [
            (b"\x00\xff garbage\r\n\r\n", 400),
            (b"GET /\r\n\r\n", 400),  # HTTP/0.9 form
            (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
            (b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # absolute form
            (b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", 400),
            (b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 405),
            (b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
            (b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404),
            (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * (2 * MAX_HEAD) + b"\r\n\r\n", 431),
            (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 100 + b"Host: x\r\n\r\n", 431),
            (b"GET / HTTP/1.1\r\nHost: x\r\n", 400),  # then half-close: the head never ends
        ]
        for request, expected in cases:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(request)
                s.shutdown(socket.SHUT_WR)
                raw = b""
                while data := s.recv(65536):
                    raw += data
            status, headers, _ = parse_response(raw)
            assert status == expected, (request[:60], raw[:100])
            if status == 405:
                assert headers["allow"] == "GET, HEAD"
        # A client that connects and leaves, and one that sends half a line and leaves.
        for junk in (b"", b"GE"):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(junk)
        status, headers, body = parse_response(
            http_raw(port, b"HEAD /healthz HTTP/1.0\r\n\r\n"), head_only=True
        )
        assert status == 200 and body == b"" and headers["content-length"] == "3"
        assert http_get(port, "/healthz")[0] == 200
        assert http_get(port, "/readyz")[0] == 200
        assert c.proc.poll() is None and "exited" not in (tmp_path / "c.out").read_text()


def test_readyz_is_503_while_a_node_knows_no_leader(tmp_path: pathlib.Path) -> None:
    base = free_base_port(also_at=HTTP_OFFSET)
    http = base + HTTP_OFFSET
    log = open(tmp_path / "node1.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        docstore_cmd(
            "serve",
            "--id",
            "1",
            "--listen",
            f"127.0.0.1:{base}",
            "--peer",
            f"2=127.0.0.1:{base + 1}",
            "--peer",
            f"3=127.0.0.1:{base + 2}",
            "--data",
            str(tmp_path / "n1"),
            "--secret",
            "s",
            "--http",
            f"127.0.0.1:{http}",
            *TIMING,
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: http_get(http, "/healthz")[0] == 200, what="healthz")
        time.sleep(1.0)  # several election timeouts: alone, it never wins
        status, _, body = http_get(http, "/readyz")
        assert status == 503 and b"knows no leader" in body, body
        fams = parse_prometheus(http_get(http, "/metrics")[2].decode())
        assert value(fams, "trioraft_role", node="1", role="leader") == 0
        assert value(fams, "trioraft_leader_id", node="1") == 0
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert "status page http://127.0.0.1:" in (tmp_path / "node1.log").read_text()


def test_readyz_turns_503_on_a_node_cut_off_from_the_others_and_back(
    tmp_path: pathlib.Path,
) -> None:
    with running_cluster(tmp_path) as (c, base):
        ports = [base + HTTP_OFFSET + i for i in range(3)]
        leader = leader_of(ports)
        watched = next(n for n in (1, 2, 3) if n != leader)
        port = ports[watched - 1]
        wait_until(lambda: http_get(port, "/readyz")[0] == 200, what="ready")
        others = [c.pid(n) for n in (1, 2, 3) if n != watched]
        for pid in others:
            os.kill(pid, signal.SIGSTOP)  # frozen, not dead: the node is cut off
        try:
            body = wait_until(
                lambda: (r := http_get(port, "/readyz"))[0] == 503 and r[2], what="503"
            )
            assert b"knows no leader" in body
        finally:
            for pid in others:
                os.kill(pid, signal.SIGCONT)
        wait_until(lambda: http_get(port, "/readyz")[0] == 200, what="ready again")


def test_a_taken_http_port_leaves_that_node_without_http_and_the_cluster_up(
    tmp_path: pathlib.Path,
) -> None:
    base = free_base_port(also_at=HTTP_OFFSET)
    taken = base + HTTP_OFFSET
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", taken))
        blocker.listen()
        c = ClusterProcess(tmp_path / "c", base)
        try:
            c.wait_ready()
            out = (tmp_path / "c.out").read_text()
            assert f"127.0.0.1:{taken} is in use: node 1 serves no HTTP" in out
            _, _, body = http_get(taken + 1, "/cluster")
            assert json.loads(body)["nodes"][0] == {"id": 1, "http": None, "member": True}
            wait_until(lambda: http_get(taken + 1, "/readyz")[0] == 200, what="node 2 ready")
        finally:
            c.stop()


# ---------------------------------------------------------- the page, in Chromium


class DevTools:
    """A minimal Chrome DevTools protocol client: calls, in order; events are ignored."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.last = 0

    async def call(self, method: str, session: str | None = None, **params: Any) -> Any:
        self.last += 1
        msg: dict[str, Any] = {"id": self.last, "method": method, "params": params}
        if session is not None:
            msg["sessionId"] = session
        await self.ws.send_message(json.dumps(msg))
        while True:
            reply = json.loads(await self.ws.get_message())
            if reply.get("id") == self.last:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    async def evaluate(self, session: str, expression: str) -> Any:
        r = await self.call("Runtime.evaluate", session, expression=expression, returnByValue=True)
        return r["result"].get("value")


@contextlib.asynccontextmanager
async def chromium(tmp_path: pathlib.Path) -> AsyncIterator[DevTools]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail(
            "chromium is not installed: `apt-get install -y chromium` (.ci/run does it); "
            "the status page test needs a real browser"
        )
    profile = tmp_path / "chromium-profile"
    # A real file for the child's output: read back when Chromium fails to start.
    log = open(tmp_path / "chromium.log", "wb")  # noqa: SIM115, ASYNC230
    proc = await trio.lowlevel.open_process(
        [
            exe,
            "--headless",
            "--no-sandbox",  # tests may run as root
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--window-size=1040,600",
            "about:blank",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        with trio.fail_after(30):
            while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
                if proc.poll() is not None:
                    raise AssertionError(
                        f"chromium exited: {(tmp_path / 'chromium.log').read_text()[-2000:]}"
                    )
                await trio.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        async with trio_websocket.open_websocket_url(
            f"ws://127.0.0.1:{port}{path}", max_message_size=64 * 1024 * 1024
        ) as ws:
            yield DevTools(ws)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with trio.CancelScope(shield=True):
            await proc.wait()
        log.close()


async def eventually(
    probe: Callable[[], Awaitable[str]], done: Callable[[str], bool], limit: float
) -> str:
    """Ask ``probe`` every 0.2 s until ``done`` accepts its answer; fail after ``limit`` s."""
    with trio.fail_after(limit):
        while True:
            got = await probe()
            if done(got):
                return got
            await trio.sleep(0.2)


@pytest.mark.slow
async def test_status_page_shows_the_new_leader_after_the_leader_is_killed(
    tmp_path: pathlib.Path,
) -> None:
    with running_cluster(tmp_path) as (c, base):
        ports = [base + HTTP_OFFSET + i for i in range(3)]
        old = leader_of(ports)
        page_node = 1 if old != 1 else 2
        url = f"http://127.0.0.1:{ports[page_node - 1]}/"
        async with docstore.connect(c.addresses, token=c.token) as db:
            for i in range(20):
                await db.collection("w").put(f"k{i}", {"i": i})
        async with chromium(tmp_path) as cdp:
            target = (await cdp.call("Target.createTarget", url=url))["targetId"]
            session = (await cdp.call("Target.attachToTarget", targetId=target, flatten=True))[
                "sessionId"
            ]

            async def shown_leader() -> str:
                got = await cdp.evaluate(
                    session, "(document.getElementById('leader') || {dataset: {}}).dataset.id"
                )
                return str(got or "")

            async def row_role(n: int) -> str:
                got = await cdp.evaluate(
                    session,
                    f"(document.querySelector('tr[data-node=\"{n}\"] .role') || {{}}).textContent",
                )
                return str(got or "")

            await eventually(shown_leader, lambda got: got == str(old), 20)
            marker = await cdp.evaluate(session, "window.__same_page = 1")
            assert marker == 1

            c.sigkill(old)
            new = await eventually(shown_leader, lambda got: got not in ("", str(old)), 30)
            await eventually(lambda: row_role(old), lambda got: got == "unreachable", 10)
            assert int(new) != old
            # The same document all along: no reload.
            assert await cdp.evaluate(session, "window.__same_page") == 1
            assert await row_role(int(new)) == "leader"
            assert leader_of([p for i, p in enumerate(ports, 1) if i != old]) == int(new)
            await trio.sleep(2.5)  # let the charts take in the change
            shot = await cdp.call("Page.captureScreenshot", session, format="png")
            png = base64.b64decode(shot["data"])
            assert png.startswith(b"\x89PNG")
            (tmp_path / "status-page.png").write_bytes(png)
            if os.environ.get("UPDATE_SCREENSHOT"):
                (REPO / "docs" / "status-page.png").write_bytes(png)
