"""The linearizability checker: known good and bad histories, properties, and its cost."""

from __future__ import annotations

import math
import random
from collections.abc import Hashable
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioraft.testing.linearizability import History, Op, check, check_key

NEVER = "never-written"


def w(p: int, value: Hashable, start: float, end: float, status: str = "ok") -> Op:
    return Op(p, "x", "write", value=value, invoke=start, complete=end, status=status)  # type: ignore[arg-type]


def r(p: int, output: Hashable, start: float, end: float) -> Op:
    return Op(p, "x", "read", output=output, invoke=start, complete=end, status="ok")


def cas(p: int, expected: Hashable, new: Hashable, swapped: bool, start: float, end: float) -> Op:
    return Op(
        p, "x", "cas", value=new, expected=expected, output=swapped, invoke=start, complete=end,
        status="ok",
    )  # fmt: skip


def timed_out(op: Op) -> Op:
    return replace(op, status="info", output=None, complete=math.inf)


# -- known good ------------------------------------------------------------------------------


def test_empty_and_sequential_histories_are_linearizable() -> None:
    assert check([]).ok
    h = [w(1, 1, 0, 1), r(1, 1, 2, 3), w(2, 2, 4, 5), r(3, 2, 6, 7), r(1, 2, 8, 9)]
    assert check(h).ok


def test_initial_value_is_none_unless_given() -> None:
    assert check([r(1, None, 0, 1)]).ok
    assert check([r(1, 0, 0, 1)]).ok is False
    assert check([r(1, 0, 0, 1)], initial=0).ok
    assert check([r(1, 0, 0, 1)], initial_by_key={"x": 0}).ok


def test_a_read_overlapping_a_write_may_see_either_value() -> None:
    for seen in (None, 1):
        assert check([w(1, 1, 0, 10), r(2, seen, 2, 3)]).ok


def test_concurrent_reads_may_order_concurrent_writes_differently_if_consistently() -> None:
    # Writes 1 and 2 overlap; one reader sees 2 then 1, so 2 went first.
    h = [w(1, 1, 0, 10), w(2, 2, 0, 10), r(3, 2, 1, 2), r(3, 1, 3, 4), r(4, 1, 5, 6)]
    assert check(h).ok
    # ...but then nobody may see 2 after having seen 1 with both writes done.
    assert check([*h, r(4, 2, 11, 12)]).ok is False


def test_cas_succeeds_only_on_the_expected_value() -> None:
    h = [w(1, 1, 0, 1), cas(2, 1, 5, True, 2, 3), cas(3, 1, 6, False, 4, 5), r(1, 5, 6, 7)]
    assert check(h).ok


def test_failed_operations_are_left_out() -> None:
    assert check([w(1, 1, 0, 1, status="fail"), r(2, None, 2, 3)]).ok


def test_keys_are_independent_registers() -> None:
    h = [
        w(1, 1, 0, 1),
        replace(w(1, 2, 2, 3), key="y"),
        r(2, 1, 4, 5),
        replace(r(2, 2, 4, 5), key="y"),
    ]
    assert check(h).ok


# -- known bad -------------------------------------------------------------------------------


def test_stale_read_is_rejected() -> None:
    h = [w(1, 1, 0, 1), w(1, 2, 2, 3), r(2, 1, 4, 5)]
    res = check(h)
    assert res.ok is False
    assert res.key == "x"
    assert res.op == h[2]
    assert res.states == (2,)
    text = res.explain()
    assert "not linearizable" in text and "read('x') = 1" in text


def test_lost_write_is_rejected() -> None:
    # Write 2 is acked, yet every later read still sees 1.
    h = [w(1, 1, 0, 1), w(2, 2, 2, 3), r(3, 1, 4, 5), r(1, 1, 6, 7), r(2, 1, 8, 9)]
    res = check(h)
    assert res.ok is False
    assert res.op == h[2]


def test_read_of_a_value_never_written_is_rejected() -> None:
    res = check([w(1, 1, 0, 1), r(2, 7, 0.5, 2)])
    assert res.ok is False
    assert res.states == (1,)


def test_read_of_a_failed_write_is_rejected() -> None:
    assert check([w(1, 1, 0, 1, status="fail"), r(2, 1, 2, 3)]).ok is False


def test_cas_success_with_the_wrong_expected_value_is_rejected() -> None:
    assert check([w(1, 1, 0, 1), cas(2, 0, 5, True, 2, 3)]).ok is False
    assert check([w(1, 1, 0, 1), cas(2, 1, 5, False, 2, 3)]).ok is False


