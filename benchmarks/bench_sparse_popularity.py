"""The sparse path with popularity in its fusion: new users replayed after 0, 1, 3 and 10
events (the new-user protocol of `llmrec eval --protocol new-users`), the system's 50
candidates at several weights of overall popularity's list in the sparse path's rank fusion
(`CandidateConfig.sparse_popularity`) against popularity alone, in one run on one fitted
stack; paired differences against popularity and the system's list as it is.

    python benchmarks/bench_sparse_popularity.py --weights 0 0.5 1 2

Prints a table; writes benchmarks/results/sparse-popularity.json.
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
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "artifacts" / "datasets" / "ml-100k"))
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument(
        "--first-items",
        action="store_true",
        help="also each weight with popularity over each user's first items",
    )
    ap.add_argument("--out", default=str(RESULTS / "sparse-popularity.json"))
    args = ap.parse_args()

    from pipelines.artifact import load_dataset
    from training.candidates import CandidateConfig
    from training.evaluation.new_users import fit_and_evaluate
    from training.threads import set_threads

    set_threads()
    start = time.perf_counter()
    ds = load_dataset(args.data)
    default = CandidateConfig().sparse_popularity
    variants = {
        f"sparse popularity {w:g}": CandidateConfig(n=50, sparse_popularity=w) for w in args.weights
    }
    if args.first_items:
        for w in args.weights:
            if w > 0:
                variants[f"sparse popularity {w:g}, first items"] = CandidateConfig(
                    n=50, sparse_popularity=w, sparse_popularity_counts="first_items"
                )
    report = fit_and_evaluate(ds, resamples=args.resamples, variants=variants)
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["default_weight"] = default
    report["machine"] = f"{platform.machine()}, {platform.processor() or 'cpu'}"
    report["date"] = datetime.now(UTC).strftime("%Y-%m-%d")
    report["command"] = "python benchmarks/bench_sparse_popularity.py " + " ".join(sys.argv[1:])

    table = Table(title=f"new users: NDCG@10 [95% CI] after n events ({report['seconds']} s)")
    table.add_column("list")
    for n in report["lengths"]:
        table.add_column(f"{n} events", justify="right")
    names = [r["list"] for r in report["rows"] if r["events"] == report["lengths"][0]]
    for name in dict.fromkeys(names):
        cells = []
        for n in report["lengths"]:
            row = next(
                r
                for r in report["rows"]
                if r["list"] == name and r["events"] == n and not r["attributes"]
            )
            x = row["NDCG@10"]
            cells.append(f"{x['mean']:.4f} [{x['low']:.4f}, {x['high']:.4f}]")
        table.add_row(name, *cells)
    console = Console(width=200)
    console.print(table)
    paired = Table(title="paired NDCG@10 differences, a minus b [95% CI]")
    for c in ("a", "b", *(f"{n} events" for n in report["lengths"])):
        paired.add_column(c)
    seen = dict.fromkeys((p["a"], p["b"]) for p in report["paired_ndcg10"])
    for a, b in seen:
        cells = [
            f"{p['mean_difference']:+.4f} [{p['low']:+.4f}, {p['high']:+.4f}]"
            for p in report["paired_ndcg10"]
            if (p["a"], p["b"]) == (a, b) and not p["attributes"]
        ]
        paired.add_row(a, b, *cells)
    console.print(paired)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
