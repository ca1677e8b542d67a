"""One Retrieval replica's work per request, in process: `RetrievalService.retrieve` (the
user's state, candidates, features, explanations of the shown items) on a published model
version, for users drawn uniformly, one thread as a replica runs it. Where the time goes:
cProfile's cumulative time of each part, per request. No Ray, no HTTP: the serving graph's
own cost around it is what `bench_serving.py` and `bench_scale.py` measure.

    python benchmarks/bench_retrieval_service.py --model-root artifacts/models/ml-100k
    python benchmarks/bench_retrieval_service.py --model-root <bench_scale work>/models \
        --name retrieval-service-5e6

Prints a table, writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import platform
import pstats
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

#: (label, file suffix, function name) of the parts reported; nested parts are inside the
#: ones above them (candidates holds each source's view, the fusion over their union).
PARTS = (
    ("retrieve (whole)", "serving/recommender.py", "retrieve"),
    ("user state", "serving/recommender.py", "user_state"),
    ("candidates (generate)", "training/candidates.py", "generate"),
    ("  each source's view of the request", "training/candidates.py", "_views"),
    ("    scored over the whole catalogue", "training/retrieval/views.py", "dense_view"),
    ("    content, through its item index", "training/retrieval/content.py", "search"),
    ("    sparse sources, from their rows", "training/retrieval/base.py", "search"),
    ("    ALS and BPR, through their item indexes", "training/retrieval/cf.py", "search"),
    ("    SASRec, through its item index", "training/retrieval/sequential.py", "search"),
    ("  learned fusion over their union", "training/retrieval/fusion.py", "score_entries"),
    ("  order of the new-item slots", "training/candidates.py", "_new_item_order"),
    ("  final top n", "training/retrieval/base.py", "top_n"),
    ("re-ranker features of the head", "training/reranker/features.py", "candidate_features"),
    ("explanations of the shown items", "serving/recommender.py", "explain"),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model-root", required=True, help="a `llmrec publish` root")
    ap.add_argument("--users", type=int, default=300, help="requests timed (users uniform)")
    ap.add_argument("--shown", type=int, default=10, help="list length (items explained)")
    ap.add_argument("--name", default="retrieval-service", help="results file stem")
    args = ap.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    from pipelines.artifact import load_dataset
    from serving.config import LiveSettings
    from serving.recommender import load_retrieval
    from training.publish import load_version

    torch.set_num_threads(1)  # a replica's one thread (threadpoolctl does not reach torch)
    console = Console(width=140)
    mv = load_version(args.model_root)
    store = Path(tempfile.mkdtemp(prefix="bench-retrieval-")) / "events.db"
    t = time.perf_counter()
    svc = load_retrieval(mv, LiveSettings(store=f"sqlite://{store}"))
    load_s = time.perf_counter() - t
    ds = load_dataset(mv.dataset_uri)
    users = [str(u) for u in ds.users["user_id"].to_pylist()]
    rng = np.random.default_rng(0)
    # Distinct users for the timed and the profiled pass: a user's second request finds
    # state the first one cached.
    drawn = rng.choice(len(users), min(2 * args.users + 10, len(users)), replace=False)
    picks = [users[i] for i in drawn[: args.users]]
    profiled = [users[i] for i in drawn[args.users : 2 * args.users]]
    warm_up = [users[i] for i in drawn[2 * args.users :]]
    with threadpool_limits(1):
        for u in warm_up:  # first calls load lazily
            svc.retrieve(u, shown=args.shown)
        ms, answers = [], hashlib.sha256()
        for u in picks:
            t = time.perf_counter()
            r = svc.retrieve(u, shown=args.shown)
            ms.append((time.perf_counter() - t) * 1000)
            # What was answered, so that two code versions can be shown to answer alike.
            answers.update(np.asarray(r.items, np.int64).tobytes())
            answers.update(json.dumps(r.explanations, sort_keys=True, default=str).encode())
        prof = cProfile.Profile()
        prof.enable()
        for u in profiled:
            svc.retrieve(u, shown=args.shown)
        prof.disable()
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (cc, nc, tt, ct, callers)

    def cumulative(suffix: str, name: str) -> float:
        return sum(v[3] for (f, _, n), v in stats.items() if f.endswith(suffix) and n == name)

    whole = cumulative(*PARTS[0][1:])
    parts = []
    for label, suffix, name in PARTS:
        ct = cumulative(suffix, name)
        per_request = 1000 * ct / len(profiled)
        parts.append({"part": label.strip(), "ms_per_request": per_request, "share": ct / whole})
    ms = np.asarray(ms)
    timing = {
        "answers_sha256": answers.hexdigest()[:16],
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }
    title = (
        f"RetrievalService.retrieve, {len(picks)} uniform users of {len(users):,}, "
        f"{svc.catalog.n_items:,} items, 1 thread: p50 {timing['p50_ms']:.1f} ms, "
        f"p99 {timing['p99_ms']:.1f} ms (load {load_s:.1f} s; answers {timing['answers_sha256']})"
    )
    table = Table(title=title)
    for c in ("part (profiled)", "ms per request", "share"):
        table.add_column(c, justify="left" if c.startswith("part") else "right")
    for (label, _, _), p in zip(PARTS, parts, strict=True):
        table.add_row(label, f"{p['ms_per_request']:.2f}", f"{100 * p['share']:.0f}%")
    console.print(table)
    console.print("(profiled times include cProfile's own overhead; p50/p99 are unprofiled)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{args.name}.json"
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
        },
        "model_version": mv.version,
        "users": len(users),
        "items": svc.catalog.n_items,
        "requests": len(picks),
        "load_s": load_s,
        **timing,
        "parts": parts,
    }
    out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
