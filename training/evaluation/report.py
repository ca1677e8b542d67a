"""The evaluation report: a terminal table, JSON on disk, and a PNG of the comparison."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

METRICS = ("NDCG@5", "NDCG@10", "Recall@5", "Recall@10", "Recall@20", "Recall@50", "MRR@10")


def models_table(report: dict[str, Any]) -> Table:
    t = Table(
        title=f"{report['dataset']} test ({report['users']} users, {report['items']} items),"
        " 95% bootstrap CI on NDCG@10"
    )
    t.add_column("model")
    for m in METRICS:
        t.add_column(m, justify="right")
    t.add_column("NDCG@10 95% CI", justify="right")
    t.add_column("cov@10", justify="right")
    slices = next(iter(report["models"].values()))["slices"]
    for s in slices:
        t.add_column(f"N@10 {s.split(' (')[0]}", justify="right")
    for name, m in report["models"].items():
        ci = m["test"]["NDCG@10"]
        row = [name] + [f"{m['test'][k]['mean']:.4f}" for k in METRICS]
        row += [f"[{ci['low']:.4f}, {ci['high']:.4f}]", f"{m['coverage@10']:.2f}"]
        row += [
            "-" if v["NDCG@10"] is None else f"{v['NDCG@10']:.4f}" for v in m["slices"].values()
        ]
        t.add_row(*row)
    # Published results on the same data and protocol, where the report carries them.
    for name, values in (report.get("published") or {}).items():
        t.add_row(
            f"published: {name}", *(f"{values[k]:.4f}" if k in values else "" for k in METRICS)
        )
    return t


def candidates_table(report: dict[str, Any]) -> Table | None:
    rows = {
        n: m["candidate_recall"] for n, m in report["models"].items() if "candidate_recall" in m
    }
    if not rows:
        return None
    t = Table(title="candidate recall (the ceiling for a re-ranker)")
    t.add_column("candidates")
    t.add_column("recall", justify="right")
    for recalls in rows.values():
        for k, v in recalls.items():
            t.add_row(k, f"{v:.3f}")
    return t


def paired_table(report: dict[str, Any]) -> Table:
    t = Table(title="paired bootstrap over users: does A beat B? (NDCG@10)")
    for c in ("A", "B", "A - B", "95% CI", "p (one-sided)"):
        t.add_column(c, justify="right" if c != "A" else "left")
    for p in report["paired_bootstrap"]:
        t.add_row(
            p["a"],
            p["b"],
            f"{p['mean_difference']:+.4f}",
            f"[{p['low']:+.4f}, {p['high']:+.4f}]",
            f"{p['p_value']:.4f}",
        )
    return t


def rerank_table(report: dict[str, Any]) -> Table:
    t = Table(
        title=f"{report['dataset']} test ({report['users']} users): retrieval + re-rank, "
        f"top-{report['candidates']} candidates (recall {report['candidate_recall']:.3f})"
    )
    t.add_column("model")
    for m in ("NDCG@5", "NDCG@10", "Recall@5", "Recall@10", "MRR@10"):
        t.add_column(m, justify="right")
    t.add_column("NDCG@10 95% CI", justify="right")
    t.add_column("ms / prompt (1 thread)", justify="right")
    t.add_column("through the LM", justify="right")
    for name, m in report["models"].items():
        ci = m["test"]["NDCG@10"]
        row = [name] + [
            f"{m['test'][k]['mean']:.4f}"
            for k in ("NDCG@5", "NDCG@10", "Recall@5", "Recall@10", "MRR@10")
        ]
        ms = m.get("ms_per_prompt")
        row += [f"[{ci['low']:.4f}, {ci['high']:.4f}]", "-" if ms is None else f"{ms:.1f}"]
        row.append(f"{m['lm_share']:.0%}" if m.get("lm_share") is not None else "-")
        t.add_row(*row)
    return t


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=200)
    if "candidates" in report:
        console.print(rerank_table(report))
        console.print(paired_table(report))
        console.print(f"[dim]{report['protocol']}[/]")
        return
    console.print(models_table(report))
    cand = candidates_table(report)
    if cand is not None:
        console.print(cand)
    console.print(paired_table(report))
    console.print(f"[dim]{report['protocol']}[/]")


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["models"])
    ci = [report["models"][n]["test"]["NDCG@10"] for n in names]
    means = [c["mean"] for c in ci]
    err = [[c["mean"] - c["low"] for c in ci], [c["high"] - c["mean"] for c in ci]]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.2))
    ax.barh(range(len(names)), means, xerr=err, color="#4c72b0", capsize=3)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    for k, (name, values) in enumerate((report.get("published") or {}).items()):
        ax.axvline(values["NDCG@10"], color=f"C{k + 1}", ls="--", lw=1, label=f"published: {name}")
    if report.get("published"):
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel("NDCG@10 on test (95% bootstrap CI)")
    ax.set_title(f"{report['dataset']}: leave-one-out, full ranking")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(report: dict[str, Any], folder: Path, stem: str = "eval") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    js, png = folder / f"{stem}.json", folder / f"{stem}.png"
    js.write_text(json.dumps(report, indent=2, sort_keys=False))
    plot(report, png)
    return js, png
