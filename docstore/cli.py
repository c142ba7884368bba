"""The ``docstore`` command: run a cluster or a node, and talk to one.

Exit codes (docs/operations.md): 0 success; 1 the operation failed (not
found, a failed condition, refused by the cluster); 2 bad usage or input
(bad JSON, unknown option); 3 the cluster is unreachable (no node answered,
wrong token).  Errors are one line on stderr, never a traceback.  Data goes
to stdout as JSON; ``status`` and ``members`` print tables (``--json`` for
JSON).

This module owns the argument parser, the client commands (``put`` ...
``backup``, ``restore``), ``serve`` and the configuration reference; the
local-cluster supervisor (``cluster``, ``restart-node``) is
:mod:`docstore.supervisor`.  Why this is one file past 600 lines: every
command's flags, their help (``CONFIG_HELP``) and the generated reference in
docs/operations.md come from the one parser, and the commands share its exit
codes and output helpers.  The seam, if it grows, is the configuration
reference (``CONFIG_HELP`` to ``cmd_config_reference``); not split yet.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from docstore.clusterfile import CLUSTER_FILE, read_cluster_file, write_cluster_file
from docstore.server import DEFAULT_CLIENT

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

DEFAULT_DIR = "docstore-data"
DEFAULT_BASE_PORT = 7101


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- helpers


def _json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        msg = f"{what} is not valid JSON: {exc.msg} (at char {exc.pos})"
        raise CliError(msg, EXIT_USAGE) from None


def _out(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, default=_json_default))


def _json_default(v: object) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    raise TypeError(f"{type(v).__name__} is not JSON")


@dataclass(frozen=True)
class Target:
    """Where and as whom a client command connects."""

    addresses: list[str]
    token: str
    cluster_id: str
    client: str
    tls_ca: str | None

    def ssl_context(self) -> Any:
        if not self.tls_ca:
            return None
        import ssl

        try:
            return ssl.create_default_context(cafile=self.tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise CliError(f"cannot load the CA bundle {self.tls_ca}: {exc}", EXIT_USAGE) from None


def _target(args: argparse.Namespace) -> Target:
    """Addresses, principal and token from the flags, the environment or --dir's cluster.toml."""
    addresses = args.cluster or os.environ.get("DOCSTORE_CLUSTER")
    client = args.client or os.environ.get("DOCSTORE_CLIENT") or DEFAULT_CLIENT
    token = args.token or os.environ.get("DOCSTORE_TOKEN")
    tls_ca = args.tls_ca or os.environ.get("DOCSTORE_TLS_CA")
    cluster_id = "docstore"
    info = read_cluster_file(args.dir)
    if info is not None:
        cluster_id = str(info.get("cluster_id", cluster_id))
        if not addresses:
            addresses = ",".join(str(a) for _, a in sorted(info.get("nodes", {}).items()))
        if not token:
            if client == DEFAULT_CLIENT:
                token = info.get("token")
            else:
                tokens = info.get("tokens")
                token = tokens.get(client) if isinstance(tokens, dict) else None
        # A cluster whose nodes speak TLS: verify them as the nodes verify each other.
        tls_ca = tls_ca or info.get("tls_ca") or info.get("tls_cert")
    if not addresses:
        raise CliError(
            f"no cluster given: use --cluster HOST:PORT[,...] (or DOCSTORE_CLUSTER), "
            f"or --dir DIR of a `docstore cluster` (no {os.path.join(args.dir, CLUSTER_FILE)})",
            EXIT_USAGE,
        )
    if not token:
        where = "" if client == DEFAULT_CLIENT else f" of client {client!r}"
        raise CliError(f"no client token{where}: use --token (or DOCSTORE_TOKEN)", EXIT_USAGE)
    return Target(
        addresses=[a for a in str(addresses).split(",") if a],
        token=str(token),
        cluster_id=cluster_id,
        client=client,
        tls_ca=tls_ca,
    )


