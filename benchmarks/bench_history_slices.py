"""Routing by history length, chosen by measurement: does the re-ranker help users with
little history? Test users are replayed as new users with only their last L items; NDCG@10
of the fused order and of the re-ranked order are compared on the same candidates.

    python benchmarks/bench_history_slices.py --reranker artifacts/rerankers/ml-100k/hybrid

Prints a table, writes benchmarks/results/eval-ml-100k/history_slices-<re-ranker folder
name>.{json,png}, and the `rerank_min_history` it recommends (serving/config.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "eval-ml-100k"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reranker", required=True)
    ap.add_argument("--data", default=str(ROOT / "artifacts" / "datasets" / "ml-100k"))
    ap.add_argument("--lengths", default="1,2,3,5,10")
    ap.add_argument("--users", type=int, default=None, help="a random subset (default: all)")
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()

    from pipelines.artifact import load_dataset
    from training.reranker.evaluate import history_slices

    start = time.perf_counter()
    report = history_slices(
        load_dataset(args.data),
        args.reranker,
        tuple(int(x) for x in args.lengths.split(",")),
        users=args.users,
        resamples=args.resamples,
    )
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["machine"] = f"{platform.processor() or platform.machine()}, {platform.system()}"
    report["date"] = datetime.now(UTC).strftime("%Y-%m-%d")
    report["command"] = " ".join(["python", *sys.argv])

    t = Table(title="re-ranker by history length (NDCG@10, paired bootstrap)")
    for c in ("history", "users", "cand. recall", "fused", "re-ranked", "diff [95% CI]", "p"):
        t.add_column(c, justify="right")
    for s in report["slices"]:
        t.add_row(
            str(s["history"]),
            str(s["users"]),
            f"{s['candidate_recall']:.3f}",
            f"{s['fused NDCG@10']:.4f}",
            f"{s['re-ranked NDCG@10']:.4f}",
            f"{s['difference']:+.4f} [{s['low']:+.4f}, {s['high']:+.4f}]",
            f"{s['p (re-ranker not better)']:.3f}",
        )
    console = Console(width=140)
    console.print(t)
    console.print(f"recommended rerank_min_history: {report['rerank_min_history']}")
    OUT.mkdir(parents=True, exist_ok=True)
    stem = f"history_slices-{Path(args.reranker).name}"
    (OUT / f"{stem}.json").write_text(json.dumps(report, indent=2))
    plot(report, OUT / f"{stem}.png")
    console.print(f"wrote {OUT / stem}.json and .png ({report['seconds']} s)")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report["slices"]
    x = [r["history"] for r in s]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(x, [r["fused NDCG@10"] for r in s], "o-", label="fused order (retrieval)")
    ax.plot(x, [r["re-ranked NDCG@10"] for r in s], "s-", label="re-ranked (hybrid)")
    ax.set_xlabel("history items the user has")
    ax.set_ylabel("test NDCG@10")
    ax.set_xscale("log")
    ax.set_xticks(x, [str(v) for v in x])
    ax.legend()
    ax.set_title("ML-100k: users replayed with short histories")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
