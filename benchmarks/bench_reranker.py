"""Re-ranker cost on this CPU: one listwise forward pass per request.

1. Latency of one uncached re-rank of K candidates at batch 1/4/8/16 (per request).
2. Each compression step (int8, a tighter token budget per item, fewer layers) with its
   latency and its test NDCG@10 on ML-100k, against fp32, in one run.
3. Training throughput (examples/s) with 1 and 2 Ray Train workers on a 2-CPU local cluster.

    python benchmarks/bench_reranker.py --reranker artifacts/rerankers/ml-100k/hybrid
    python benchmarks/bench_reranker.py --training-only   # part 3 alone, no trained model
"""

from __future__ import annotations

import argparse
import json
import os
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


def pct(ms: list[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(ms), q))


def latency(reranker, rows, batch: int, repeats: int) -> dict:
    """Per-request ms: a batch of `batch` prompts costs its time, per request divided."""
    per_request = []
    for i in range(repeats):
        chunk = [rows[(i * batch + j) % len(rows)] for j in range(batch)]
        t = time.perf_counter()
        reranker.score_rows(chunk, batch_size=batch)
        per_request.append((time.perf_counter() - t) * 1000 / batch)
    return {"p50_ms": pct(per_request, 50), "p99_ms": pct(per_request, 99)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reranker", help="a trained hybrid/lm re-ranker folder (parts 1-2)")
    p.add_argument(
        "--training-only",
        action="store_true",
        help="only part 3, with the default hybrid MiniLM config; writes reranker-training.json",
    )
    p.add_argument("--data", default="artifacts/datasets/ml-100k")
    p.add_argument("--threads", type=int, default=1, help="torch threads (serving: 1)")
    p.add_argument("--repeats", type=int, default=60)
    p.add_argument("--train-examples", type=int, default=96, help="0 skips the training part")
    args = p.parse_args()
    if not args.training_only and not args.reranker:
        p.error("--reranker is required unless --training-only")

    import torch

    from pipelines.artifact import load_dataset
    from training.evaluation.metrics import metrics_from_ranks
    from training.reranker.compression import Compression
    from training.reranker.evaluate import test_rows
    from training.reranker.inference import Reranker
    from training.reranker.model import RerankerConfig, read_meta
    from training.reranker.scoring import label_ranks
    from training.retrieval import FitData

    torch.set_num_threads(args.threads)
    console = Console(width=160)
    ds = load_dataset(args.data)
    if args.training_only:
        config = RerankerConfig().model_dump(mode="json")
        results = {
            "machine": f"{os.cpu_count()} vCPU {platform.processor() or platform.machine()}",
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "command": " ".join(sys.argv),
            "training": training_throughput(ds, args, {"config": config}),
        }
        print_training(console, results["training"])
        write(console, results, "reranker-training.json")
        return
    meta = read_meta(args.reranker)
    template = RerankerConfig.model_validate(meta["config"]).template
    texts = FitData.from_dataset(ds).item_text
    with console.status("test candidates"):
        rows = test_rows(ds, template.candidates, template.history_items, progress=False)
    present = [r for r in rows if r.label >= 0]
    miss = ds.manifest.n_items + 1

    def ndcg(rr: Reranker) -> float:
        scores = rr.score_rows(present, batch_size=8)
        ranks = np.full(len(rows), miss)
        ranks[[i for i, r in enumerate(rows) if r.label >= 0]] = label_ranks(present, scores, miss)
        return float(metrics_from_ranks(ranks)["NDCG@10"].mean())

    base = Reranker(args.reranker, texts)
    lengths = [len(base.renderer.render(r.history, r.candidates).input_ids) for r in rows[:200]]
    results: dict = {
        "machine": f"{os.cpu_count()} vCPU {platform.processor() or platform.machine()}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
        "reranker": args.reranker,
        "threads": args.threads,
        "prompt_tokens_mean": float(np.mean(lengths)),
        "candidates": template.candidates,
        "batches": {},
        "compression": [],
    }
    for b in (1, 4, 8, 16):
        results["batches"][b] = latency(base, rows, b, max(args.repeats // b, 8))
    t = Table(
        title=f"one re-rank of {template.candidates} candidates, "
        f"{results['prompt_tokens_mean']:.0f} tokens, {args.threads} thread(s)"
    )
    for c in ("batch", "p50 ms / request", "p99 ms / request"):
        t.add_column(c, justify="right")
    for b, r in results["batches"].items():
        t.add_row(str(b), f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}")
    console.print(t)

    steps = [
        Compression(),
        Compression(int8=True),
        Compression(int8=True, item_tokens=8),
        Compression(int8=True, item_tokens=8, layers=4),
        Compression(int8=True, layers=3),
    ]
    ref = None
    for c in steps:
        rr = Reranker(args.reranker, texts, compression=c)
        lat = latency(rr, rows, 1, args.repeats)
        score = ndcg(rr)
        ref = score if ref is None else ref
        results["compression"].append(
            {"step": c.label(), **lat, "NDCG@10": score, "delta_vs_fp32": score - ref}
        )
    t = Table(title="compression steps (batch 1): latency and test NDCG@10, one run")
    for c in ("step", "p50 ms", "p99 ms", "NDCG@10", "vs fp32"):
        t.add_column(c, justify="right")
    for r in results["compression"]:
        t.add_row(
            r["step"],
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['NDCG@10']:.4f}",
            f"{r['delta_vs_fp32']:+.4f}",
        )
    console.print(t)

    if args.train_examples:
        results["training"] = training_throughput(ds, args, meta)
        print_training(console, results["training"])
    write(console, results, "reranker.json")


def print_training(console: Console, rows: list[dict]) -> None:
    t = Table(title="Ray Train throughput (examples/s, first epoch incl. warm-up)")
    for c in ("workers", "CPUs each", "examples", "examples/s", "wall s (incl. start)"):
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(
            str(r["workers"]),
            str(r["cpus_per_worker"]),
            str(r["examples"]),
            f"{r['examples_per_s']:.2f}",
            f"{r['wall_s']:.0f}",
        )
    console.print(t)


def write(console: Console, results: dict, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / name
    out.write_text(json.dumps(results, indent=2))
    console.print(f"wrote {out}")


def training_throughput(ds, args, meta) -> list[dict]:
    import tempfile

    import ray

    from cluster.ray_runtime import connect
    from training.reranker.model import RerankerConfig
    from training.reranker.prepared import prepare_examples
    from training.reranker.train import TrainSettings, train_reranker

    cfg = RerankerConfig.model_validate(meta["config"]).model_copy(
        update={"mode": "hybrid", "base_model": meta.get("base_model")}
    )
    settings = TrainSettings(max_examples=args.train_examples, epochs=1, val_users=8)
    prepared = prepare_examples(ds, cfg, settings, progress=True)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Two CPUs, as this machine has: 2 workers x 1 CPU hold all of them.
    connect(num_cpus=2, dashboard=True)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers, cpus in ((1, 2), (2, 1)):
            s = settings.model_copy(update={"workers": workers, "cpus_per_worker": cpus})
            t = time.perf_counter()
            res = train_reranker(
                prepared, cfg, s, Path(tmp) / f"out-{workers}", Path(tmp) / "runs", f"w{workers}"
            )
            h = res.history[0]
            out.append(
                {
                    "workers": workers,
                    "cpus_per_worker": cpus,
                    "examples": h["examples"],
                    "examples_per_s": h["examples_per_s"],
                    "wall_s": time.perf_counter() - t,
                }
            )
    ray.shutdown()
    return out


if __name__ == "__main__":
    main()
