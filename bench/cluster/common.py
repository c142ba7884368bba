"""What every system of the cluster benchmark shares: results, percentiles, ports, processes."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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
