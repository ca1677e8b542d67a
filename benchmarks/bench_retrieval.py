"""Retrieval latency per request on ML-100k: each source, the fused candidate generator on
each path, and folding one new event into a user's CF vector.

    python benchmarks/bench_retrieval.py            # all 943 users, n = 50
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


def timed(fn, calls) -> np.ndarray:
    out = []
    for args in calls:
        t = time.perf_counter()
        fn(*args)
        out.append((time.perf_counter() - t) * 1000)
    return np.asarray(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=50, help="candidates per request")
    p.add_argument("--data", default=None, help="ML-100k artifact (prepared if missing)")
    args = p.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    from pipelines.artifact import MANIFEST, load_dataset, write_dataset
    from pipelines.prepare import PrepareConfig, run_local
    from pipelines.schema import Split
    from pipelines.sources import load_source
    from training.candidates import CandidateConfig, CandidateGenerator
    from training.evaluation.harness import Phase
    from training.retrieval import FitData, MostPopular, SegmentPopular
    from training.retrieval.fusion import LearnedFusion, source_ranks
    from training.stack import DEFAULT_SOURCES

    console = Console(width=140)
    path = args.data or "/tmp/llmrec-bench/ml-100k"
    if not Path(path, MANIFEST).exists():
        write_dataset(run_local(load_source("ml-100k"), PrepareConfig()), path, overwrite=True)
    ds = load_dataset(path)
    data = FitData.from_dataset(ds, Split.VALIDATION)
    with console.status("fitting sources"):
        # The serving stack's sources with its parameters (one definition: training.stack).
        sources = {n: klass(**params).fit(data) for n, (klass, params) in DEFAULT_SOURCES.items()}
        pop, seg = MostPopular().fit(data), SegmentPopular(smoothing=100).fit(data)
        val = Phase.build(ds, Split.VALIDATION)
        # Latency only: the fusion weights need not be the evaluated ones.
        val_scores = {
            n: np.where(val.excluded, -np.inf, val.score_matrix(s)) for n, s in sources.items()
        }
        val_ranks = {n: source_ranks(v, None, 100) for n, v in val_scores.items()}
        log_pop = np.log1p(np.bincount(val.fit.seq_items, minlength=val.fit.n_items))
        fusion = LearnedFusion(list(sources), 100).fit(val_ranks, val_scores, log_pop, val.targets)
    gen = CandidateGenerator(sources, pop, seg, fusion, CandidateConfig(n=args.n))
    users = [(u, data.history(u)) for u in range(data.n_users)]
    rows = []
    # One thread, as a serving replica would run (docs/RERANKER.md: one thread per replica).
    torch.set_num_threads(1)  # torch's own pool: threadpoolctl does not reach it
    with threadpool_limits(1):
        for name, m in sources.items():
            ms = timed(lambda u, h, m=m: m.recommend(u, h, args.n), users)
            rows.append((f"{name}.recommend (n={args.n})", ms))
        rows.append(
            (
                f"candidates: warm ({len(sources)} sources + learned fusion)",
                timed(lambda u, h: gen.generate(u, h), users),
            )
        )
        rows.append(
            (
                "candidates: sparse (3 recent items)",
                timed(lambda u, h: gen.generate(None, h[-3:]), users),
            )
        )
        rows.append(
            (
                "candidates: cold start (segment + exploration)",
                timed(lambda u, h: gen.generate(u, []), users),
            )
        )
        events = [(u, np.append(h, (h[-1] + 1) % data.n_items)) for u, h in users]
        for name in ("ALS", "BPR"):
            m = sources[name]
            rows.append(
                (
                    f"{name}: fold in one new event",
                    timed(lambda u, h, m=m: m.partial_fit_users(np.array([u]), [h]), events),
                )
            )

    table = Table(title=f"ML-100k retrieval latency per request, {len(users)} users, 1 thread")
    for c in ("operation", "p50 ms", "p99 ms", "max ms", "< 5 ms at p99"):
        table.add_column(c, justify="left" if c == "operation" else "right")
    results = []
    for name, ms in rows:
        p50, p99, mx = np.percentile(ms, 50), np.percentile(ms, 99), ms.max()
        table.add_row(name, f"{p50:.2f}", f"{p99:.2f}", f"{mx:.2f}", "yes" if p99 < 5 else "NO")
        results.append({"operation": name, "p50_ms": p50, "p99_ms": p99, "max_ms": mx})
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "retrieval.json"
    out.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": "python " + " ".join(sys.argv),
                "machine": {
                    "cpus": os.cpu_count(),
                    "processor": platform.processor() or platform.machine(),
                },
                "results": results,
            },
            indent=2,
        )
    )
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
