"""The item indexes of a published model version (content and the factor models, from
`index_from` items): for users drawn uniformly, each indexed source's top-100 recall against
its exact top 100 and its time per request at several probe counts, then whole requests
(`CandidateGenerator.generate`, 50 candidates) with the indexes and with every source scoring
the whole catalogue: the share of the exact candidates kept and the time of each.

    python benchmarks/bench_item_index.py --model-root <bench_scale work>/models

Prints two tables, writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model-root", required=True, help="a `llmrec publish` root")
    ap.add_argument("--users", type=int, default=200, help="users drawn uniformly")
    ap.add_argument("--probes", type=int, nargs="+", default=[16, 48, 96, 192])
    ap.add_argument("--name", default="item-index", help="results file stem")
    args = ap.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    from pipelines.artifact import load_dataset
    from serving.config import LiveSettings
    from serving.recommender import load_retrieval
    from training.publish import load_version
    from training.retrieval.fusion import top_list

    torch.set_num_threads(1)  # a replica's one thread
    console = Console(width=140)
    mv = load_version(args.model_root)
    store = Path(tempfile.mkdtemp(prefix="bench-index-")) / "events.db"
    svc = load_retrieval(mv, LiveSettings(store=f"sqlite://{store}"))
    gen = svc.generator
    users = load_dataset(mv.dataset_uri).users["user_id"].to_pylist()
    rng = np.random.default_rng(0)
    states = [svc.user_state(str(users[i])) for i in rng.choice(len(users), args.users, False)]
    first = np.asarray(states[0].history, dtype=np.int32)
    for m in gen.sources.values():  # a first search builds an index a model builds lazily
        m.search(states[0].index, first, np.zeros(gen.n_items, bool), gen.config.depth)
    indexed = {s: m for s, m in gen.sources.items() if getattr(m, "_index", None) is not None}
    rows = []
    with threadpool_limits(1):
        for name, src in indexed.items():
            saved = src.params["index_probes"]
            for probes in args.probes:
                src.params["index_probes"] = probes
                recall, ms, exact_ms = [], [], []
                for st in states:
                    hist = np.asarray(st.history, dtype=np.int32)
                    banned = np.zeros(gen.n_items, dtype=bool)
                    banned[hist] = True
                    t = time.perf_counter()
                    view = src.search(st.index, hist, banned, gen.config.depth)
                    ms.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    dense = np.where(banned, -np.inf, src.score(st.index, hist)[: gen.n_items])
                    exact = top_list(dense, gen.config.depth)
                    exact_ms.append(time.perf_counter() - t)
                    if len(exact):
                        recall.append(len(np.intersect1d(exact, view.top)) / len(exact))
                rows.append(
                    {
                        "source": name,
                        "probes": probes,
                        "lists": len(src._index.centroids),
                        "recall_at_depth": float(np.mean(recall)),
                        "recall_p5": float(np.percentile(recall, 5)),
                        "ms_p50": 1000 * float(np.median(ms)),
                        "exact_ms_p50": 1000 * float(np.median(exact_ms)),
                    }
                )
            src.params["index_probes"] = saved
        whole = {}
        for label, on in (("indexed", True), ("every item scored", False)):
            keep = {s: m._index for s, m in indexed.items()}
            if not on:
                for m in indexed.values():
                    m._index = None
            ms, lists = [], []
            for st in states:
                t = time.perf_counter()
                lists.append(gen.generate(st.index, st.history).items)
                ms.append(time.perf_counter() - t)
            for s, m in indexed.items():
                m._index = keep[s]
            whole[label] = {"lists": lists, "ms": ms}
    pairs = list(zip(whole["indexed"]["lists"], whole["every item scored"]["lists"], strict=True))
    kept50 = [len(np.intersect1d(a, b)) / max(len(b), 1) for a, b in pairs]
    kept10 = [len(np.intersect1d(a[:10], b[:10])) / max(len(b[:10]), 1) for a, b in pairs]
    table = Table(title=f"Indexed sources, {len(states)} uniform users, {gen.n_items:,} items")
    for c in ("source", "probes", "lists", "recall@depth", "p5", "ms p50", "exact ms p50"):
        table.add_column(c, justify="left" if c == "source" else "right")
    for r in rows:
        table.add_row(
            r["source"],
            str(r["probes"]),
            str(r["lists"]),
            f"{r['recall_at_depth']:.4f}",
            f"{r['recall_p5']:.2f}",
            f"{r['ms_p50']:.2f}",
            f"{r['exact_ms_p50']:.2f}",
        )
    console.print(table)
    summary = {
        "generate_ms_p50_indexed": 1000 * float(np.median(whole["indexed"]["ms"])),
        "generate_ms_p50_exact": 1000 * float(np.median(whole["every item scored"]["ms"])),
        "candidates_kept": float(np.mean(kept50)),
        "top10_kept": float(np.mean(kept10)),
        "identical_lists": float(np.mean([np.array_equal(a, b) for a, b in pairs])),
    }
    console.print(
        f"generate: p50 {summary['generate_ms_p50_indexed']:.1f} ms indexed, "
        f"{summary['generate_ms_p50_exact']:.1f} ms scoring every item; of the exact 50 "
        f"candidates {100 * summary['candidates_kept']:.1f}% kept, of its first 10 "
        f"{100 * summary['top10_kept']:.1f}%; "
        f"identical lists {100 * summary['identical_lists']:.0f}%"
    )
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
        "items": gen.n_items,
        "users": len(states),
        "sources": rows,
        **summary,
    }
    out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
