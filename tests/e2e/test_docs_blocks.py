"""Every code block of README.md and docs/quickstart.md, run as a reader runs it.

Each document runs in a directory of its own, block after block, in the order
written; a block that fails (a command's exit code, a traceback, a script that
does not finish) fails the test, naming the document, the line and the output.
What a reader does by hand and a test cannot do literally follows these rules,
and only these:

==========================================  =====================================================
the document says                           the test
==========================================  =====================================================
``python3 -m pip install ... [&& ...]``     runs the whole line in the repository (where the
                                            reader is), with the ``python3`` of a virtual
                                            environment made for the test (it sees the
                                            system's packages, so only the build backend comes
                                            from the configured index); its ``bin`` comes first
                                            on PATH for every later command
``python3 -m pytest ...``                   adds ``--collect-only``: the suite must collect
                                            (running it from inside itself would recurse)
``docstore cluster`` (until Ctrl-C)         runs in the background with ``--base-port`` of
                                            three free ports; the test waits for its banner and,
                                            after the document's last block, sends SIGINT (as
                                            Ctrl-C) and expects exit 0 and "every node stopped"
``docstore watch ...`` (until Ctrl-C)       runs in the background until the end of its block,
                                            then SIGINT: exit 0, every line printed is JSON
``--seeds N`` of ``trioraft.testing.sim``   20 seeds unless TRIORAFT_SLOW is set
a python block with ``trioraft.open_node``  saved as node.py and run as the three processes it
                                            names (``python3 node.py 1``, ``2``, ``3``), its
                                            ports 7201-7203 replaced by free ones; one prints
                                            ``b'hello'``, then SIGINT: all three exit 0
another python block                        saved to a file and run with ``python3 FILE``
another command                             ``bash -c COMMAND``: exit 0, no traceback
==========================================  =====================================================

A block in a language not listed here fails the test, so a new kind of block
cannot go untested.  ``test_runner_fails_on_a_broken_block`` shows the runner
fails when a block does.  It takes about a minute (two ``pip install``, the
suite's collection, two clusters), so it is marked slow; its short form runs
every block too, with fewer simulator seeds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.conftest import SLOW
from tests.e2e.test_cluster_cli import free_base_port

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ["README.md", "docs/quickstart.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
COMMAND_LIMIT = 120  # seconds for one command (pip install and collection included)


@dataclasses.dataclass
class Block:
    doc: str
    line: int
    lang: str
    text: str

    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def code_blocks(doc: str, text: str | None = None) -> list[Block]:
    if text is None:
        text = (ROOT / doc).read_text()
    return [
        Block(doc, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2))
        for m in FENCE.finditer(text)
    ]


def commands(block: Block) -> Iterator[str]:
    """The block's command lines (continuations joined, blank and comment lines left out)."""
    pending = ""
    for line in block.text.splitlines():
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        if line.strip() and not line.lstrip().startswith("#"):
            yield line.strip()


