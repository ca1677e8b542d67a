"""The A/B report: per variant, impressions, CTR and conversion with 95% confidence
intervals, and each variant's difference from the control with its interval and p-value.

An impression is *clicked* when an event carrying its `request_id`, from the same user, is a
click or a purchase of an item it showed; *converted* when such an event is a purchase.
Rates are per impression (one response = one trial), so a user who reloads counts again."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from serving.events import Event
from serving.experiments import Impression

Z95 = 1.959963984540054
CLICKS = ("click", "purchase")


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval: stays inside [0, 1] and behaves at small counts."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def difference(k1: int, n1: int, k0: int, n0: int) -> dict[str, float]:
    """Rate of 1 minus rate of 0: Newcombe's interval (from the Wilson intervals) and the
    two-sided p-value of the pooled two-proportion z-test."""
    p1, p0 = k1 / n1, k0 / n0
    lo1, hi1 = wilson(k1, n1)
    lo0, hi0 = wilson(k0, n0)
    d = p1 - p0
    lo = d - math.sqrt((p1 - lo1) ** 2 + (hi0 - p0) ** 2)
    hi = d + math.sqrt((hi1 - p1) ** 2 + (p0 - lo0) ** 2)
    pooled = (k1 + k0) / (n1 + n0)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    p_value = 1.0 if se == 0 else math.erfc(abs(d) / se / math.sqrt(2))
    return {"diff": d, "lo": lo, "hi": hi, "p": p_value}


def outcomes(impressions: list[Impression], events: list[Event]) -> dict[str, dict[str, int]]:
    by_request: dict[str, list[Event]] = {}
    for e in events:
        by_request.setdefault(e.request_id, []).append(e)
    out: dict[str, dict[str, int]] = {}
    for imp in impressions:
        shown = set(imp.items)
        mine = [
            e
            for e in by_request.get(imp.request_id, [])
            if e.user_id == imp.user_id and e.item_id in shown
        ]
        row = out.setdefault(imp.variant or "-", {"impressions": 0, "clicked": 0, "converted": 0})
        row["impressions"] += 1
        row["clicked"] += any(e.type in CLICKS for e in mine)
        row["converted"] += any(e.type == "purchase" for e in mine)
    return out


def experiment_report(
    name: str,
    impressions: list[Impression],
    events: list[Event],
    control: str | None = None,
) -> dict[str, Any]:
    counts = outcomes(impressions, events)
    if not counts:
        raise ValueError(f"no impressions logged for experiment '{name}'")
    if control is None:  # a variant named "control", else the first name in order
        control = "control" if "control" in counts else sorted(counts)[0]
    if control not in counts:
        raise ValueError(f"control '{control}' has no impressions; variants: {sorted(counts)}")
    c = counts[control]
    rows = []
    for variant in [control, *sorted(v for v in counts if v != control)]:
        n = counts[variant]
        row: dict[str, Any] = {"variant": variant, "impressions": n["impressions"]}
        for metric, key in (("ctr", "clicked"), ("conversion", "converted")):
            lo, hi = wilson(n[key], n["impressions"])
            row[metric] = {"rate": n[key] / n["impressions"], "lo": lo, "hi": hi, "count": n[key]}
            if variant != control:
                row[f"{metric}_vs_control"] = difference(
                    n[key], n["impressions"], c[key], c["impressions"]
                )
        rows.append(row)
    return {"experiment": name, "control": control, "variants": rows, "verdict": verdict(rows)}


def verdict(rows: list[dict[str, Any]]) -> list[str]:
    """One sentence per variant: better, worse, or no significant difference in CTR."""
    control = rows[0]["variant"]
    lines = []
    for r in rows[1:]:
        d = r["ctr_vs_control"]
        if d["p"] < 0.05 and d["diff"] > 0:
            word = "better than"
        elif d["p"] < 0.05:
            word = "worse than"
        else:
            word = "not significantly different from"
        lines.append(
            f"{r['variant']} is {word} {control} on CTR: {d['diff']:+.4f} "
            f"[{d['lo']:+.4f}, {d['hi']:+.4f}], p = {d['p']:.3g}"
        )
    return lines


def print_report(report: dict[str, Any], console) -> None:
    from rich.table import Table

    t = Table(title=f"experiment {report['experiment']} (control: {report['control']})")
    for col in ("variant", "impressions", "CTR [95% CI]", "Δ CTR [95% CI]", "p", "conversion"):
        t.add_column(col, justify="right")
    for r in report["variants"]:
        ctr, conv = r["ctr"], r["conversion"]
        d = r.get("ctr_vs_control")
        t.add_row(
            r["variant"],
            str(r["impressions"]),
            f"{ctr['rate']:.4f} [{ctr['lo']:.4f}, {ctr['hi']:.4f}]",
            "-" if d is None else f"{d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]",
            "-" if d is None else f"{d['p']:.3g}",
            f"{conv['rate']:.4f} [{conv['lo']:.4f}, {conv['hi']:.4f}]",
        )
    console.print(t)
    for line in report["verdict"]:
        console.print(line, highlight=False)


def plot_report(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["variants"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, metric in zip(axes, ("ctr", "conversion"), strict=True):
        rates = [r[metric]["rate"] for r in rows]
        err = [
            [r[metric]["rate"] - r[metric]["lo"] for r in rows],
            [r[metric]["hi"] - r[metric]["rate"] for r in rows],
        ]
        ax.bar([r["variant"] for r in rows], rates, yerr=err, capsize=6, color="#4c72b0")
        ax.set_title(f"{metric} (95% CI)")
    fig.suptitle(f"experiment {report['experiment']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
