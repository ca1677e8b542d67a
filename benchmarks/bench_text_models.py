"""MiniLM against SmolLM2-135M as the content source's text encoder, in one run: on warm
users (leave-one-out, the content source alone, its parameters chosen on validation), on
new items (the new-item protocol: the content row per encoder, beside every source, the
system's candidates and the new-item baselines), and what one item's text costs to encode
(what `POST /items` pays per new item).

    python benchmarks/bench_text_models.py --data artifacts/datasets/ml-100k

Prints the tables; writes benchmarks/results/text-models.json and new-items-ml-100k.png.
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
RESULTS = ROOT / "benchmarks" / "results"


def encode_cost(model: str, texts: list[str], n: int = 50) -> dict:
    """ms to encode one text at a time (a new item), after a warm-up."""
    from training.retrieval.embeddings import TextEncoder

    enc = TextEncoder(model)
    enc.encode(texts[:2])
    times = []
    for t in texts[:n]:
        start = time.perf_counter()
        enc.encode([t])
        times.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99))}


def warm_content(ds, models: list[str], resamples: int) -> dict:
    from pipelines.schema import Split
    from training.evaluation.bootstrap import confidence_interval, paired_bootstrap
    from training.evaluation.harness import ModelSpec, Phase, _CachedContent, grid, select_and_test
    from training.evaluation.metrics import metrics_from_ranks
    from training.retrieval.embeddings import TextEncoder

    val, test = Phase.build(ds, Split.VALIDATION), Phase.build(ds, Split.TEST)
    out, per_user = {}, {}
    for model in models:
        enc, cache = TextEncoder(model, cache=True), {}

        def build(p, enc=enc, cache=cache):
            return _CachedContent(cache, encoder=enc, **p)

        spec = ModelSpec("content", build, grid(recent=[1, 5, 20], recency_decay=[0.8]))
        result = select_and_test(spec, val, test, False)
        m = metrics_from_ranks(result.test_ranks)
        per_user[model] = m["NDCG@10"]
        out[model] = {"params": result.params}
        for k in ("NDCG@10", "Recall@50"):
            ci = confidence_interval(m[k], resamples)
            out[model][k] = {"mean": ci.mean, "low": ci.low, "high": ci.high}
    if len(models) == 2:
        a, b = models[1], models[0]
        out["paired NDCG@10"] = {"a": a, "b": b, **vars(paired_bootstrap(per_user[a], per_user[b]))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "artifacts" / "datasets" / "ml-100k"))
    ap.add_argument("--models", nargs="+", default=["minilm", "smollm2-135m"])
    ap.add_argument("--cutoff-quantile", type=float, default=0.2)
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()

    from pipelines.artifact import load_dataset
    from training.evaluation.new_items import fit_and_evaluate, plot, print_report
    from training.retrieval.data import FitData
    from training.threads import set_threads

    set_threads(2)
    console = Console(width=200)
    ds = load_dataset(args.data)
    start = time.perf_counter()
    texts = FitData.from_dataset(ds).item_text
    cost = {m: encode_cost(m, texts) for m in args.models}
    warm = warm_content(ds, args.models, args.resamples)
    new = fit_and_evaluate(
        ds, None, args.cutoff_quantile, tuple(args.models), args.resamples, progress=True
    )
    t = Table(title="the content source's text encoder (95% CIs)")
    for col in ("encoder", "warm NDCG@10", "warm Recall@50", "new-item Recall@50", "one text ms"):
        t.add_column(col, justify="left" if col == "encoder" else "right")
    for m in args.models:
        w, n = warm[m], new["models"][f"content ({m})"]["Recall@50"]
        t.add_row(
            m,
            f"{w['NDCG@10']['mean']:.4f} [{w['NDCG@10']['low']:.4f}, {w['NDCG@10']['high']:.4f}]",
            f"{w['Recall@50']['mean']:.4f}",
            f"{n['mean']:.4f} [{n['low']:.4f}, {n['high']:.4f}]",
            f"{cost[m]['p50_ms']:.1f} (p99 {cost[m]['p99_ms']:.1f})",
        )
    console.print(t)
    if "paired NDCG@10" in warm:
        p = warm["paired NDCG@10"]
        console.print(
            f"warm NDCG@10, {p['a']} - {p['b']}: {p['mean_difference']:+.4f} "
            f"[{p['low']:+.4f}, {p['high']:+.4f}]"
        )
    print_report(new, console)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": " ".join(["python", *sys.argv]),
        "seconds": round(time.perf_counter() - start, 1),
        "encode_cost": cost,
        "warm": warm,
        "new_items": new,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "text-models.json").write_text(json.dumps(report, indent=2))
    plot(new, RESULTS / f"new-items-{ds.manifest.name}.png")
    console.print(f"wrote {RESULTS / 'text-models.json'} ({report['seconds']} s)")


if __name__ == "__main__":
    main()