class Reader:
    """Runs one document's blocks in ``workdir``, as the module docstring says."""

    def __init__(self, workdir: pathlib.Path, venv: pathlib.Path) -> None:
        self.workdir = workdir
        self.venv = venv
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("DOCSTORE_", "PYTHONPATH"))
        }
        self.env["PATH"] = f"{venv / 'bin'}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["VIRTUAL_ENV"] = str(venv)
        self.cluster: subprocess.Popen[bytes] | None = None
        self.cluster_out = workdir / "docstore-cluster.out"
        self.count = 0
        self.ran: list[str] = []  # what ran, for the checks on coverage

    # ----------------------------------------------------------------- running

    def run(self, block: Block, command: str, cwd: pathlib.Path | None = None) -> str:
        r = subprocess.run(
            ["bash", "-c", command],
            cwd=cwd or self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_LIMIT,
        )
        self.ran.append(command)
        if r.returncode != 0 or "Traceback" in r.stderr:
            raise AssertionError(
                f"{block.where()}: `{command}` exited {r.returncode}\n"
                f"stdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}"
            )
        return r.stdout

    def start(self, command: list[str], out: pathlib.Path) -> subprocess.Popen[bytes]:
        with open(out, "wb") as f:
            return subprocess.Popen(
                command,
                cwd=self.workdir,
                env=self.env,
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    @staticmethod
    def interrupt(p: subprocess.Popen[bytes], limit: float = 30) -> int:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
        try:
            return p.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            return -9

    # ------------------------------------------------------------------ blocks

    def block(self, block: Block) -> None:
        if block.lang == "sh":
            self.shell(block)
        elif block.lang == "python" and "trioraft.open_node" in block.text:
            self.three_processes(block)
        elif block.lang == "python":
            self.count += 1
            script = self.workdir / f"block{self.count}.py"
            script.write_text(block.text)
            self.run(block, f"python3 {script.name}")
        else:
            raise AssertionError(f"{block.where()}: no rule runs a {block.lang or 'plain'} block")

    def shell(self, block: Block) -> None:
        watches: list[tuple[subprocess.Popen[bytes], pathlib.Path]] = []
        for command in commands(block):
            parts = [p.strip() for p in command.split(" && ")]
            if parts[0].startswith("python3 -m pip install"):
                line = " && ".join(_collect_only(p) for p in parts if not _is_cluster(p))
                self.run(block, line, cwd=ROOT)
                if any(_is_cluster(p) for p in parts):
                    self.start_cluster(block, next(p for p in parts if _is_cluster(p)))
            elif _is_cluster(command):
                self.start_cluster(block, command)
            elif command.startswith("docstore watch"):
                out = self.workdir / f"watch{len(watches)}.out"
                watches.append((self.start(shlex.split(_uncomment(command)), out), out))
                self.ran.append(command)
            elif command.startswith("python3 -m trioraft.testing.sim") and not SLOW:
                self.run(block, re.sub(r"--seeds \d+", "--seeds 20", command))
            else:
                self.run(block, command)
        for p, out in watches:
            time.sleep(0.5)  # let it print what the later commands changed
            code = self.interrupt(p)
            text = out.read_text()
            assert code == 0, f"{block.where()}: docstore watch exited {code}: {text}"
            for line in text.splitlines():
                json.loads(line)  # each change is a JSON line

    def start_cluster(self, block: Block, command: str) -> None:
        assert self.cluster is None, f"{block.where()}: a second `docstore cluster`"
        args = [*shlex.split(_uncomment(command)), "--base-port", str(free_base_port())]
        self.cluster = self.start(args, self.cluster_out)
        self.ran.append(command)
        deadline = time.monotonic() + 60
        while "Ctrl-C stops every node" not in self.cluster_out.read_text():
            if self.cluster.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"{block.where()}: `{command}` did not start: {self.cluster_out.read_text()}"
                )
            time.sleep(0.1)

    def three_processes(self, block: Block) -> None:
        text = block.text
        ports = _free_ports(3)
        for i, port in enumerate(ports, 1):
            assert f"127.0.0.1:720{i}" in text, f"{block.where()}: the snippet's ports changed"
            text = text.replace(f"127.0.0.1:720{i}", f"127.0.0.1:{port}")
        (self.workdir / "node.py").write_text(text)
        procs = [
            self.start(["python3", "node.py", str(n)], self.workdir / f"node{n}.out")
            for n in (1, 2, 3)
        ]
        self.ran.append("python3 node.py 1/2/3")
        try:
            deadline = time.monotonic() + 60
            while not any("b'hello'" in self._node_out(n) for n in (1, 2, 3)):
                dead = [n for n, p in enumerate(procs, 1) if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    outs = {n: self._node_out(n)[-1500:] for n in (1, 2, 3)}
                    raise AssertionError(
                        f"{block.where()}: no node printed b'hello' (exited: {dead}): {outs}"
                    )
                time.sleep(0.1)
        finally:
            codes = [self.interrupt(p) for p in procs]
        assert codes == [0, 0, 0], (block.where(), codes, [self._node_out(n) for n in (1, 2, 3)])

    def _node_out(self, n: int) -> str:
        return (self.workdir / f"node{n}.out").read_text()

    def finish(self) -> None:
        """Ctrl-C to the document's `docstore cluster`: every node stops, exit 0."""
        if self.cluster is None:
            return
        code = self.interrupt(self.cluster)
        text = self.cluster_out.read_text()
        assert code == 0 and "every node stopped" in text, (code, text[-2000:])

    def cleanup(self) -> None:
        if self.cluster is not None and self.cluster.poll() is None:
            self.cluster.kill()
            self.cluster.wait()
        for pid_file in self.workdir.glob("docstore-data/node*.pid"):
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


def _is_cluster(command: str) -> bool:
    return _uncomment(command) == "docstore cluster" or _uncomment(command).startswith(
        "docstore cluster "
    )


def _uncomment(command: str) -> str:
    return " ".join(shlex.split(command, comments=True))


def _collect_only(command: str) -> str:
    if command.startswith("python3 -m pytest"):
        return command.replace("python3 -m pytest", "python3 -m pytest --collect-only", 1)
    return command


def _free_ports(n: int) -> list[int]:
    base = free_base_port(n)
    return [base + i for i in range(n)]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("docs-venv") / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(path)],
        check=True,
        timeout=120,
    )
    return path


@pytest.mark.parametrize("doc", DOCS)
def test_every_block_runs_as_written(doc: str, venv: pathlib.Path, tmp_path: pathlib.Path) -> None:
    blocks = code_blocks(doc)
    assert blocks, f"{doc} has no code blocks"
    reader = Reader(tmp_path, venv)
    try:
        for block in blocks:
            reader.block(block)
        reader.finish()
    finally:
        reader.cleanup()
    # Every command line of every block ran (a rule that skipped one would show here).
    wanted = sum(len(list(commands(b))) for b in blocks if b.lang == "sh")
    ran_shell = len(reader.ran) - sum(b.lang == "python" for b in blocks)
    assert ran_shell >= wanted, (wanted, reader.ran)


def test_runner_fails_on_a_broken_block(tmp_path: pathlib.Path) -> None:
    doc = "```sh\ntrue\nfalse   # a command that fails\n```\n"
    reader = Reader(tmp_path, pathlib.Path(sys.prefix))
    with pytest.raises(AssertionError, match=r"`false   # a command that fails` exited 1"):
        for block in code_blocks("fake.md", doc):
            reader.block(block)
    with pytest.raises(AssertionError, match="exited 1"):
        reader.block(Block("fake.md", 1, "python", "raise SystemExit(1)\n"))
    with pytest.raises(AssertionError, match="no rule runs a toml block"):
        reader.block(Block("fake.md", 1, "toml", "a = 1\n"))


def test_blocks_are_found_with_their_lines() -> None:
    text = "# T\n\n```sh\necho a \\\n  b\n# only a comment\n\necho c\n```\n"
    (block,) = code_blocks("x.md", text)
    assert block.line == 3 and block.lang == "sh"
    assert list(commands(block)) == ["echo a    b", "echo c"]
