"""What every system of the cluster benchmark shares: results, percentiles, ports, processes."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import trio

#: bench/: the node scripts live here.
BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


CLUSTER_ID = "bench"
CLIENT_ID = "bench"
TOKEN = b"bench-token"
KEYS = 1000

# Targets from the issue (2 cores, 3 nodes, every commit fsynced).
TARGETS = {
    "single client writes/s": 1300.0,
    "256 clients writes/s": 15000.0,
    "256 clients p99 ms (at most)": 50.0,
    "embedded writes/s": 30000.0,
    "linearizable reads/s": 30000.0,
}


@dataclass
class Result:
    system: str
    mode: str  # remote / embedded
    op: str  # put / linearizable / lease / local
    clients: int
    count: int
    elapsed: float
    errors: int
    p50: float
    p99: float
    p999: float

    @property
    def rate(self) -> float:
        return self.count / self.elapsed if self.elapsed > 0 else 0.0


def pct(lat_ms: list[float], q: float) -> float:
    if not lat_ms:
        return float("nan")
    return lat_ms[min(len(lat_ms) - 1, int(q * len(lat_ms)))]


def make_result(
    system: str, mode: str, op: str, clients: int, lat_ms: list[float], elapsed: float, errors: int
) -> Result:
    lat_ms = sorted(lat_ms)
    return Result(
        system,
        mode,
        op,
        clients,
        len(lat_ms),
        elapsed,
        errors,
        pct(lat_ms, 0.5),
        pct(lat_ms, 0.99),
        pct(lat_ms, 0.999),
    )


async def closed_loop(
    clients: int, seconds: float, max_requests: int, request: Callable[[int, int], Awaitable[bool]]
) -> tuple[list[float], float, int]:
    """``clients`` workers, each with one request in flight, for ``seconds``.

    Worker ``w`` makes requests ``i = w, w + clients, w + 2 * clients, ...``
    by awaiting ``request(w, i)``, which says whether it succeeded; all stop
    early once ``max_requests`` (if not 0) have been issued.  Returns the
    successful requests' latencies in milliseconds, the seconds elapsed and
    the number that failed.
    """
    lat: list[float] = []
    errors = 0
    issued = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def worker(w: int) -> None:
        nonlocal errors, issued
        i = w
        while time.perf_counter() < deadline and not (max_requests and issued >= max_requests):
            issued += 1
            t = time.perf_counter()
            ok = await request(w, i)
            done = time.perf_counter()
            if ok:
                lat.append((done - t) * 1000)
            else:
                errors += 1
            i += clients

    async with trio.open_nursery() as nursery:
        for w in range(clients):
            nursery.start_soon(worker, w)
    return lat, time.perf_counter() - start, errors


def embedded_answer(lat_seconds: list[float], elapsed: float, errors: int) -> dict[str, Any]:
    """A node script's answer to a load run inside its process.

    ``{"count", "elapsed", "errors", "lat_ms"}``: ``lat_ms`` the sorted
    latencies in milliseconds, rounded to microseconds.
    """
    lat = sorted(lat_seconds)
    return {
        "count": len(lat),
        "elapsed": elapsed,
        "errors": errors,
        "lat_ms": [round(x * 1000, 3) for x in lat],
    }


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def stop_processes(procs: list[subprocess.Popen[Any]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextlib.contextmanager
def running(cluster: Any) -> Iterator[Any]:
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) // 1024} MiB RAM"
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {mem}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )
