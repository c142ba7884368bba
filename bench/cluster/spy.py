"""Profiles under load: py-spy (or cProfile) of a process, summarised by function."""

from __future__ import annotations

import os
import shutil
import subprocess


def start_spy(pid: int, seconds: float, path: str) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy")
    if spy is None:
        return None
    cmd = [spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds)))]
    cmd += ["--rate", "250", "--threads", "--format", "raw", "--output", path, "--nonblocking"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def spy_result(proc: subprocess.Popen[bytes], path: str) -> str:
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0 and os.path.exists(path):
        return summarize_spy(path)
    return f"py-spy failed: {err.decode(errors='replace').strip()[-300:]}"


def summarize_spy(path: str, top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, n_s = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(n_s)
            total += n
            frames = stack.split(";")
            threads[frames[0]] = threads.get(frames[0], 0) + n
            names = [_frame_name(fr) for fr in frames[1:]]
            if names:
                own[names[-1]] = own.get(names[-1], 0) + n
            for name in set(names):
                incl[name] = incl.get(name, 0) + n
    if not total:
        return "no samples"
    out = [
        f"{total} samples; by thread: "
        + ", ".join(
            f"{k} {v / total:.0%}" for k, v in sorted(threads.items(), key=lambda kv: -kv[1])[:4]
        )
    ]
    out.append("self time:")
    for name, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {n / total:6.1%}  {name}")
    out.append("inclusive (function and what it calls):")
    for name, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {n / total:6.1%}  {name}")
    return "\n".join(out)


def _frame_name(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    return f"{name} ({os.path.basename(file)})" if file else name
