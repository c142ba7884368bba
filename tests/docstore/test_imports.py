"""What importing the client loads: not the node's code."""

from __future__ import annotations

import subprocess
import sys


def loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(out.stdout.split())


def test_import_docstore_loads_neither_the_server_nor_the_raft_runtime() -> None:
    mods = loaded_after("import docstore")
    assert "docstore.client" in mods and "docstore.database" in mods
    assert not {m for m in mods if m == "docstore.server" or m.startswith("trioraft.runtime")}


def test_the_runtime_names_of_trioraft_load_on_first_use() -> None:
    mods = loaded_after("import trioraft\nassert trioraft.Node.__name__ == 'Node'")
    assert "trioraft.runtime.node" in mods
