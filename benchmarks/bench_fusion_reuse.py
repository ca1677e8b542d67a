"""What `publish --fusion reranker` costs in quality: the stack fitted on train + validation
(as `llmrec eval` fits it before the test split), ranked on test with its own fusion
(learned on held-out items: sources fitted on train, target each user's validation item)
and with the fusion one step older (sources on train less each user's last item: what the
re-ranker's training learned and records). Full fused order, top-20 candidates, history
masked; paired bootstrap over users.

    python benchmarks/bench_fusion_reuse.py --data artifacts/datasets/ml-100k --demo

Prints a table and writes benchmarks/results/fusion-reuse.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "fusion-reuse.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT / "artifacts" / "datasets" / "ml-100k"))
    ap.add_argument("--demo", action="store_true", help="the demo's stack (SASRec 20 x 128)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()

    from pipelines.artifact import load_dataset
    from pipelines.schema import Split
    from training.evaluation.bootstrap import confidence_interval, paired_bootstrap
    from training.evaluation.metrics import metrics_from_ranks
    from training.reranker.examples import ranking_row
    from training.retrieval import FitData
    from training.retrieval.embeddings import TextEncoder
    from training.stack import DEFAULT_SOURCES, holdout_fusion, stack_from_data
    from training.threads import set_threads

    threads = set_threads()
    spec = DEFAULT_SOURCES
    if args.demo:
        from cluster.commands.demo import demo_sources

        spec = demo_sources()
    ds = load_dataset(args.data)
    through_val = FitData.from_dataset(ds, Split.VALIDATION)
    train = FitData.from_dataset(ds, Split.TRAIN)
    emb = TextEncoder(cache=True).encode(through_val.item_text).astype(np.float32)
    start = time.perf_counter()
    fusions = {
        "own fusion (publish --fusion refit)": holdout_fusion(through_val, 1, emb, True, spec),
        "the re-ranker's fusion (--fusion reranker)": holdout_fusion(train, 1, emb, True, spec),
    }
    stack = stack_from_data(through_val, None, emb, "validation", True, spec)
    fit_seconds = time.perf_counter() - start
    seq = ds.sequences
    targets = seq.items[seq.splits == Split.TEST]
    ndcg = {}
    for name, fusion in fusions.items():
        stack.fusion = fusion
        gen = stack.generator()
        ranks = []
        for u in range(ds.manifest.n_users):
            row = ranking_row(
                gen,
                u,
                through_val.history(u),
                20,
                10,
                stack.source_names,
                stack.log_popularity,
                target=int(targets[u]),
            )
            ranks.append(row.label + 1 if row.label >= 0 else 10**9)
        ndcg[name] = metrics_from_ranks(np.array(ranks))["NDCG@10"]
    own, reused = list(ndcg)
    test = paired_bootstrap(ndcg[reused], ndcg[own])
    table = Table(title=f"test NDCG@10 of the fused order ({ds.manifest.name})")
    for c in ("fusion", "NDCG@10", "95% CI"):
        table.add_column(c)
    rows = {}
    for name, values in ndcg.items():
        ci = confidence_interval(values)
        rows[name] = {"ndcg10": float(values.mean()), "ci": [ci.low, ci.high]}
        table.add_row(name, f"{values.mean():.4f}", f"[{ci.low:.4f}, {ci.high:.4f}]")
    diff = f"{test.mean_difference:+.4f} [{test.low:+.4f}, {test.high:+.4f}]"
    table.add_row("difference (re-ranker's - own)", diff, f"p = {test.p_value:.2f}")
    Console().print(table)
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()})",
        "command": "python " + " ".join(sys.argv),
        "dataset": ds.manifest.name,
        "dataset_version": ds.manifest.version,
        "stack": "demo" if args.demo else "production",
        "threads": threads,
        "fit_seconds": round(fit_seconds, 1),
        "fusions": rows,
        "difference": {
            "mean": test.mean_difference,
            "ci": [test.low, test.high],
            "p_value": test.p_value,
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