def test_one_bad_key_among_good_ones_is_named() -> None:
    good = [replace(op, key=k) for k in ("a", "b") for op in (w(1, 1, 0, 1), r(2, 1, 2, 3))]
    bad = [replace(op, key="c") for op in (w(1, 1, 0, 1), w(1, 2, 2, 3), r(2, 1, 4, 5))]
    res = check([*good, *bad])
    assert (res.ok, res.key, res.keys) == (False, "c", 3)


# -- timeouts --------------------------------------------------------------------------------


def test_timed_out_write_that_shows_up_later_is_fine() -> None:
    h = [timed_out(w(1, 1, 0, 1)), r(2, None, 2, 3), r(2, 1, 10, 11), r(3, 1, 12, 13)]
    assert check(h).ok


def test_timed_out_write_that_never_shows_up_is_fine() -> None:
    h = [timed_out(w(1, 1, 0, 1)), r(2, None, 2, 3), r(2, None, 10, 11)]
    assert check(h).ok


def test_timed_out_write_that_shows_up_before_it_was_invoked_is_rejected() -> None:
    h = [r(2, 1, 0, 1), timed_out(w(1, 1, 2, 3))]
    assert check(h).ok is False


def test_timed_out_write_takes_effect_at_most_once() -> None:
    # Seen, then overwritten, then seen again: it cannot apply twice.
    h = [timed_out(w(1, 1, 0, 1)), r(2, 1, 2, 3), w(3, 2, 4, 5), r(2, 1, 6, 7)]
    assert check(h).ok is False


def test_unobserved_timed_out_write_can_explain_a_failed_cas() -> None:
    # Only the timed-out write of 5 can have made cas(0 -> 1) fail; it must not be pruned.
    h = [timed_out(w(1, 5, 0, 1)), cas(2, 0, 1, False, 2, 3)]
    assert check(h, initial=0).ok
    assert check(h[1:], initial=0).ok is False


def test_timed_out_cas_may_carry_a_timed_out_write_on() -> None:
    h = [
        timed_out(w(1, 5, 0, 1)),
        Op(2, "x", "cas", value=7, expected=5, invoke=2, status="info"),
        r(3, 7, 4, 5),
    ]
    assert check(h).ok
    assert check([h[0], r(3, 7, 4, 5)]).ok is False


# -- the History recorder --------------------------------------------------------------------


def test_history_records_calls_in_real_time_order() -> None:
    h = History()
    a = h.invoke("c1", "x", "write", 1)
    b = h.invoke("c2", "x", "read")
    h.ok(a)
    h.ok(b, 1)
    c = h.invoke("c1", "x", "cas", 2, expected=1)
    h.ok(c, True)
    d = h.invoke("c2", "x", "write", 9)
    h.fail(d)
    e = h.invoke("c3", "x", "write", 3)
    h.timeout(e)
    h.invoke("c4", "x", "write", 4)  # still pending: unknown
    ops = h.ops()
    assert [op.status for op in ops] == ["ok", "ok", "ok", "fail", "info", "info"]
    assert ops[4].complete == ops[5].complete == math.inf
    assert ops[0].invoke < ops[1].invoke < ops[0].complete < ops[1].complete
    assert len(h) == 6
    assert check(ops).ok


def test_history_keeps_one_call_per_process() -> None:
    h = History()
    a = h.invoke(1, "x", "read")
    with pytest.raises(ValueError, match="pending"):
        h.invoke(1, "x", "read")
    h.timeout(a)
    h.invoke(1, "x", "read")  # free again after the timeout
    with pytest.raises(ValueError, match="not pending"):
        h.ok(a, None)


def test_history_call_records_exceptions_as_unknown() -> None:
    h = History(clock=iter(range(100)).__next__)
    with h.call(1, "x", "write", 1):
        pass
    with h.call(1, "x", "read") as c:
        c.ok(1)
    with pytest.raises(TimeoutError), h.call(2, "x", "write", 2):
        raise TimeoutError
    with pytest.raises(ConnectionError), h.call(3, "x", "write", 3) as c:
        c.fail()
        raise ConnectionError
    with pytest.raises(ValueError, match="without"), h.call(4, "x", "read"):
        pass
    assert [(op.process, op.status) for op in h.ops()] == [
        (1, "ok"), (1, "ok"), (2, "info"), (3, "fail"), (4, "info"),
    ]  # fmt: skip
    assert h.ops()[1].invoke == 2


def test_op_validation() -> None:
    with pytest.raises(ValueError, match="kind"):
        Op(1, "x", "delete")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="before"):
        r(1, None, 5, 4)
    with pytest.raises(ValueError, match="bool"):
        Op(1, "x", "cas", status="ok", complete=1)


