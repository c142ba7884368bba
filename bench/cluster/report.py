"""The report: median of the repeats, the tables, ratios and targets, the plot."""

from __future__ import annotations

import argparse
import statistics

from bench.cluster.common import Result


def median_result(results: list[Result]) -> Result:
    """The median of each column over the repeats of one configuration."""
    first = results[0]
    med = statistics.median
    rate = med(r.rate for r in results)
    return Result(
        first.system,
        first.mode,
        first.op,
        first.clients,
        count=round(rate * 1000),
        elapsed=1000.0,
        errors=sum(r.errors for r in results),
        p50=med(r.p50 for r in results),
        p99=med(r.p99 for r in results),
        p999=med(r.p999 for r in results),
    )


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                str(c).rjust(w) if i else str(c).ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    sep = (
        "|"
        + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths))
        + "|"
    )
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def fmt_ms(x: float) -> str:
    return "-" if x != x else f"{x:.2f}"


def report(medians: dict[tuple[str, str, str, int], Result], args: argparse.Namespace) -> str:
    out: list[str] = []
    order = {"docstore": 0, "trioraft": 1, "etcd": 2, "pysyncobj": 3}
    ops = {"put": 0, "linearizable": 1, "lease": 2, "local": 3}
    ranked = sorted(
        medians.values(),
        key=lambda r: (order.get(r.system, 9), r.mode, ops.get(r.op, 9), r.clients),
    )
    writes = [r for r in ranked if r.op == "put"]
    rows = [
        [
            r.system,
            r.mode,
            str(r.clients),
            fmt_rate(r.rate),
            fmt_ms(r.p50),
            fmt_ms(r.p99),
            fmt_ms(r.p999),
            str(r.errors),
        ]
        for r in writes
    ]
    out.append(f"### Writes (100-byte values, medians of {args.repeat} runs)\n")
    out.append(
        table(
            rows,
            ["system", "mode", "clients", "writes/s", "p50 ms", "p99 ms", "p99.9 ms", "errors"],
        )
    )
    reads = [r for r in ranked if r.op != "put"]
    if reads:
        rows = [
            [
                r.system,
                r.mode,
                r.op,
                str(r.clients),
                fmt_rate(r.rate),
                fmt_ms(r.p50),
                fmt_ms(r.p99),
                fmt_ms(r.p999),
            ]
            for r in reads
        ]
        out.append(f"\n### Reads (medians of {args.repeat} runs)\n")
        out.append(
            table(
                rows,
                [
                    "system",
                    "mode",
                    "consistency",
                    "clients",
                    "reads/s",
                    "p50 ms",
                    "p99 ms",
                    "p99.9 ms",
                ],
            )
        )
    # The product first: docstore against etcd, PySyncObj and the KV path.
    rows = []
    for c in args.client_counts:
        d = medians.get(("docstore", "remote", "put", c))
        cells = [str(c)]
        for theirs in (("etcd", "remote"), ("pysyncobj", "embedded"), ("trioraft", "remote")):
            b = medians.get((*theirs, "put", c))
            cells.append(f"{d.rate / b.rate:.2f}" if d and b and b.rate else "-")
        e = medians.get(("etcd", "remote", "put", c))
        cells.append(f"{e.p99 / d.p99:.2f}" if d and e and d.p99 else "-")
        rows.append(cells)
    if any(k[0] == "docstore" for k in medians):
        out.append("\n### docstore ratios (docstore / other: writes/s; p99: etcd's / docstore's)\n")
        out.append(
            table(
                rows,
                [
                    "clients",
                    "docstore/etcd",
                    "docstore/pysyncobj",
                    "docstore/KV",
                    "p99 etcd/docstore",
                ],
            )
        )

    # Ratios: above 1 means trioraft does more writes per second.
    rows = []
    for c in args.client_counts:
        cells = [str(c)]
        for mine, theirs in (
            (("trioraft", "remote"), ("etcd", "remote")),
            (("trioraft", "embedded"), ("etcd", "remote")),
            (("trioraft", "remote"), ("pysyncobj", "embedded")),
            (("trioraft", "embedded"), ("pysyncobj", "embedded")),
        ):
            a = medians.get((*mine, "put", c))
            b = medians.get((*theirs, "put", c))
            cells.append(f"{a.rate / b.rate:.2f}" if a and b and b.rate else "-")
            if mine[1] == "remote" and theirs[0] == "etcd":
                cells.append(f"{b.p99 / a.p99:.2f}" if a and b and a.p99 else "-")
        rows.append(cells)
    out.append("\n### Ratios (trioraft / other: writes/s; p99 column: other's p99 / trioraft's)\n")
    out.append(
        table(
            rows,
            [
                "clients",
                "remote/etcd",
                "p99 etcd/remote",
                "embedded/etcd",
                "remote/pysyncobj",
                "embedded/pysyncobj",
            ],
        )
    )

    # Targets.
    def get(mode: str, op: str, c: int) -> Result | None:
        return medians.get(("trioraft", mode, op, c))

    checks: list[tuple[str, float | None, float, bool]] = []

    def ds(op: str, c: int) -> Result | None:
        return medians.get(("docstore", "remote", op, c))

    d_one, d_top = ds("put", 1), ds("put", 256)
    d_lin = ds("linearizable", args.read_clients)
    checks.append(
        ("docstore: single writer writes/s", d_one.rate if d_one else None, 1300.0, False)
    )
    checks.append(("docstore: 256 writers writes/s", d_top.rate if d_top else None, 15000.0, False))
    checks.append(
        ("docstore: 256 writers p99 ms (at most)", d_top.p99 if d_top else None, 50.0, True)
    )
    checks.append(
        (
            f"docstore: linearizable gets, {args.read_clients} readers, /s",
            d_lin.rate if d_lin else None,
            30000.0,
            False,
        )
    )
    for c in args.client_counts:
        d, e = ds("put", c), medians.get(("etcd", "remote", "put", c))
        if d and e:
            checks.append(
                (f"docstore: ahead of etcd at {c} writers (writes/s)", d.rate, e.rate, False)
            )
    for c in (64, 256):
        d, k = ds("put", c), get("remote", "put", c)
        if d and k:
            # within 1.3x of the KV path: docstore's rate at least KV / 1.3
            checks.append(
                (f"docstore: within 1.3x of KV at {c} writers", d.rate, k.rate / 1.3, False)
            )
    one = get("remote", "put", 1)
    top = get("remote", "put", 256)
    emb = max(
        (r.rate for r in writes if r.system == "trioraft" and r.mode == "embedded"), default=None
    )
    lin = max(
        (r.rate for r in reads if r.system == "trioraft" and r.op == "linearizable"), default=None
    )
    checks.append(("KV: single client writes/s", one.rate if one else None, 1300.0, False))
    checks.append(("KV: 256 clients writes/s", top.rate if top else None, 15000.0, False))
    checks.append(("KV: 256 clients p99 ms (at most)", top.p99 if top else None, 50.0, True))
    checks.append(("KV: embedded writes/s (best)", emb, 30000.0, False))
    checks.append(("KV: linearizable reads/s (best)", lin, 30000.0, False))
    for c in args.client_counts:
        e, t = medians.get(("etcd", "remote", "put", c)), get("remote", "put", c)
        if e and t:
            checks.append((f"KV: ahead of etcd at {c} clients (writes/s)", t.rate, e.rate, False))
    rows = []
    for name, got, want, at_most in checks:
        if got is None:
            rows.append([name, "-", f"{want:,.1f}", "not measured"])
            continue
        ok = got <= want if at_most else got >= want
        gap = (
            ""
            if ok
            else f" ({got / want:.0%} of target)"
            if not at_most
            else f" ({got / want:.1f}x)"
        )
        rows.append([name, f"{got:,.1f}", f"{want:,.1f}", ("met" if ok else "MISSED") + gap])
    out.append("\n### Targets (KV: trioraft remote unless named)\n")
    out.append(table(rows, ["target", "measured", "target", "status"]))
    return "\n".join(out)


def plot(medians: dict[tuple[str, str, str, int], Result], path: str) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no plot"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[tuple[str, str], list[Result]] = {}
    for r in medians.values():
        if r.op == "put":
            series.setdefault((r.system, r.mode), []).append(r)
    rank = {"docstore": 0, "trioraft": 1, "etcd": 2, "pysyncobj": 3}
    for (system, mode), rs in sorted(series.items(), key=lambda kv: (rank.get(kv[0][0], 9), kv[0])):
        rs.sort(key=lambda r: r.clients)
        label = f"{system} {mode}"
        (line,) = ax.plot([r.rate for r in rs], [r.p99 for r in rs], "o-", label=f"{label} p99")
        ax.plot(
            [r.rate for r in rs],
            [r.p50 for r in rs],
            "x--",
            color=line.get_color(),
            label=f"{label} p50",
        )
        for r in rs:
            ax.annotate(
                str(r.clients),
                (r.rate, r.p99),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
    ax.set_xlabel("writes/s (100-byte values)")
    ax.set_ylabel("latency, ms (log)")
    ax.set_yscale("log")
    ax.set_title("3 nodes on one 2-core machine; labels: concurrent clients")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return f"plot written to {path}"