def _run_client(args: argparse.Namespace, body: Callable[[Any], Awaitable[int | None]]) -> int:
    import docstore
    from docstore.client import ClusterError, UnavailableError

    target = _target(args)
    addresses = target.addresses

    async def main() -> int | None:
        async with docstore.connect(
            addresses,
            token=target.token,
            client=target.client,
            cluster_id=target.cluster_id,
            ssl_context=target.ssl_context(),
            call_timeout=args.timeout,
        ) as db:
            return await body(db)

    try:
        return trio.run(main) or 0
    except UnavailableError as exc:
        raise CliError(
            f"cluster unreachable at {','.join(addresses)}: {exc.message}", EXIT_UNAVAILABLE
        ) from None
    except ClusterError as exc:
        code = EXIT_UNAVAILABLE if exc.code in ("unauthorized", "tls") else EXIT_FAILED
        raise CliError(str(exc), code) from None
    except docstore.NotFoundError as exc:
        raise CliError(f"not found: {exc.message}") from None
    except docstore.ConflictError as exc:
        raise CliError(f"conflict: {exc.message} (current rev {exc.rev})") from None
    except docstore.InvalidCommandError as exc:
        raise CliError(f"invalid: {exc.message}", EXIT_USAGE) from None
    except docstore.DocstoreError as exc:
        raise CliError(f"{exc.code}: {exc.message}") from None


async def _require_collection(db: Any, name: str) -> None:
    names = await db.collections()
    if name not in names:
        have = ", ".join(names) or "none"
        raise CliError(f"no collection {name!r} (collections: {have})")


# ---------------------------------------------------------------- data commands


def cmd_put(args: argparse.Namespace) -> int:
    doc = _json_arg(args.doc, "the document")

    async def body(db: Any) -> None:
        rev = await db.collection(args.coll).put(args.key, doc, if_rev=args.if_rev)
        _out({"key": args.key, "rev": rev})

    return _run_client(args, body)


def cmd_get(args: argparse.Namespace) -> int:
    async def body(db: Any) -> int:
        doc = await db.collection(args.coll).get(args.key, consistency=args.consistency)
        if doc is None:
            print(f"docstore: not found: {args.coll}/{args.key}", file=sys.stderr)
            return EXIT_FAILED
        _out(doc)
        return 0

    return _run_client(args, body)


def cmd_patch(args: argparse.Namespace) -> int:
    ops = _json_arg(args.ops, "the patch")

    async def body(db: Any) -> None:
        coll = db.collection(args.coll)
        rev = await coll.patch(args.key, ops, upsert=args.upsert, if_rev=args.if_rev)
        _out({"key": args.key, "rev": rev})

    return _run_client(args, body)


def cmd_delete(args: argparse.Namespace) -> int:
    async def body(db: Any) -> None:
        _out({"deleted": await db.collection(args.coll).delete(args.key, if_rev=args.if_rev)})

    return _run_client(args, body)


def cmd_find(args: argparse.Namespace) -> int:
    flt = _json_arg(args.filter, "the filter") if args.filter else None
    sort = _json_arg(args.sort, "--sort") if args.sort and args.sort[0] == "[" else args.sort

    async def body(db: Any) -> None:
        await _require_collection(db, args.coll)
        docs = await db.collection(args.coll).find(
            flt, sort=sort, limit=args.limit, consistency=args.consistency
        )
        _out(docs)

    return _run_client(args, body)


def cmd_count(args: argparse.Namespace) -> int:
    flt = _json_arg(args.filter, "the filter") if args.filter else None

    async def body(db: Any) -> None:
        await _require_collection(db, args.coll)
        _out(await db.collection(args.coll).count(flt, consistency=args.consistency))

    return _run_client(args, body)


def cmd_watch(args: argparse.Namespace) -> int:
    flt = _json_arg(args.filter, "the filter") if args.filter else None

    async def body(db: Any) -> None:
        seen = 0
        async with db.collection(args.coll).watch(flt, since_rev=args.since_rev) as changes:
            async for ch in changes:
                print(json.dumps(ch, ensure_ascii=False), flush=True)
                seen += 1
                if args.count and seen >= args.count:
                    return

    try:
        return _run_client(args, body)
    except KeyboardInterrupt:
        return 0