# -- generated histories ---------------------------------------------------------------------


def simulate(
    rng: random.Random,
    n: int,
    clients: int,
    *,
    keys: tuple[str, ...] = ("x",),
    p_timeout: float = 0.0,
    p_fail: float = 0.0,
) -> list[Op]:
    """Run a correct register: clients call one after another with random latencies.

    Each op takes effect at a random instant inside its interval; ops are
    applied in the order of those instants.  A timed-out op took effect or
    not, at random; a failed one did not.
    """
    free = [rng.random() for _ in range(clients)]
    calls = []
    for seq in range(n):
        c = min(range(clients), key=free.__getitem__)
        start = free[c]
        at = start + rng.random()
        end = at + rng.random()
        free[c] = end + rng.random() / 10
        calls.append((at, start, end, c, seq))
    calls.sort()
    reg: dict[str, Hashable] = dict.fromkeys(keys)
    ops = []
    for at, start, end, c, seq in calls:
        del at
        key = rng.choice(keys)
        roll = rng.random()
        outcome = rng.random()
        status = "fail" if outcome < p_fail else "info" if outcome < p_fail + p_timeout else "ok"
        applied = status == "ok" or (status == "info" and rng.random() < 0.5)
        if roll < 0.5:
            op = Op(c, key, "read", output=reg[key], invoke=start, complete=end, status="ok")
        elif roll < 0.8:
            if applied:
                reg[key] = seq
            op = Op(c, key, "write", value=seq, invoke=start, complete=end, status=status)  # type: ignore[arg-type]
        else:
            expected = reg[key] if rng.random() < 0.6 else rng.choice([None, seq - 1])
            swapped = reg[key] == expected
            if applied and swapped:
                reg[key] = seq
            op = Op(
                c, key, "cas", value=seq, expected=expected, output=swapped, invoke=start,
                complete=end, status=status,  # type: ignore[arg-type]
            )  # fmt: skip
        if op.status == "info":
            op = replace(op, output=None, complete=math.inf)
        elif op.status == "fail":
            op = replace(op, output=None)
        ops.append(replace(op, index=seq))
    return ops


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(1, 60),
    clients=st.integers(1, 6),
    n_keys=st.integers(1, 3),
    p_timeout=st.sampled_from([0.0, 0.1, 0.3]),
)
def test_histories_of_a_correct_register_are_accepted(
    seed: int, n: int, clients: int, n_keys: int, p_timeout: float
) -> None:
    keys = ("a", "b", "c")[:n_keys]
    ops = simulate(random.Random(seed), n, clients, keys=keys, p_timeout=p_timeout, p_fail=0.1)
    res = check(ops)
    assert res.ok, res.explain()


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(1, 60),
    clients=st.integers(1, 6),
    p_timeout=st.sampled_from([0.0, 0.1, 0.3]),
    pick=st.integers(0, 1000),
)
def test_a_read_of_a_never_written_value_is_rejected(
    seed: int, n: int, clients: int, p_timeout: float, pick: int
) -> None:
    ops = simulate(random.Random(seed), n, clients, p_timeout=p_timeout)
    reads = [i for i, op in enumerate(ops) if op.kind == "read" and op.status == "ok"]
    if not reads:
        ops.append(r(0, None, 1e9, 1e9 + 1))
        reads = [len(ops) - 1]
    i = reads[pick % len(reads)]
    ops[i] = replace(ops[i], output=NEVER)
    res = check(ops)
    assert res.ok is False
    assert res.op == ops[i]


# -- cost ------------------------------------------------------------------------------------


def test_two_thousand_ops_from_ten_clients_check_within_a_step_budget() -> None:
    ops = simulate(random.Random(7), 2000, 10, p_timeout=0.05)
    res = check_key(ops, budget=200_000)
    assert res.ok, res.explain()


def test_a_stale_read_in_a_long_concurrent_history_is_found_within_a_step_budget() -> None:
    ops = simulate(random.Random(8), 2000, 10)
    i = next(i for i, op in enumerate(ops) if op.kind == "read" and op.status == "ok" and i > 1500)
    old = next(op.value for op in reversed(ops[: i - 100]) if op.kind == "write")
    ops[i] = replace(ops[i], output=old)
    res = check_key(ops, budget=2_000_000)
    assert res.ok is False
    assert res.op == ops[i]


def test_running_out_of_budget_is_unknown_not_a_verdict() -> None:
    ops = simulate(random.Random(9), 500, 10)
    res = check(ops, budget=50)
    assert res.ok is None
    assert res.key == "x"
    assert "unknown" in res.explain()
    assert check(ops, timeout=0.0, budget=10**9).ok in (None, True)
