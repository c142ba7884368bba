"""Node processes: what one needs (:class:`NodeSpec`), start, SIGKILL, SIGSTOP/SIGCONT, its clock.

A node process is ``python -m trioraft.testing.chaos _node SPEC.json``:
:func:`node_main` loads the spec, routes the node's peer connections through
its proxies (:mod:`trioraft.testing.chaos.routes`), imports the system under
test by its ``module:attribute`` name and awaits its ``serve(spec)``.  The
harness side (:class:`NodeProcess`) keeps the process, its log and, when
libfaketime is installed, the file that sets the process's wall clock.

Wall clock.  With ``clock=True`` the process runs under libfaketime
(``LD_PRELOAD``) reading its offset from a file on every call
(``FAKETIME_NO_CACHE``), so :meth:`NodeProcess.set_clock` jumps
``time.time()`` of that process alone, either way, at once.  The monotonic
clock (Trio's timers, timeouts, elections) is left alone
(``DONT_FAKE_MONOTONIC``).  Under it ``time.sleep`` fails with ``EINVAL``
(libfaketime 0.9.10 rewrites ``clock_nanosleep``); Trio and the nodes do not
call it.
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Final, Protocol

import trio
import trio.lowlevel

from trioraft.runtime.gcsettings import tune_gc
from trioraft.testing.chaos.routes import install_routes

__all__ = ["NodeProcess", "NodeSpec", "find_libfaketime", "load_system", "node_main"]

_SRC_ROOT: Final = str(pathlib.Path(__file__).resolve().parents[3])


@dataclass(frozen=True)
class NodeSpec:
    """What a node process needs (written as JSON next to its data)."""

    node_id: int
    #: Where the node listens (``HOST:port``, numeric: never routed).
    listen: str
    #: What the others call it (``ROUTE_HOST:port``): its bootstrap and membership address.
    address: str
    data_dir: str
    #: A peer's real port -> the port of this node's proxy towards it.
    routes: dict[int, int]
    #: The bootstrap voters: id -> address.
    bootstrap: dict[int, str]
    join: bool
    #: The system under test, ``"module:attribute"`` (see :class:`System`).
    system: str
    #: "" or a deliberate bug the system offers (to prove the checks catch it).
    bug: str = ""
    cluster_id: str = "chaos"
    secret: str = "chaos-cluster-secret"
    client_id: str = "chaos"
    token: str = "chaos-client-token"
    election_timeout_min: float = 0.6
    election_timeout_max: float = 1.2
    heartbeat_interval: float = 0.1
    snapshot_entries: int = 500
    snapshot_keep_entries: int = 100
    proposal_timeout: float = 10.0
    #: System-specific settings (JSON values).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def peers(self) -> dict[int, str]:
        """The other bootstrap voters (a joining node's way in)."""
        return {n: a for n, a in self.bootstrap.items() if n != self.node_id}

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NodeSpec:
        with open(path) as f:
            raw = json.load(f)
        raw["routes"] = {int(k): v for k, v in raw["routes"].items()}
        raw["bootstrap"] = {int(k): v for k, v in raw["bootstrap"].items()}
        return cls(**raw)


class NodeSystem(Protocol):
    """The node side of a system under test (the whole of it is :class:`~.run.System`)."""

    async def serve(self, spec: NodeSpec) -> None:
        """Run one node as ``spec`` says until cancelled or killed."""


def load_system(name: str) -> Any:
    """The object ``"package.module:attribute"`` names."""
    module, _, attr = name.partition(":")
    if not module or not attr:
        raise ValueError(f"a system is 'module:attribute', not {name!r}")
    return getattr(importlib.import_module(module), attr)


async def _serve(spec: NodeSpec) -> None:
    install_routes(spec.routes)
    system: NodeSystem = load_system(spec.system)
    await system.serve(spec)


def node_main(spec_path: str) -> None:
    """The body of a node process."""
    spec = NodeSpec.load(spec_path)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    tune_gc()  # as the servers it stands for (``docstore serve``) do
    trio.run(_serve, spec)


def find_libfaketime() -> str | None:
    """libfaketime's path (``TRIORAFT_LIBFAKETIME``, else Debian's), or None."""
    env = os.environ.get("TRIORAFT_LIBFAKETIME")
    if env:
        return env if os.path.exists(env) else None
    for pattern in (
        "/usr/lib/*/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def _open_log(path: pathlib.Path, header: str) -> IO[bytes]:
    out = open(path, "ab")  # noqa: SIM115 - the caller closes it
    out.write(header.encode())
    out.flush()
    return out


class NodeProcess:
    """One node's OS process: start, SIGKILL, SIGSTOP/SIGCONT, and its wall clock."""

    def __init__(self, spec: NodeSpec, root: pathlib.Path, *, libfaketime: str | None) -> None:
        self.spec = spec
        self.id = spec.node_id
        self.address = spec.address
        #: Reached directly (numeric: no route).
        self.direct = spec.listen
        self.dir = root / f"n{spec.node_id}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "node.json"
        self.config_path.write_text(json.dumps(asdict(spec)))
        self.log_path = self.dir / "node.log"
        self.libfaketime = libfaketime
        self.clock_path = self.dir / "clock"
        #: Seconds this process's wall clock is ahead (negative: behind).
        self.clock_offset = 0
        if libfaketime:
            self.set_clock(0)
        self.proc: trio.Process | None = None
        self.paused = False
        self.starts = 0

    @property
    def alive(self) -> bool:
        return self.proc is not None

    def set_clock(self, offset: int) -> None:
        """Jump the process's ``time.time()`` to real time + ``offset`` seconds."""
        if not self.libfaketime:
            raise RuntimeError("no libfaketime: the wall clock cannot be moved")
        tmp = self.clock_path.with_suffix(".tmp")
        tmp.write_text(f"{offset:+d}\n")
        os.replace(tmp, self.clock_path)  # one read sees the old offset or the new one
        self.clock_offset = offset

    def environment(self) -> dict[str, str]:
        """The node process's environment: the source on its path, its clock."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [_SRC_ROOT, os.getcwd(), env.get("PYTHONPATH")])
        )
        if self.libfaketime:
            env.update(
                LD_PRELOAD=self.libfaketime,
                FAKETIME_TIMESTAMP_FILE=str(self.clock_path),
                FAKETIME_NO_CACHE="1",
                DONT_FAKE_MONOTONIC="1",
            )
        return env

    async def start(self) -> None:
        assert self.proc is None
        env = self.environment()
        with _open_log(self.log_path, f"--- start {self.starts} ---\n") as out:
            self.proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "trioraft.testing.chaos", "_node", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.starts += 1
        self.paused = False

    def pause(self) -> None:
        if self.proc is not None and not self.paused:
            self.proc.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.proc is not None and self.paused:
            self.proc.send_signal(signal.SIGCONT)
            self.paused = False

    async def kill(self) -> None:
        """SIGCONT (a stopped process must be able to die) then SIGKILL, and reap it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
                    proc.kill()
            await proc.wait()
        self.paused = False

    def exited_on_its_own(self) -> int | None:
        """The exit code if the process died without us killing it."""
        if self.proc is not None and self.proc.poll() is not None:
            return self.proc.returncode
        return None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])
