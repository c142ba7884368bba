"""PySyncObj: three bench/_pysyncobj_node.py processes, the load in the leader's process."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench.cluster.common import BENCH, Result, free_ports, make_result, stop_processes


class PySyncObjCluster:
    def __init__(self, root: str) -> None:
        self.root = os.path.join(root, "pysyncobj")
        ports = free_ports(3)
        self.addresses = [f"127.0.0.1:{p}" for p in ports]
        self.procs: list[subprocess.Popen[str]] = []
        self.leader: subprocess.Popen[str] | None = None

    def start(self) -> None:
        for i, addr in enumerate(self.addresses):
            data = os.path.join(self.root, f"n{i + 1}")
            os.makedirs(data, exist_ok=True)
            partners = [a for a in self.addresses if a != addr]
            cmd = [sys.executable, os.path.join(BENCH, "_pysyncobj_node.py"), addr, *partners]
            cmd += ["--data", data]
            err = open(os.path.join(self.root, f"n{i + 1}.log"), "wb")  # noqa: SIM115
            p = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
            )
            self.procs.append(p)
        for p in self.procs:
            self._read(p)  # "started"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for p in self.procs:
                st = self.ask(p, {"cmd": "status"})
                if st["leader"] and st["ready"]:
                    self.leader = p
                    return
            time.sleep(0.2)
        raise RuntimeError("PySyncObj elected no leader in 60 s")

    def _read(self, p: subprocess.Popen[str]) -> Any:
        assert p.stdout is not None
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"a PySyncObj node exited; see {self.root}")
        return json.loads(line)

    def ask(self, p: subprocess.Popen[str], req: dict[str, Any]) -> Any:
        assert p.stdin is not None
        p.stdin.write(json.dumps(req) + "\n")
        p.stdin.flush()
        return self._read(p)

    def measure(self, clients: int, args: argparse.Namespace) -> Result:
        assert self.leader is not None
        req = {"cmd": "run", "clients": clients, "size": 100, "requests": args.requests}
        self.ask(self.leader, {**req, "seconds": args.warmup})
        out = self.ask(self.leader, {**req, "seconds": args.seconds})
        return make_result(
            "pysyncobj", "embedded", "put", clients, out["lat_ms"], out["elapsed"], out["errors"]
        )

    def stop(self) -> None:
        for p in self.procs:
            if p.stdin is not None:
                with contextlib.suppress(OSError):
                    p.stdin.close()
        stop_processes(self.procs)  # type: ignore[arg-type]
        self.procs = []