# ---------------------------------------------------------------- cluster commands


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def cmd_status(args: argparse.Namespace) -> int:
    async def body(db: Any) -> int:
        status = await db.status()
        if all(s["role"] == "unreachable" for s in status):
            first = status[0].get("error", "") if status else ""
            raise CliError(f"cluster unreachable: no node answered ({first})", EXIT_UNAVAILABLE)
        if args.json:
            _out(status)
        else:
            top = max((s.get("commit_index", 0) for s in status), default=0)
            rows = [["NODE", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG"]]
            for s in status:
                if s["role"] == "unreachable":
                    rows.append(
                        [str(s.get("node_id") or "?"), s["address"], "unreachable"] + ["-"] * 4
                    )
                    continue
                rows.append(
                    [
                        str(s["node_id"]),
                        str(s.get("address", "")),
                        s["role"],
                        str(s["term"]),
                        str(s["commit_index"]),
                        str(s["applied_index"]),
                        str(max(0, top - s["applied_index"])),
                    ]
                )
            print(_table(rows))
        return 0 if any(s["role"] == "leader" for s in status) else EXIT_FAILED

    return _run_client(args, body)


def cmd_members(args: argparse.Namespace) -> int:
    async def body(db: Any) -> None:
        m = await db.members()
        if args.json:
            _out(m)
            return
        rows = [["NODE", "ADDRESS", "MEMBERSHIP"]]
        for n, a in m["addresses"].items():
            kind = "voter" if int(n) in m["voters"] else "learner"
            if int(n) == m.get("leader_id"):
                kind += " (leader)"
            rows.append([n, str(a), kind])
        print(_table(rows))

    return _run_client(args, body)


def cmd_add_node(args: argparse.Namespace) -> int:
    async def body(db: Any) -> None:
        await db.add_node(args.id, args.address, promote=not args.learner)
        _out({"added": args.id, "address": args.address, "voter": not args.learner})

    return _run_client(args, body)


def cmd_remove_node(args: argparse.Namespace) -> int:
    async def body(db: Any) -> None:
        await db.remove_node(args.id)
        _out({"removed": args.id})

    return _run_client(args, body)


def cmd_transfer_leader(args: argparse.Namespace) -> int:
    async def body(db: Any) -> None:
        _out({"leader": await db.transfer_leader(args.id)})

    return _run_client(args, body)


def cmd_snapshot(args: argparse.Namespace) -> int:
    async def body(db: Any) -> None:
        _out(await db.snapshot())

    return _run_client(args, body)


def cmd_backup(args: argparse.Namespace) -> int:
    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() else None

    async def body(db: Any) -> None:
        try:
            info = await db.backup(
                args.file,
                stall_timeout=args.stall_timeout,
                progress=bar.update if bar is not None else None,
            )
        finally:
            if bar is not None:
                bar.close()
        _out(info)

    try:
        return _run_client(args, body)
    except OSError as exc:
        raise CliError(f"cannot write {args.file}: {exc.strerror or exc}") from None


class ProgressBar:
    """``backup  12.0 MiB / 40.0 MiB  30% [######.............]`` on a terminal, redrawn
    in place at most every 0.1 s (and at the end)."""

    WIDTH = 30

    def __init__(self, out: Any) -> None:
        self.out = out
        self.drawn = 0.0
        self.shown = False

    def update(self, received: int, size: int) -> None:
        now = time.monotonic()
        if received < size and now - self.drawn < 0.1:
            return
        self.drawn = now
        share = received / size if size else 1.0
        filled = int(share * self.WIDTH)
        mib = 1024 * 1024
        self.out.write(
            f"\rbackup {received / mib:7.1f} MiB / {size / mib:.1f} MiB {share:4.0%} "
            f"[{'#' * filled}{'.' * (self.WIDTH - filled)}]"
        )
        self.out.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.out.write("\n")
            self.out.flush()
            self.shown = False


def _last_line(path: str) -> str:
    with open(path, "rb") as f:
        lines = f.read().decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no output"


def _snapshot_info(data: bytes, name: str) -> tuple[int, int]:
    from docstore.engine.values import DEFAULT_LIMITS
    from docstore.storage import snapshot as snap
    from trioraft.statemachine import SnapshotError

    try:
        s = snap.decode(data, name, None, DEFAULT_LIMITS)
    except (SnapshotError, Exception) as exc:
        raise CliError(f"{name} is not a docstore backup: {exc}") from None
    return s.index, s.term


def seed_node(data_dir: str, backup: bytes, voters: dict[int, str]) -> None:
    """Make ``data_dir`` a node whose Raft state starts at the backup's snapshot."""
    from trioraft.storage.seed import seed_node as seed

    index, term = _snapshot_info(backup, "the backup")
    try:
        seed(data_dir, backup, index=index, term=term, voters=voters)
    except FileExistsError:
        raise CliError(f"{data_dir} already holds a node: restore into a fresh directory") from None


def cmd_restore(args: argparse.Namespace) -> int:
    try:
        with open(args.file, "rb") as f:
            backup = f.read()
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
    index, term = _snapshot_info(backup, args.file)
    if args.data:
        if not args.nodes_map:
            raise CliError("restore --data needs --node ID=HOST:PORT for every member", EXIT_USAGE)
        voters = _id_pairs(args.nodes_map)
        seed_node(args.data, backup, voters)
        _out({"restored": args.data, "index": index, "term": term})
        return 0
    info = read_cluster_file(args.dir)
    if info is None:
        info = _new_cluster_info(args.nodes, args.base_port)
        os.makedirs(args.dir, exist_ok=True)
        write_cluster_file(args.dir, info)
    voters = {int(n): str(a) for n, a in info["nodes"].items()}
    for n in voters:
        seed_node(os.path.join(args.dir, f"node{n}"), backup, voters)
    _out({"restored": args.dir, "nodes": sorted(voters), "index": index, "term": term})
    print(f"start it with: docstore cluster --dir {args.dir}", file=sys.stderr)
    return 0


def _id_pairs(pairs: list[str]) -> dict[int, str]:
    out: dict[int, str] = {}
    for p in pairs:
        n, sep, a = p.partition("=")
        if not sep or not n.isdigit():
            raise CliError(f"{p!r} is not ID=HOST:PORT", EXIT_USAGE)
        out[int(n)] = a
    return out


# ---------------------------------------------------------------- serve and cluster


def _setup_logging(level: str) -> None:
    import logging

    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from docstore.server import load_config, serve
    from trioraft.runtime import tune_gc

    peers = _id_pairs(args.peer) if args.peer else None
    try:
        cfg = load_config(
            args.config,
            id=args.id,
            listen=args.listen,
            advertise=args.advertise,
            peers=peers,
            join=True if args.join else None,
            data=args.data,
            cluster_id=args.cluster_id,
            secret=args.secret or os.environ.get("DOCSTORE_SECRET"),
            token=args.token or os.environ.get("DOCSTORE_TOKEN"),
            election_timeout_min=args.election_timeout_min,
            election_timeout_max=args.election_timeout_max,
            heartbeat_interval=args.heartbeat_interval,
            snapshot_entries=args.snapshot_entries,
            proposal_timeout=args.proposal_timeout,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_ca=args.tls_ca,
            log_level=args.log_level,
            http=args.http,
        )
        cfg.node_config()
    except ValueError as exc:
        raise CliError(f"bad configuration: {exc}", EXIT_USAGE) from None
    _setup_logging(cfg.log_level)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            node = await nursery.start(
                lambda task_status: serve(cfg, handle_signals=True, task_status=task_status)
            )
            print(
                f"docstore node {node.id} serving on {node.config.address} (data {cfg.data})",
                flush=True,
            )
            http = cfg.http or cfg.http_nodes.get(cfg.id)
            if http:
                print(f"docstore node {node.id}: status page http://{http}/", flush=True)

    tune_gc()  # a server process: fewer collector passes over its long-lived heap
    try:
        trio.run(main)
    except OSError as exc:
        raise CliError(f"node {cfg.id} cannot start: {exc}") from None
    print(f"docstore node {cfg.id} stopped", flush=True)
    return 0


def _new_cluster_info(nodes: int, base_port: int) -> dict[str, Any]:
    return {
        "cluster_id": "docstore",
        "secret": secrets.token_urlsafe(24),
        "token": secrets.token_urlsafe(24),
        "nodes": {str(i): f"127.0.0.1:{base_port + i - 1}" for i in range(1, nodes + 1)},
    }


# ---------------------------------------------------------------- configuration

#: What each server setting means: the help of its ``docstore serve`` flag and
#: the configuration reference in docs/operations.md (``docstore config-reference``).
CONFIG_HELP: dict[str, str] = {
    "id": "this node's id, a positive integer unique in the cluster",
    "listen": "HOST:PORT to listen on, for peers and clients",
    "advertise": "HOST:PORT others reach this node at (default: listen)",
    "peers": "ID=HOST:PORT of another member at bootstrap (TOML: a [peers] table)",
    "nodes": "every bootstrap member, this one included, as a [nodes] table of ID = "
    '"HOST:PORT"; an alternative to peers that lets all nodes share one file (with --id)',
    "join": "join a running cluster (then `docstore add-node`) instead of bootstrapping one",
    "data": "data directory (default with [nodes]: nodeID beside the file)",
    "cluster_id": "the cluster's name; peers and clients must present the same",
    "secret": "the cluster secret every node shares (peer handshake); required",
    "token": "the token of the client principal 'docstore' (role admin)",
    "tokens": "more client principals, a table of NAME = TOKEN (`--client NAME` on the CLI)",
    "roles": 'a table of NAME = ROLE, ROLE one of "read", "write", "admin" (default: admin '
    "for docstore, write for the others)",
    "election_timeout_min": "seconds without a leader before a follower campaigns, at least",
    "election_timeout_max": "... and at most (each election draws a timeout between the two)",
    "heartbeat_interval": "seconds between the leader's heartbeats; well below the election "
    "timeout",
    "snapshot_entries": "entries applied between automatic snapshots (log compaction)",
    "proposal_timeout": "seconds a write waits to be committed and applied before it fails "
    "with `timeout`",
    "tls_cert": "PEM certificate (chain) of this node: the port speaks wss, to peers and clients",
    "tls_key": "PEM private key of tls_cert",
    "tls_ca": "PEM CA bundle to verify the peers' certificates with (default: tls_cert)",
    "log_level": "debug, info, warning or error",
    "http": "HOST:PORT of this node's HTTP port: /metrics (Prometheus), /healthz, /readyz, "
    "/status and the live status page at / (default: off, or this id's entry of http_nodes)",
    "http_nodes": "every member's HTTP port, a table of ID = HOST:PORT, for the status "
    "page (`docstore cluster` writes it: each node's port + 1000)",
}

#: Settings with an environment variable (it applies when the flag is absent).
CONFIG_ENV = {"secret": "DOCSTORE_SECRET", "token": "DOCSTORE_TOKEN"}

#: ``docstore serve`` flags of settings (the tuning ones are shared with ``cluster``).
SERVE_FLAGS = (
    "id",
    "listen",
    "advertise",
    "peers",
    "join",
    "data",
    "cluster_id",
    "secret",
    "token",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "http",
)
TUNING_FLAGS: dict[str, type] = {
    "election_timeout_min": float,
    "election_timeout_max": float,
    "heartbeat_interval": float,
    "snapshot_entries": int,
    "proposal_timeout": float,
}
CONFIG_METAVAR = {
    "listen": "HOST:PORT",
    "advertise": "HOST:PORT",
    "data": "DIR",
    "tls_cert": "FILE",
    "tls_key": "FILE",
    "tls_ca": "FILE",
    "http": "HOST:PORT",
}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parsers of ``parser``'s subcommands, by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _server_defaults() -> dict[str, Any]:
    import dataclasses

    from docstore.server import ServerConfig

    out: dict[str, Any] = {}
    for f in dataclasses.fields(ServerConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _default(name: str) -> str:
    v = _server_defaults()[name]
    if v is None or v == "" or v == {}:
        return "none"
    return str(v)


def _default_note(name: str) -> str:
    v = _server_defaults()[name]
    if v is None or v in ("", {}) or v is False or "(default" in CONFIG_HELP[name]:
        return ""
    return f" (default {v})"


def _env_note(name: str) -> str:
    return f" (env {CONFIG_ENV[name]})" if name in CONFIG_ENV else ""


def config_reference() -> str:
    """The configuration reference of docs/operations.md, from ServerConfig and the flags."""
    import dataclasses

    from docstore.server import ServerConfig

    serve = subcommands(build_parser())["serve"]
    flags: dict[str, tuple[str, str]] = {}
    for action in serve._actions:
        if action.option_strings and action.help:
            dest = "peers" if action.dest == "peer" else action.dest
            flags[dest] = (action.option_strings[0], action.help)
    defaults = _server_defaults()
    rows = [
        "| key | flag of `docstore serve` | environment | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for f in dataclasses.fields(ServerConfig):
        name = f.name
        flag, flag_help = flags.get(name, ("", ""))
        text = CONFIG_HELP.get(name, flag_help)
        if not text:
            raise ValueError(
                f"ServerConfig.{name} has no description: add a help text to its flag "
                "or an entry to CONFIG_HELP in docstore/cli.py"
            )
        text = text.split(" (default ")[0] if name in TUNING_FLAGS or name == "log_level" else text
        default = defaults[name]
        shown = "-" if default is None or default == "" or default == {} else f"`{default!r}`"
        if isinstance(default, bool):
            shown = f"`{str(default).lower()}`"
        elif isinstance(default, str) and default:
            shown = f"`{default!r}`".replace("'", '"')
        if name == "peers" and flag:
            flag = "`--peer ID=HOST:PORT` (repeated)"
        elif flag:
            flag = f"`{flag}`"
        env = f"`{CONFIG_ENV[name]}`" if name in CONFIG_ENV else ""
        rows.append(f"| `{name}` | {flag or '-'} | {env or '-'} | {shown} | {text} |")
    return "\n".join(rows) + "\n"


REFERENCE_START = "<!-- config-reference: generated by `docstore config-reference`; do not edit -->"
REFERENCE_END = "<!-- end of config-reference -->"


def cmd_config_reference(args: argparse.Namespace) -> int:
    text = config_reference()
    if not args.update:
        sys.stdout.write(text)
        return 0
    with open(args.update, encoding="utf-8") as f:
        doc = f.read()
    start, end = doc.find(REFERENCE_START), doc.find(REFERENCE_END)
    if start < 0 or end < start:
        raise CliError(f"{args.update} has no {REFERENCE_START} ... {REFERENCE_END} block")
    doc = doc[: start + len(REFERENCE_START)] + "\n" + text + doc[end:]
    with open(args.update, "w", encoding="utf-8") as f:
        f.write(doc)
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    # Imported here: the supervisor uses this module's helpers and exit codes.
    from docstore.supervisor import cmd_cluster, cmd_restart_node

    p = argparse.ArgumentParser(
        prog="docstore",
        description="docstore: a replicated JSON document database (run a cluster, talk to it).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    client = argparse.ArgumentParser(add_help=False)
    g = client.add_argument_group("connection")
    g.add_argument(
        "--cluster",
        help="node addresses, HOST:PORT[,HOST:PORT...] (default: DOCSTORE_CLUSTER, "
        "else the nodes in --dir's cluster.toml)",
    )
    g.add_argument(
        "--client",
        metavar="NAME",
        help="the principal to authenticate as, one of the server's `tokens` (default: "
        f"DOCSTORE_CLIENT, else {DEFAULT_CLIENT!r}, the principal of the `token` setting)",
    )
    g.add_argument(
        "--token",
        help="the token of the --client principal (default: DOCSTORE_TOKEN, else cluster.toml's "
        "`token`, or `tokens.NAME` with --client NAME)",
    )
    g.add_argument(
        "--dir",
        default=DEFAULT_DIR,
        help=f"a `docstore cluster` directory to read both from (default {DEFAULT_DIR})",
    )
    g.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to keep retrying a request (default 10)",
    )
    g.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="speak TLS (wss) and verify the nodes' certificates with this CA bundle "
        "(default: DOCSTORE_TLS_CA, else plain)",
    )

    reads = argparse.ArgumentParser(add_help=False)
    reads.add_argument(
        "--consistency",
        choices=["linearizable", "lease", "local"],
        default="linearizable",
        help="linearizable (default: a read barrier on the leader), lease (the leader, "
        "no round trip while its lease holds) or local (any node, maybe stale)",
    )

    def add(
        name: str,
        fn: Callable[[argparse.Namespace], int],
        help: str,
        *parents: argparse.ArgumentParser,
    ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help, parents=list(parents))
        sp.set_defaults(fn=fn)
        return sp

    tuning = argparse.ArgumentParser(add_help=False)
    t = tuning.add_argument_group("tuning (defaults: docstore.server.ServerConfig)")
    for name, kind in TUNING_FLAGS.items():
        t.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            metavar=kind.__name__.upper(),
            help=CONFIG_HELP[name] + f" (default {_default(name)})",
        )
    t.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help=CONFIG_HELP["log_level"] + f" (default {_default('log_level')})",
    )

    sp = add("cluster", cmd_cluster, "run a local N-node cluster (one process per node)", tuning)
    sp.add_argument("--nodes", type=int, help="number of nodes for a new cluster (default 3)")
    sp.add_argument("--dir", default=DEFAULT_DIR, help=f"data directory (default {DEFAULT_DIR})")
    sp.add_argument(
        "--base-port",
        type=int,
        help=f"node N listens on 127.0.0.1:BASE+N-1 (default {DEFAULT_BASE_PORT})",
    )
    sp.add_argument(
        "--ready-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the first leader before giving up (default 30)",
    )

    sp = add(
        "restart-node",
        cmd_restart_node,
        "stop node N of the `docstore cluster` running on --dir if it runs, and start it "
        "again as that cluster's child (after a crash or kill -9)",
    )
    sp.add_argument("id", type=int, help="the node's id (1 for node1)")
    sp.add_argument("--dir", default=DEFAULT_DIR, help=f"data directory (default {DEFAULT_DIR})")
    sp.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for it (default 30)"
    )

    sp = add("serve", cmd_serve, "run one node (peers and clients on one port)", tuning)
    sp.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file (same keys as the flags, with _); flags override it",
    )
    for name in SERVE_FLAGS:
        flag = "--" + name.replace("_", "-")
        text = CONFIG_HELP[name] + _env_note(name) + _default_note(name)
        if name == "join":
            sp.add_argument(flag, action="store_true", default=None, help=text)
        elif name == "id":
            sp.add_argument(flag, type=int, help=text)
        elif name == "peers":
            sp.add_argument(
                "--peer",
                dest="peer",
                action="append",
                metavar="ID=HOST:PORT",
                help=text + "; repeat for each",
            )
        else:
            sp.add_argument(flag, metavar=CONFIG_METAVAR.get(name), help=text)

    sp = add("put", cmd_put, "create or replace a document", client)
    sp.add_argument("coll", help="collection name")
    sp.add_argument("key", help="document key")
    sp.add_argument("doc", help="JSON object")
    sp.add_argument("--if-rev", type=int, help="only if the document's _rev is this")
    sp = add("get", cmd_get, "print a document (exit 1 if absent)", client, reads)
    sp.add_argument("coll", help="collection name")
    sp.add_argument("key", help="document key")
    sp = add("patch", cmd_patch, "apply update operators ($set, $inc, ...)", client)
    sp.add_argument("coll", help="collection name")
    sp.add_argument("key", help="document key")
    sp.add_argument("ops", help='JSON, e.g. {"$inc": {"n": 1}}')
    sp.add_argument("--upsert", action="store_true", help="create the document if absent")
    sp.add_argument("--if-rev", type=int, help="only if the document's _rev is this")
    sp = add("delete", cmd_delete, "delete a document", client)
    sp.add_argument("coll", help="collection name")
    sp.add_argument("key", help="document key")
    sp.add_argument("--if-rev", type=int, help="only if the document's _rev is this")
    sp = add("find", cmd_find, "print matching documents as a JSON array", client, reads)
    sp.add_argument("coll", help="collection name")
    sp.add_argument("filter", nargs="?", help='JSON filter, e.g. {"age": {"$gte": 18}}')
    sp.add_argument("--sort", help='"field", "-field" or JSON [["f", -1], ...]')
    sp.add_argument("--limit", type=int, help="at most this many documents")
    sp = add("count", cmd_count, "count matching documents", client, reads)
    sp.add_argument("coll", help="collection name")
    sp.add_argument("filter", nargs="?", help="JSON filter (default: every document)")
    sp = add("watch", cmd_watch, "print changes as JSON lines until Ctrl-C", client)
    sp.add_argument("coll", help="collection name")
    sp.add_argument("filter", nargs="?", help="JSON filter (default: every change)")
    sp.add_argument("--since-rev", type=int, help="start after this revision (default: now)")
    sp.add_argument("--count", type=int, help="stop after this many changes")
    sp = add("status", cmd_status, "each node's role, term, commit, applied, lag", client)
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sp = add("members", cmd_members, "the cluster's members", client)
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sp = add(
        "add-node",
        cmd_add_node,
        "add a node started with `docstore serve --join` (learner, then voter)",
        client,
    )
    sp.add_argument("id", type=int, help="the new node's id")
    sp.add_argument("address", help="HOST:PORT the new node listens on")
    sp.add_argument("--learner", action="store_true", help="do not promote to voter")
    sp = add("remove-node", cmd_remove_node, "remove a node from the cluster", client)
    sp.add_argument("id", type=int, help="the node's id")
    sp = add("transfer-leader", cmd_transfer_leader, "hand leadership to a node", client)
    sp.add_argument("id", type=int, nargs="?", help="the new leader (default: any caught-up voter)")
    add("snapshot", cmd_snapshot, "snapshot the leader's state now, compact its log", client)
    sp = add("backup", cmd_backup, "write the cluster's state to FILE", client)
    sp.add_argument("file", help="where to write the backup (replaced atomically)")
    sp.add_argument(
        "--stall-timeout",
        type=float,
        default=30.0,
        help="give up when no chunk arrives for this many seconds (default 30); "
        "there is no overall timeout",
    )
    sp = add(
        "restore",
        cmd_restore,
        "prepare a fresh cluster directory from a backup (offline), then `docstore cluster`",
    )
    sp.add_argument("file", help="a file written by `docstore backup`")
    sp.add_argument(
        "--dir", default=DEFAULT_DIR, help=f"the new cluster's directory (default {DEFAULT_DIR})"
    )
    sp.add_argument("--nodes", type=int, default=3, help="nodes of the new cluster (default 3)")
    sp.add_argument(
        "--base-port",
        type=int,
        default=DEFAULT_BASE_PORT,
        help=f"node N listens on 127.0.0.1:BASE+N-1 (default {DEFAULT_BASE_PORT})",
    )
    sp.add_argument("--data", help="restore one node's data directory instead (with --node)")
    sp.add_argument(
        "--node",
        dest="nodes_map",
        action="append",
        metavar="ID=HOST:PORT",
        help="a member of the new cluster, with --data; repeat for every member",
    )
    sp = add(
        "config-reference",
        cmd_config_reference,
        "print the server configuration reference (Markdown, as in docs/operations.md)",
    )
    sp.add_argument(
        "--update",
        metavar="FILE",
        help="rewrite the generated block of FILE (docs/operations.md) instead of printing",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``docstore`` command."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        code: int = args.fn(args)
        return code
    except CliError as exc:
        print(f"docstore: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
