"""Redis against SQLite in one bench_serving.py run: each round deploys the graph with the
re-ranker on each store in turn, and a store's cell is compared with the other store's cell
of the same round and concurrency. Several rounds give the spread of each difference, which
one pair of cells cannot (at concurrency 8 the cache path is tens of ms of queueing on two
cores, and a few ms move from run to run)."""

from __future__ import annotations

import statistics

from rich.table import Table

PREFIX = "graph with re-ranker ["


def store_comparison(cells: list[dict]) -> list[dict]:
    """Per concurrency: Redis minus SQLite for the cache path's p50 and p99 and the ratio of
    requests/s, one value per round, with their mean."""
    by_key = {
        (c["variant"], c["concurrency"], c.get("round", 0)): c
        for c in cells
        if c["variant"].startswith(PREFIX)
    }
    per_conc: dict[int, dict[str, list[float]]] = {}
    for (variant, conc, rnd), redis in sorted(by_key.items()):
        if not variant.endswith("[redis]"):
            continue
        sqlite = by_key.get((variant.replace("[redis]", "[sqlite]"), conc, rnd))
        if sqlite is None:
            continue
        d = per_conc.setdefault(conc, {"p50": [], "p99": [], "rps": [], "err": []})
        if redis["cache_p50_ms"] is not None and sqlite["cache_p50_ms"] is not None:
            d["p50"].append(redis["cache_p50_ms"] - sqlite["cache_p50_ms"])
            d["p99"].append(redis["cache_p99_ms"] - sqlite["cache_p99_ms"])
        d["rps"].append(redis["throughput_rps"] / max(sqlite["throughput_rps"], 1e-9))
        d["err"].append(max(redis["error_rate"], sqlite["error_rate"]))
    rows = []
    for conc, d in sorted(per_conc.items()):

        def mean(xs: list[float]) -> float | None:
            return statistics.fmean(xs) if xs else None

        rows.append(
            {
                "concurrency": conc,
                "rounds": len(d["rps"]),
                "cache_p50_added_ms": mean(d["p50"]),
                "cache_p99_added_ms": mean(d["p99"]),
                "rps_ratio": mean(d["rps"]),
                "cache_p50_added_ms_by_round": d["p50"],
                "cache_p99_added_ms_by_round": d["p99"],
                "rps_ratio_by_round": d["rps"],
                "max_error_rate": max(d["err"]),
            }
        )
    return rows


def store_table(rows: list[dict]) -> Table:
    t = Table(
        title="Redis against SQLite (graph with re-ranker, same run: the mean, then each round)"
    )
    for col in ("conc.", "rounds", "cache p50 added", "cache p99 added", "req/s Redis / SQLite"):
        t.add_column(col, justify="right")

    def ms(v: float | None, each: list[float]) -> str:
        if v is None:
            return "-"
        return f"{v:+.2f} ms (" + ", ".join(f"{x:+.1f}" for x in each) + ")"

    for r in rows:
        t.add_row(
            str(r["concurrency"]),
            str(r["rounds"]),
            ms(r["cache_p50_added_ms"], r["cache_p50_added_ms_by_round"]),
            ms(r["cache_p99_added_ms"], r["cache_p99_added_ms_by_round"]),
            f"{r['rps_ratio']:.0%} ("
            + ", ".join(f"{x:.0%}" for x in r["rps_ratio_by_round"])
            + ")",
        )
    return t
