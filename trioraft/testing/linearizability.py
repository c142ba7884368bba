"""A linearizability checker for histories of register operations.

Theory of operation
===================

A *history* is what clients saw: each operation was invoked at some time and
either completed with an output (``"ok"``), definitely did not take effect
(``"fail"``), or left us not knowing (``"info"``: a timeout, a dropped
connection).  The history is *linearizable* when every operation can be given
one instant between its invocation and its completion such that, taken in
that order, the operations behave like a single register: a read returns the
latest write, ``cas(expected, new)`` succeeds exactly when the register holds
``expected``.

Per key.  The model is one independent register per key, so a history is
linearizable iff each key's sub-history is (linearizability is *local*,
Herlihy & Wing 1990): per-key linearizations can be merged into one total
order because every constraint between operations is either within one key
(the model) or real-time order, which a merge by linearization instant keeps.
Each key is checked on its own, which keeps the search space small.

Search.  Wing & Gong's algorithm with Lowe's memoization ("just-in-time
linearization"; the same scheme as Knossos and Porcupine).  Call and return
events sit in one time-ordered doubly linked list.  An operation may be
linearized next iff its call comes before the first remaining return, that
is, it was invoked before the earliest completion among the operations not yet
linearized.  The search scans the list from its head: at a call it applies the
operation to the model; if the model accepts and the pair (set of linearized
operations, model state) has not been seen before, it records the pair,
pushes the operation with the previous state, unlinks the operation's call
and return, and restarts from the head.  Reaching a return means that
operation cannot be linearized after the current prefix, so the search pops
the last choice, relinks it and tries the next candidate after it.  The
history is linearizable once every ``"ok"`` operation is linearized, and
rejected when backtracking empties the stack.  The loop is iterative
(explicit stack, no recursion); the linearized set is a Python ``int`` bitset.

The cache is what makes this practical: two prefixes that linearize the same
set of operations and leave the register in the same state have the same
futures, so each (set, state) pair is expanded once.  Concurrent reads of one
value, for instance, are not permuted.

Outcomes.  ``"fail"`` operations are left out.  An ``"info"`` operation has no
return event (it completes at +infinity): it may be linearized anywhere after
its invocation, or never, since the search stops as soon as every ``"ok"``
operation is placed.  An ``"info"`` read tells nothing and is dropped; an
``"info"`` cas is applied as "swap if the register holds ``expected``", which
the model always accepts.  An ``"info"`` write whose value no read returns
and no successful cas expects is dropped too when the key has no failed cas
(only a failed cas can make use of a value nobody observed), which is the
common case for timeouts in chaos tests and keeps them from widening the
search.

Cost.  Each step is one list entry; in the worst case the search is
exponential in the concurrency (the number of operations open at once), as
the problem is NP-complete, but with the cache a linearizable history with a
few dozen clients takes a small multiple of its length in steps.  ``budget``
bounds the steps per key (and ``timeout`` the wall-clock time); running out
gives ``Result.ok is None`` ("unknown") rather than a hang.  A step costs
about a microsecond.

Values must be hashable (they are cached) and are compared with ``==``; a
delete is a write of None.

Why this is one file past 600 lines: the theory above is a tenth of it,
and the rest is one checker: :class:`Op` and :class:`Result`, the per-key
filtering (``_relevant``), the search (``_Search``) and the recorder
(:class:`History`) that builds the operations it checks, with one meaning
of ``"ok"``/``"fail"``/``"info"`` throughout.  The seam, if it grows, is
:class:`History` (a recorder with no part in the search); not split yet.

Example::

    h = History()
    w = h.invoke("c1", "x", "write", 1)
    r = h.invoke("c2", "x", "read")
    h.ok(w)
    h.ok(r, 1)
    assert check(h.ops()).ok
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Final, Literal

__all__ = ["DEFAULT_BUDGET", "Call", "History", "Op", "Result", "check", "check_key"]

Kind = Literal["read", "write", "cas"]
Status = Literal["ok", "fail", "info"]

DEFAULT_BUDGET: Final = 5_000_000
"""Search steps allowed per key (about a microsecond each)."""

_KINDS: Final = ("read", "write", "cas")
_STATUSES: Final = ("ok", "fail", "info")

# Model transitions, one code per (kind, outcome).
_READ: Final = 0  # ok read: state must equal the output
_WRITE: Final = 1  # ok or info write
_CAS_OK: Final = 2  # ok cas that swapped: state must equal expected
_CAS_NO: Final = 3  # ok cas that did not swap: state must differ from expected
_CAS_MAYBE: Final = 4  # info cas: swaps if state equals expected, else no-op

_WINDOW: Final = 24  # ops shown around a failure
_TAIL: Final = 6  # linearized ops shown before a failure
_STATES: Final = 8  # distinct model states shown for the failing op


@dataclass(frozen=True, slots=True)
class Op:
    """One client operation on one key.

    Attributes:
        process: The client that issued it (for reports only).
        key: The register it acts on.
        kind: ``"read"``, ``"write"`` or ``"cas"``.
        value: The value written, or the new value of a cas.
        expected: The value a cas expects.
        output: What a read returned, or whether a cas swapped (``bool``).
        invoke: When the client sent it (any monotonic clock).
        complete: When the client got the answer; ignored (+inf) for
            ``"info"`` operations.
        status: ``"ok"`` (completed with ``output``), ``"fail"`` (definitely
            not applied) or ``"info"`` (unknown: may take effect at any time
            after ``invoke``, or never).
        index: Position in the recorded history, for reports.
    """

    process: Hashable
    key: Hashable
    kind: Kind
    value: Hashable = None
    expected: Hashable = None
    output: Hashable = None
    invoke: float = 0.0
    complete: float = math.inf
    status: Status = "info"
    index: int = -1

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown kind {self.kind!r}")
        if self.status not in _STATUSES:
            raise ValueError(f"unknown status {self.status!r}")
        if self.status == "ok":
            if not self.complete >= self.invoke:
                raise ValueError(f"{self}: completes before it is invoked")
            if self.kind == "cas" and not isinstance(self.output, bool):
                raise ValueError(f"{self}: a completed cas needs a bool output")

    def __str__(self) -> str:
        if self.kind == "read":
            call = f"read({self.key!r})"
        elif self.kind == "write":
            call = f"write({self.key!r}, {self.value!r})"
        else:
            call = f"cas({self.key!r}, {self.expected!r} -> {self.value!r})"
        if self.status == "ok" and self.kind != "write":
            call += f" = {self.output!r}"
        end = "inf" if self.status == "info" else f"{self.complete:g}"
        return f"#{self.index} {self.process!r} {call} [{self.invoke:g}, {end}] {self.status}"


@dataclass(frozen=True)
class Result:
    """The verdict of :func:`check` or :func:`check_key`.

    ``ok`` is True (linearizable), False (not) or None (the budget ran out
    first).  For a failure, ``key`` is the register, ``op`` the operation
    that could not be linearized after the longest linearizable prefix found,
    ``states`` the register values it was tried against, ``linearized`` the
    end of that prefix and ``window`` the operations around it.
    :meth:`explain` renders all of it.
    """

    ok: bool | None
    key: Hashable = None
    op: Op | None = None
    states: tuple[Hashable, ...] = ()
    linearized: tuple[Op, ...] = ()
    window: tuple[Op, ...] = ()
    steps: int = 0
    keys: int = 0

    def explain(self) -> str:
        if self.ok:
            return f"linearizable ({self.keys} keys, {self.steps} steps)"
        if self.ok is None:
            return f"unknown: search budget exhausted on key {self.key!r} ({self.steps} steps)"
        lines = [f"key {self.key!r} is not linearizable ({self.steps} steps)"]
        lines.append(f"  cannot linearize: {self.op}")
        states = ", ".join(repr(s) for s in self.states)
        lines.append(f"  register value(s) when it had to take effect: {states}")
        if self.linearized:
            lines.append("  longest linearizable prefix ends:")
            lines.extend(f"    {op}" for op in self.linearized)
        else:
            lines.append("  (no operation could be linearized before it)")
        lines.append("  operations around it:")
        lines.extend(f"    {op}" for op in self.window)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.explain()


class _OutOfBudget(Exception):
    pass


def check(
    history: Iterable[Op],
    *,
    initial: Hashable = None,
    initial_by_key: Mapping[Hashable, Hashable] | None = None,
    budget: int = DEFAULT_BUDGET,
    timeout: float | None = None,
) -> Result:
    """Check a history of register operations over any number of keys.

    Args:
        history: The operations, in any order.
        initial: Every register's value before the history.
        initial_by_key: Overrides ``initial`` for some keys.
        budget: Search steps allowed per key.
        timeout: Wall-clock seconds allowed in total, or None.

    Returns:
        The first key found not linearizable; else unknown if some key ran
        out of budget; else ok.
    """
    by_key: dict[Hashable, list[Op]] = {}
    for op in history:
        by_key.setdefault(op.key, []).append(op)
    deadline = None if timeout is None else time.monotonic() + timeout
    overrides = initial_by_key or {}
    steps = 0
    unknown: Result | None = None
    for key, ops in by_key.items():
        left = None if deadline is None else deadline - time.monotonic()
        res = check_key(ops, initial=overrides.get(key, initial), budget=budget, timeout=left)
        steps += res.steps
        if res.ok is False:
            return replace(res, steps=steps, keys=len(by_key))
        if res.ok is None and unknown is None:
            unknown = res
    if unknown is not None:
        return replace(unknown, steps=steps, keys=len(by_key))
    return Result(ok=True, steps=steps, keys=len(by_key))


def check_key(
    ops: Sequence[Op],
    *,
    initial: Hashable = None,
    budget: int = DEFAULT_BUDGET,
    timeout: float | None = None,
) -> Result:
    """Check the operations of one register (their ``key`` is not looked at).

    Args:
        ops: The register's operations, in any order.
        initial: The register's value before the history.
        budget: Search steps allowed.
        timeout: Wall-clock seconds allowed, or None.
    """
    key = ops[0].key if ops else None
    kept, use_by = _relevant(ops)
    if not any(op.status == "ok" for op in kept):
        return Result(ok=True, key=key, keys=1)
    return _Search(kept, use_by, initial, budget, timeout).run(key)


def _relevant(ops: Sequence[Op]) -> tuple[list[Op], list[float]]:
    """The operations the search needs, sorted by invocation, and their use-by times.

    An ``"info"`` op's use-by time is the last completion of an op that could
    tell whether it took effect: an ok read of its value, a cas expecting its
    value, any ok cas that did not swap.  Once everything that completes by
    then is linearized, the op may as well never take effect (see the module
    docstring); one invoked after its use-by time is dropped at once.
    """
    kept = [
        op for op in ops if op.status != "fail" and not (op.status == "info" and op.kind == "read")
    ]
    observed: dict[Hashable, float] = {}
    any_value = -math.inf
    for op in kept:
        if op.kind == "read":
            seen = op.output
        elif op.kind == "cas":
            seen = op.expected
            if op.status == "ok" and op.output is False:
                any_value = max(any_value, op.complete)
        else:
            continue
        end = math.inf if op.status == "info" else op.complete
        observed[seen] = max(observed.get(seen, -math.inf), end)
    use_by = [
        math.inf if op.status == "ok" else max(any_value, observed.get(op.value, -math.inf))
        for op in kept
    ]
    pairs = sorted(
        ((op, u) for op, u in zip(kept, use_by, strict=True) if u >= op.invoke),
        key=lambda pair: pair[0].invoke,
    )
    return [op for op, _ in pairs], [u for _, u in pairs]


def _code(op: Op) -> int:
    if op.kind == "read":
        return _READ
    if op.kind == "write":
        return _WRITE
    if op.status == "info":
        return _CAS_MAYBE
    return _CAS_OK if op.output else _CAS_NO


class _Search:
    def __init__(
        self,
        ops: list[Op],
        use_by: list[float],
        initial: Hashable,
        budget: int,
        timeout: float | None,
    ) -> None:
        self.ops = ops
        self.use_by = use_by
        self.initial = initial
        self.budget = budget
        self.deadline = None if timeout is None else time.monotonic() + timeout
        # Events: (time, 0 call / 1 return, op).  A return at the same instant
        # as a call sorts after it: touching intervals count as concurrent.
        events: list[tuple[float, int, int]] = []
        for i, op in enumerate(ops):
            events.append((op.invoke, 0, i))
            if op.status == "ok":
                events.append((op.complete, 1, i))
        events.sort()
        self.n_events = len(events)
        self.ev_op = [i for _, _, i in events]
        self.ev_time = [t for t, _, _ in events]
        self.ev_call = [kind == 0 for _, kind, _ in events]
        self.op_call = [0] * len(ops)
        self.op_ret = [-1] * len(ops)
        for e, (_, kind, i) in enumerate(events):
            if kind == 0:
                self.op_call[i] = e
            else:
                self.op_ret[i] = e
        # Failure report: the deepest point where a return forced a backtrack.
        self.best_depth = -1
        self.best_op = -1
        self.best_states: list[Hashable] = []
        self.best_tail: list[int] = []

    def run(self, key: Hashable) -> Result:
        ops = self.ops
        n_ev = self.n_events
        head = n_ev  # sentinel
        nxt = [*range(1, n_ev + 1), -1]
        nxt[n_ev - 1] = -1
        nxt[head] = 0
        prv = [head, *range(0, n_ev - 1), -1]
        ev_op, ev_call, ev_time = self.ev_op, self.ev_call, self.ev_time
        use_by = self.use_by
        op_call = self.op_call
        codes = [_code(op) for op in ops]
        values = [op.value for op in ops]
        expects = [op.expected if op.kind == "cas" else op.output for op in ops]
        is_ok = [1 if op.status == "ok" else 0 for op in ops]
        remaining = sum(is_ok)

        state: Hashable = self.initial
        lin = 0
        # (op, state before it, forced): see "forced" below.
        stack: list[tuple[int, Hashable, bool]] = []
        cache: set[tuple[int, Hashable]] = set()
        steps = 0
        budget = self.budget
        deadline = self.deadline
        entry = head
        while remaining:
            steps += 1
            if steps > budget or (
                deadline is not None and not steps & 0x3FF and time.monotonic() > deadline
            ):
                return Result(ok=None, key=key, steps=steps, keys=1)
            dead = False
            if entry == head:
                # At a new prefix.  A candidate that leaves the register as it
                # is and fits it (a read of the current value, a cas that
                # fails on it) is forced: if any linearization extends this
                # prefix, one places that op next (move it to the front; it is
                # minimal, so real time allows it).  So it is the only branch.
                e = nxt[head]
                forced = -1
                stale: list[int] = []
                while e != -1 and ev_call[e]:
                    steps += 1
                    i = ev_op[e]
                    code = codes[i]
                    if (code == _READ and state == expects[i]) or (
                        code == _CAS_NO and state != expects[i]
                    ):
                        forced = i
                        break
                    if not is_ok[i]:
                        stale.append(i)
                    e = nxt[e]
                if forced < 0 and stale:
                    # Every op completing before the first remaining return is
                    # linearized: an info op whose use-by time is past is
                    # dropped, which is as safe as a forced read.
                    first_return = math.inf if e == -1 else ev_time[e]
                    forced = next((i for i in stale if use_by[i] < first_return), -1)
                if forced >= 0:
                    grown = lin | (1 << forced)
                    seen = (grown, state)
                    if seen in cache:
                        dead = True
                    else:
                        cache.add(seen)
                        stack.append((forced, state, True))
                        lin = grown
                        remaining -= is_ok[forced]
                        self._unlink(nxt, prv, forced)
                        continue
                else:
                    entry = nxt[head]
            if dead or entry == -1 or not ev_call[entry]:
                # A completion came before anything fits: this prefix is a dead
                # end.  Undo choices back to the last one that had alternatives.
                if not dead and entry != -1 and len(stack) >= self.best_depth:
                    self._note_failure(ev_op[entry], stack, state)
                while True:
                    if not stack:
                        return self._failure(key, steps)
                    i, state, was_forced = stack.pop()
                    lin ^= 1 << i
                    remaining += is_ok[i]
                    self._relink(nxt, prv, i)
                    if not was_forced:
                        break
                entry = nxt[op_call[i]]
                continue
            i = ev_op[entry]
            code = codes[i]
            if code == _WRITE:
                accepted = True
                new = values[i]
            elif code == _CAS_OK:
                accepted = state == expects[i]
                new = values[i]
            elif code == _CAS_MAYBE:
                accepted = True
                new = values[i] if state == expects[i] else state
            else:  # the state-preserving kinds, which would have been forced
                accepted = False
                new = state
            if accepted:
                grown = lin | (1 << i)
                seen = (grown, new)
                if seen not in cache:
                    cache.add(seen)
                    stack.append((i, state, False))
                    state = new
                    lin = grown
                    remaining -= is_ok[i]
                    self._unlink(nxt, prv, i)
                    entry = head
                    continue
            entry = nxt[entry]
        return Result(ok=True, key=key, steps=steps, keys=1)

    def _unlink(self, nxt: list[int], prv: list[int], i: int) -> None:
        """Take op ``i``'s call and return out of the event list."""
        for e in (self.op_call[i], self.op_ret[i]):
            if e >= 0:
                nxt[prv[e]] = nxt[e]
                if nxt[e] != -1:
                    prv[nxt[e]] = prv[e]

    def _relink(self, nxt: list[int], prv: list[int], i: int) -> None:
        """Undo :meth:`_unlink` (in reverse order, as dancing links require)."""
        for e in (self.op_ret[i], self.op_call[i]):
            if e >= 0:
                nxt[prv[e]] = e
                if nxt[e] != -1:
                    prv[nxt[e]] = e

    def _note_failure(
        self, blocked: int, stack: list[tuple[int, Hashable, bool]], state: Hashable
    ) -> None:
        depth = len(stack)
        if depth > self.best_depth:
            self.best_depth = depth
            self.best_op = blocked
            self.best_states = [state]
            self.best_tail = [i for i, _, _ in stack[-_TAIL:]]
        elif (
            blocked == self.best_op
            and len(self.best_states) < _STATES
            and state not in self.best_states
        ):
            self.best_states.append(state)

    def _failure(self, key: Hashable, steps: int) -> Result:
        ops = self.ops
        op = ops[self.best_op]
        tail = [ops[i] for i in self.best_tail]
        # Everything overlapping the failing op or the end of the prefix.
        start = min([op.invoke, *(t.complete for t in tail[-1:] if t.status == "ok")])
        near = [
            o
            for o in ops
            if o.invoke <= op.complete and (o.status == "info" or o.complete >= start)
        ]
        near.sort(key=lambda o: abs(o.invoke - op.invoke))
        window = sorted(near[:_WINDOW], key=lambda o: (o.invoke, o.index))
        return Result(
            ok=False,
            key=key,
            op=op,
            states=tuple(self.best_states),
            linearized=tuple(tail),
            window=tuple(window),
            steps=steps,
            keys=1,
        )


