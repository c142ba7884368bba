"""``cluster.toml``: the settings a local ``docstore cluster`` shares with its nodes
and clients (addresses, cluster id, secret, token).  Read by the CLI and by
``docstore.connect(cluster=DIR)``; written by ``docstore cluster`` and restore,
replaced atomically and readable by its owner only (it holds secrets)."""

from __future__ import annotations

import json
import os
import tomllib
from typing import Any

from docstore.storage.records import fsync_dir

CLUSTER_FILE = "cluster.toml"


def read_cluster_file(directory: str) -> dict[str, Any] | None:
    """The parsed file in ``directory``, or None if there is none."""
    path = os.path.join(directory, CLUSTER_FILE)
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return tomllib.load(f)


def _toml_value(v: object) -> str:
    if isinstance(v, dict):  # tokens = {...}, roles = {...}: an inline table
        return (
            "{ "
            + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items())
            + " }"
        )
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def write_cluster_file(directory: str, data: dict[str, Any]) -> None:
    lines = [
        "# Written by `docstore cluster`: shared settings of this local cluster.",
        "# Each node runs `docstore serve --config THIS_FILE --id N`; clients read",
        "# the addresses and token from here with `docstore ... --dir DIR`.",
    ]
    for k, v in data.items():
        if k != "nodes":
            lines.append(f"{k} = {_toml_value(v)}")
    lines.append("")
    lines.append("[nodes]")
    for n, a in sorted(data["nodes"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"{n} = {_toml_value(a)}")
    path = os.path.join(directory, CLUSTER_FILE)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(directory)
