"""What a chaos run saw and what its checks found (:class:`ChaosReport`)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

from trioraft.testing.linearizability import Result

__all__ = ["ChaosReport"]


@dataclass
class ChaosReport:
    """What a run saw and what its checks found; :meth:`summary` prints it."""

    seed: int
    duration: float
    ops: Counter[str] = field(default_factory=Counter)
    faults: list[str] = field(default_factory=list)
    linearizable: Result | None = None
    final: Result | None = None
    final_values: dict[str, object] = field(default_factory=dict)
    digests: dict[int, object] = field(default_factory=dict)
    digests_equal: bool = False
    problems: list[str] = field(default_factory=list)
    #: What the run could not do (e.g. no clock jumps), not failures.
    notes: list[str] = field(default_factory=list)
    #: Failed checks of the system's own (counters, phantom reads...).
    violations: list[str] = field(default_factory=list)
    logs: dict[int, str] = field(default_factory=dict)
    elapsed: float = 0.0
    root: str = ""

    @property
    def ok(self) -> bool:
        return (
            not self.problems
            and not self.violations
            and self.linearizable is not None
            and self.linearizable.ok is True
            and self.final is not None
            and self.final.ok is True
            and self.digests_equal
        )

    def summary(self, *, logs: bool = False) -> str:
        lines = [f"chaos seed {self.seed}, {self.duration:g}s of faults, {self.elapsed:.1f}s total"]
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.ops.items()))
        lines.append(f"  ops: {ops}")
        kinds = Counter(
            f.split(" ", 1)[0] for f in self.faults if f != "heal all" and "(failed" not in f
        )
        lines.append(
            f"  faults ({kinds.total()}): "
            + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        )
        for name, res in (("history", self.linearizable), ("with final reads", self.final)):
            lines.append(f"  {name}: " + (res.explain() if res is not None else "not checked"))
        digests = {n: _short(d) for n, d in self.digests.items()}
        lines.append(f"  digests {'equal' if self.digests_equal else 'DIFFER'}: {digests}")
        lines.extend(f"  note: {v}" for v in self.notes)
        lines.extend(f"  violation: {v}" for v in self.violations)
        lines.extend(f"  problem: {p}" for p in self.problems)
        lines.append(f"  result: {'PASS' if self.ok else 'FAIL'} (run directory {self.root})")
        if logs or not self.ok:
            for n, tail in sorted(self.logs.items()):
                lines.append(f"  --- node {n} log tail ---")
                lines.extend("    " + t for t in tail.splitlines())
        return "\n".join(lines)


def _short(digest: object) -> str:
    """A digest answer, shortened for the summary."""
    text = json.dumps(digest, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12] if digest is not None else "none"
