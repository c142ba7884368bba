"""trioraft.core must stay pure: no clock, no I/O, no trio (DESIGN.md layer rule 1)."""

import ast
import pathlib

import trioraft.core

FORBIDDEN = {"trio", "socket", "time", "os", "asyncio", "threading", "random", "datetime"}
# ``random`` may be passed in as an object (random.Random), never imported to draw from.


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_core_imports_nothing_impure() -> None:
    root = pathlib.Path(trioraft.core.__file__).parent
    files = sorted(root.rglob("*.py"))
    assert files, "no core modules found"
    bad = {str(f.relative_to(root)): _imports(f) & FORBIDDEN for f in files}
    assert {k: v for k, v in bad.items() if v} == {}


def test_purity_check_detects_an_import(tmp_path: pathlib.Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("import os.path\nfrom trio import sleep\nimport json\n")
    assert _imports(sample) & FORBIDDEN == {"os", "trio"}
