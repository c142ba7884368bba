"""The local-cluster supervisor: ``docstore cluster`` and ``docstore restart-node``.

``docstore cluster`` runs an N-node cluster on this machine, one
``docstore serve`` child process per node, all under one directory: it
writes the cluster file (``docstore.clusterfile``) on first use, checks
every port before writing anything, starts the nodes, waits for a leader
and prints how to reach them, then watches its children until Ctrl-C (or
SIGTERM) stops them in order.  The directory also holds ``nodeN.log``,
``nodeN.pid`` (each child's pid) and ``cluster.pid`` (the supervisor's own,
while it runs).  ``docstore restart-node N`` asks that running supervisor to
restart node N by creating ``nodeN.restart``, which the supervisor removes
once the new child has started.  Argument parsing, the exit codes and the
client commands are :mod:`docstore.cli`'s; this module only runs the
processes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, BinaryIO, NoReturn

import trio

from docstore.cli import (
    DEFAULT_BASE_PORT,
    DEFAULT_DIR,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    TUNING_FLAGS,
    CliError,
    Target,
    _last_line,
    _new_cluster_info,
    _out,
)
from docstore.clusterfile import CLUSTER_FILE, read_cluster_file, write_cluster_file
from trioraft.core.types import parse_address

SUPERVISOR_PID = "cluster.pid"  # the running `docstore cluster`, for restart-node


def _port_free(address: str) -> bool:
    host, port = parse_address(address)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the node's listener does
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


#: ``docstore cluster`` gives node N's HTTP port (metrics, status page) its port + this.
HTTP_PORT_OFFSET = 1000


def _http_address(address: str) -> str:
    host, port = parse_address(address)
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port + HTTP_PORT_OFFSET}"


def cmd_cluster(args: argparse.Namespace) -> int:
    directory = args.dir
    info = read_cluster_file(directory)
    changed = False
    if (
        info is None
        or (args.base_port is not None)
        or (args.nodes and args.nodes != len(info["nodes"]))
    ):
        fresh = _new_cluster_info(args.nodes or 3, args.base_port or DEFAULT_BASE_PORT)
        if info is not None:
            if (
                args.nodes
                and args.nodes != len(info["nodes"])
                and any(os.path.exists(os.path.join(directory, f"node{n}")) for n in info["nodes"])
            ):
                raise CliError(
                    f"{directory} holds a {len(info['nodes'])}-node cluster; use "
                    "add-node/remove-node to change it, or a new --dir",
                    EXIT_USAGE,
                )
            # Keep the secrets and every other setting (tokens, roles, TLS files, ...).
            fresh = {**info, "nodes": fresh["nodes"]}
        info = fresh
        changed = True
    nodes = {int(n): str(a) for n, a in info["nodes"].items()}
    if changed or {str(n) for n in info.get("http_nodes", {})} != {str(n) for n in nodes}:
        info["http_nodes"] = {str(n): _http_address(a) for n, a in sorted(nodes.items())}
        changed = True
    for n, a in list(info["http_nodes"].items()):
        if not _port_free(a):
            # The status page is no reason not to start; the next run tries again.
            print(f"docstore cluster: {a} is in use: node {n} serves no HTTP", flush=True)
            del info["http_nodes"][n]
            changed = True
    # Before anything is written: a failed start leaves no new secret or token behind.
    busy = [f"{a} (node {n})" for n, a in sorted(nodes.items()) if not _port_free(a)]
    if busy:
        raise CliError(
            f"port in use: {', '.join(busy)}; is a cluster already running on {directory}? "
            "Stop it, or pick other ports with --base-port"
        )
    if changed:
        os.makedirs(directory, exist_ok=True)
        write_cluster_file(directory, info)
    config = os.path.join(directory, CLUSTER_FILE)
    extra: list[str] = []
    for flag in (*TUNING_FLAGS, "log_level"):
        v = getattr(args, flag)
        if v is not None:
            extra += [f"--{flag.replace('_', '-')}", str(v)]
    procs: dict[int, subprocess.Popen[bytes]] = {}
    logs: dict[int, BinaryIO] = {}
    stopping = False

    def start(n: int) -> None:
        procs[n] = subprocess.Popen(
            [sys.executable, "-m", "docstore", "serve", "--config", config, "--id", str(n), *extra],
            stdout=logs[n],
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches us; we stop the nodes in order
        )
        with open(os.path.join(directory, f"node{n}.pid"), "w") as f:
            f.write(f"{procs[n].pid}\n")

    def on_term(signum: int, frame: object) -> NoReturn:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    supervisor_pid = os.path.join(directory, SUPERVISOR_PID)
    try:
        for n in sorted(nodes):
            logs[n] = open(os.path.join(directory, f"node{n}.log"), "ab")  # noqa: SIM115
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, f"node{n}.restart"))  # a stale request
            start(n)
        with open(supervisor_pid, "w") as f:
            f.write(f"{os.getpid()}\n")
        leader = _wait_for_leader(nodes, info, procs, directory, args.ready_timeout)
        _print_banner(directory, nodes, info, leader)
        reported: set[int] = set()
        while True:
            time.sleep(0.2)
            for n, p in procs.items():
                request = os.path.join(directory, f"node{n}.restart")
                if os.path.exists(request):  # from `docstore restart-node N`
                    _stop_all({n: p}, directory)
                    start(n)
                    reported.discard(n)
                    os.unlink(request)
                    print(f"docstore cluster: node {n} restarted", flush=True)
                elif n not in reported and p.poll() is not None:
                    reported.add(n)
                    print(
                        f"docstore cluster: node {n} exited with code {p.returncode} "
                        f"(see {os.path.join(directory, f'node{n}.log')}); "
                        f"`docstore restart-node {n}{_dir_flag(directory)}` starts it again",
                        flush=True,
                    )
    except KeyboardInterrupt:
        stopping = True
        return 0
    finally:
        signal.signal(signal.SIGTERM, old)
        with contextlib.suppress(KeyboardInterrupt):
            _stop_all(procs, directory)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(supervisor_pid)
        for log in logs.values():
            log.close()
        if stopping:
            print(
                "docstore cluster: every node stopped; data kept in "
                f"{directory} (run `docstore cluster --dir {directory}` again to resume)",
                flush=True,
            )


def _dir_flag(directory: str) -> str:
    return "" if os.path.normpath(directory) == DEFAULT_DIR else f" --dir {directory}"


def cmd_restart_node(args: argparse.Namespace) -> int:
    """Ask the `docstore cluster` running on --dir to (re)start node N as its child."""
    directory = args.dir
    info = read_cluster_file(directory)
    if info is None:
        raise CliError(
            f"no {os.path.join(directory, CLUSTER_FILE)}: restart-node works on a "
            "`docstore cluster` directory (--dir)",
            EXIT_USAGE,
        )
    if str(args.id) not in info["nodes"]:
        have = ", ".join(sorted(info["nodes"], key=int))
        raise CliError(f"no node {args.id} in {directory} (nodes: {have})", EXIT_USAGE)
    try:
        with open(os.path.join(directory, SUPERVISOR_PID)) as f:
            pid = int(f.read())
        os.kill(pid, 0)
    except (OSError, ValueError):
        raise CliError(
            f"no `docstore cluster` is running on {directory}: start it with "
            f"`docstore cluster{_dir_flag(directory)}` (it starts every node)",
            EXIT_USAGE,
        ) from None
    request = os.path.join(directory, f"node{args.id}.restart")
    with open(request, "w"):
        pass
    deadline = time.monotonic() + args.timeout
    while os.path.exists(request):
        if time.monotonic() > deadline:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(request)
            raise CliError(
                f"the `docstore cluster` on {directory} (pid {pid}) did not restart node "
                f"{args.id} within {args.timeout}s",
                EXIT_UNAVAILABLE,
            )
        time.sleep(0.05)
    with open(os.path.join(directory, f"node{args.id}.pid")) as f:
        node_pid = int(f.read())
    _out({"restarted": args.id, "pid": node_pid})
    return 0


def _stop_all(procs: dict[int, subprocess.Popen[bytes]], directory: str) -> None:
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for n, p in procs.items():
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, f"node{n}.pid"))


def _wait_for_leader(
    nodes: dict[int, str],
    info: dict[str, Any],
    procs: dict[int, subprocess.Popen[bytes]],
    directory: str,
    limit: float,
) -> int | None:
    import docstore
    from docstore.client import UnavailableError

    async def ask() -> int | None:
        deadline = trio.current_time() + limit
        while True:
            # Until a node listens, connect() gives up at once (no node at ...): ask again.
            try:
                async with docstore.connect(
                    list(nodes.values()),
                    token=info["token"],
                    cluster_id=info["cluster_id"],
                    ssl_context=Target(
                        [], "", "", "", info.get("tls_ca") or info.get("tls_cert")
                    ).ssl_context(),
                    call_timeout=max(0.5, deadline - trio.current_time()),
                    connect_timeout=1.0,
                ) as db:
                    m = await db.members()
                    return int(m["leader_id"]) if m.get("leader_id") else None
            except UnavailableError:
                if trio.current_time() >= deadline:
                    raise
            await trio.sleep(0.1)

    async def main() -> int | None:
        async with trio.open_nursery() as nursery:

            async def watch_children() -> None:
                while True:
                    for n, p in procs.items():
                        if p.poll() is not None:
                            tail = _last_line(os.path.join(directory, f"node{n}.log"))
                            raise CliError(
                                f"node {n} exited with code {p.returncode} at start: {tail}"
                            )
                    await trio.sleep(0.1)

            nursery.start_soon(watch_children)
            leader = await ask()
            nursery.cancel_scope.cancel()
            return leader

    try:
        return trio.run(main)
    except BaseExceptionGroup as eg:
        cli = eg.subgroup(CliError)
        if cli is not None:
            raise cli.exceptions[0] from None
        if eg.subgroup(UnavailableError) is not None:
            raise CliError(
                f"the cluster elected no leader within {limit}s; see the node logs in {directory}",
                EXIT_UNAVAILABLE,
            ) from None
        raise


def _print_banner(
    directory: str, nodes: dict[int, str], info: dict[str, Any], leader: int | None
) -> None:
    d = directory
    addrs = ",".join(nodes[n] for n in sorted(nodes))
    lines = [f"docstore cluster: {len(nodes)} nodes, data in {d}/"]
    for n in sorted(nodes):
        mark = "  (leader)" if n == leader else ""
        web = info.get("http_nodes", {}).get(str(n))
        url = f"  http://{web}/" if web else ""
        lines.append(f"  node {n}  {nodes[n]}{url}  log {os.path.join(d, f'node{n}.log')}{mark}")
    webs = info.get("http_nodes", {})
    if webs:
        first = webs[min(webs, key=int)]
        lines.append(
            f"Status page: http://{first}/  (each node also serves /metrics, /healthz, "
            "/readyz and /status)"
        )
    dir_flag = _dir_flag(d)
    ca = info.get("tls_ca") or info.get("tls_cert")  # the nodes speak TLS
    tls_flag = f" --tls-ca {ca}" if ca else ""
    tls_arg = f", ssl_context=ssl.create_default_context(cafile={ca!r})" if ca else ""
    lines += [
        "",
        "Try, from another terminal in this directory:",
        f'  docstore put{dir_flag} users ann \'{{"name": "Ann", "age": 31}}\'',
        f"  docstore get{dir_flag} users ann",
        f'  docstore find{dir_flag} users \'{{"age": {{"$gte": 18}}}}\'',
        f"  docstore status{dir_flag}",
        "From elsewhere:",
        f"  docstore status --cluster {addrs} --token {info['token']}{tls_flag}",
        "From Python:",
        f"  async with docstore.connect({addrs.split(',')!r}, token={info['token']!r}"
        f"{tls_arg}) as db:",
        "",
        "Ctrl-C stops every node; run the same command again to resume with the data.",
    ]
    print("\n".join(lines), flush=True)