@dataclass
class _Pending:
    process: Hashable
    key: Hashable
    kind: Kind
    value: Hashable
    expected: Hashable
    invoke: float
    index: int


class History:
    """Records client calls as they happen, for :func:`check`.

    A client records the invocation just before sending and the outcome just
    after the answer (or the timeout).  Times come from ``clock``; the
    default is a counter bumped at every event, which is all the checker
    needs when calls are recorded from one thread, as under Trio.  A call
    still pending when :meth:`ops` is called counts as ``"info"``.

    Example::

        h = History()
        with h.call(client_id, "x", "write", 3):
            await client.put("x", 3)           # an exception records a timeout
        with h.call(client_id, "x", "read") as c:
            c.ok(await client.get("x"))
        assert check(h.ops()).ok
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock
        self._tick = 0.0
        self._pending: dict[int, _Pending] = {}
        self._busy: set[Hashable] = set()
        self._done: list[Op] = []
        self._next = 0

    def _now(self, at: float | None) -> float:
        if at is not None:
            return at
        if self._clock is not None:
            return self._clock()
        self._tick += 1
        return self._tick

    def invoke(
        self,
        process: Hashable,
        key: Hashable,
        kind: Kind,
        value: Hashable = None,
        *,
        expected: Hashable = None,
        at: float | None = None,
    ) -> int:
        """Record that ``process`` sends an operation; returns its handle.

        ``value`` is the value written (the new value for a cas).  A process
        runs one operation at a time.
        """
        if kind not in _KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        if process in self._busy:
            raise ValueError(f"process {process!r} already has an operation pending")
        handle = self._next
        self._next += 1
        self._busy.add(process)
        self._pending[handle] = _Pending(process, key, kind, value, expected, self._now(at), handle)
        return handle

    def _finish(self, handle: int, status: Status, output: Hashable, complete: float) -> Op:
        try:
            p = self._pending.pop(handle)
        except KeyError:
            raise ValueError(f"operation {handle} is not pending") from None
        self._busy.discard(p.process)
        op = Op(
            p.process,
            p.key,
            p.kind,
            p.value,
            p.expected,
            output,
            p.invoke,
            complete,
            status,
            p.index,
        )
        self._done.append(op)
        return op

    def ok(self, handle: int, output: Hashable = None, *, at: float | None = None) -> Op:
        """The operation completed: ``output`` is the value read or the cas verdict."""
        return self._finish(handle, "ok", output, self._now(at))

    def fail(self, handle: int, *, at: float | None = None) -> Op:
        """The operation certainly did not take effect (and never will)."""
        return self._finish(handle, "fail", None, self._now(at))

    def timeout(self, handle: int) -> Op:
        """The outcome is unknown: it may take effect at any later time, or never."""
        return self._finish(handle, "info", None, math.inf)

    @contextmanager
    def call(
        self,
        process: Hashable,
        key: Hashable,
        kind: Kind,
        value: Hashable = None,
        *,
        expected: Hashable = None,
    ) -> Iterator[Call]:
        """Record one call around the block that makes it.

        Inside, call ``c.ok(output)`` or ``c.fail()``.  A write that leaves
        the block normally is recorded ok; an exception (a timeout, a
        cancellation, a lost connection) records the outcome as unknown
        unless ``c.fail()`` was called, and propagates.
        """
        c = Call(self, self.invoke(process, key, kind, value, expected=expected))
        try:
            yield c
        except BaseException:
            if c.op is None:
                self.timeout(c.handle)
            raise
        if c.op is None:
            if kind != "write":
                self.timeout(c.handle)
                raise ValueError(f"{kind} call left without c.ok(output) or c.fail()")
            c.ok()

    def ops(self) -> list[Op]:
        """Everything recorded so far, in invocation order; pending calls as ``"info"``."""
        pending = [
            Op(
                p.process,
                p.key,
                p.kind,
                p.value,
                p.expected,
                None,
                p.invoke,
                math.inf,
                "info",
                p.index,
            )
            for p in self._pending.values()
        ]
        return sorted([*self._done, *pending], key=lambda op: op.index)

    def finished(self) -> Sequence[Op]:
        """The operations that have an outcome, in the order they finished."""
        return self._done

    def __len__(self) -> int:
        return len(self._done) + len(self._pending)


@dataclass
class Call:
    """A call being recorded by :meth:`History.call`."""

    history: History
    handle: int
    op: Op | None = field(default=None)

    def ok(self, output: Hashable = None) -> None:
        self.op = self.history.ok(self.handle, output)

    def fail(self) -> None:
        self.op = self.history.fail(self.handle)
