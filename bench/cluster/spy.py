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


#: Leaf functions that are system calls: a sample there is mostly waiting, not
#: Python's CPU.  On a loaded machine a loopback send() wakes the receiver,
#: which may take the core while the sender is still "in" send(): half the
#: wall-clock samples of a leader sat there while /proc gave it 1-3% system time.
SYSCALL_LEAVES = ("_nonblocking_helper", "get_events", "OsFileHandle.sync")


def summarize_spy(path: str, top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks,
    for all samples, then for the samples outside system calls (where the CPU goes)."""
    stacks: list[tuple[str, list[str], int]] = []
    with open(path) as f:
        for line in f:
            stack, _, n_s = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            frames = stack.split(";")
            stacks.append((frames[0], [_frame_name(fr) for fr in frames[1:]], int(n_s)))
    if not stacks:
        return "no samples"
    busy = [s for s in stacks if not (s[1] and _function(s[1][-1]).endswith(SYSCALL_LEAVES))]
    out = _shares(stacks, top, "")
    out.append("")
    out += _shares(busy, top, "outside system calls: ")
    return "\n".join(out)


def _shares(stacks: list[tuple[str, list[str], int]], top: int, what: str) -> list[str]:
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    for thread, names, n in stacks:
        total += n
        threads[thread] = threads.get(thread, 0) + n
        if names:
            own[names[-1]] = own.get(names[-1], 0) + n
        for name in set(names):
            incl[name] = incl.get(name, 0) + n
    if not total:
        return [f"{what}no samples"]
    out = [
        f"{what}{total} samples; by thread: "
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
    return out


def _function(name: str) -> str:
    return name.partition(" (")[0]


def _frame_name(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    return f"{name} ({os.path.basename(file)})" if file else name
