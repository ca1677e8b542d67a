"""Where a warm retrain loses quality against a from-scratch fit: ML-100k with its latest
10,000 interactions held back and replayed as live events (as bench_retrain.py does), the
live stack fitted on the rest, then the new dataset's gate fit (through validation) from
scratch, from scratch with the live version's fusion, and with SASRec warm-started from the
live weights (10 or 20 of its 40 epochs, two learning rates, constant or cosine-decayed)
and the live fusion, and the fit `llmrec retrain` makes (its own fusion) with several warm
schedules. Each is
measured through the serving path on every user's latest interaction; paired bootstrap
against the from-scratch fit.

    python benchmarks/bench_retrain_parts.py

Prints a table and writes benchmarks/results/retrain-parts.json.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
OUT = ROOT / "benchmarks" / "results" / "retrain-parts.json"
# A warm fit's learning rate: the full fit's (4e-3), constant or decayed to zero; without
# either override, SASRec's defaults (cosine from 8e-3).
CONSTANT = {"warm_schedule": "constant", "warm_learning_rate": None}
COSINE = {"warm_schedule": "cosine", "warm_learning_rate": None}


def main() -> None:
    from bench_retrain import split_log

    from cluster.retrain_job import RetrainOptions, _next_dataset
    from pipelines.artifact import load_dataset, write_dataset
    from pipelines.prepare import PrepareConfig, run_local
    from pipelines.schema import Split
    from serving.events import Event
    from serving.sqlite_store import SQLiteEventStore
    from serving.store_export import export_store
    from serving.version_eval import held_out, ndcg_per_case
    from training.evaluation.bootstrap import paired_bootstrap
    from training.publish import publish_version
    from training.retrieval import SelfAttentive
    from training.stack import WarmStart, fit_stack, item_map
    from training.threads import set_threads

    threads = set_threads()
    root = Path(tempfile.mkdtemp(prefix="bench-retrain-parts-"))
    base, future = split_log(10000)
    write_dataset(run_local(base, PrepareConfig()), str(root / "ds0"))
    ds0 = load_dataset(str(root / "ds0"))
    live, _ = fit_stack(ds0, Split.TEST, progress=False)
    store = SQLiteEventStore(root / "events.db", key=b"bench")
    store.append(
        [
            Event(str(r["user_id"]), str(r["item_id"]), "rating", float(r["timestamp"]), r["value"])
            for r in future.to_pylist()
        ]
    )
    live.save(root / "live-stack")
    publish_version(ds0, root / "models", None, "v0", progress=False, stack=root / "live-stack")
    opts = RetrainOptions(
        models=str(root / "models"),
        store_url="sqlite://bench",
        datasets=str(root / "datasets"),
        reports=str(root / "reports"),
    )
    ds1 = _next_dataset(ds0, export_store(store, "bench", progress=False), store, opts)
    spec = {n: (type(m), dict(m.params)) for n, m in live.sources.items()}
    cases = held_out(ds1)
    ndcg, seconds = {}, {}

    def measure(name: str, stack) -> None:
        stack.save(root / name)
        mv = publish_version(
            ds1, root / "models", None, name, progress=False, stack=root / name, point=False
        )
        ndcg[name] = ndcg_per_case(mv, store, cases, progress=False)
        print(f"{name}: {ndcg[name].mean():.4f}", flush=True)

    t = time.perf_counter()
    scratch, emb = fit_stack(ds1, Split.VALIDATION, progress=False, spec=spec)
    seconds["from scratch"] = time.perf_counter() - t
    measure("from scratch", scratch)
    scratch.fusion = live.fusion
    measure("from scratch, the live fusion", scratch)
    # (label, share of SASRec's epochs, parameter overrides, the live fusion or learn one
    # the way `llmrec retrain` does: on a held-out fit of the new data, warm too)
    for label, share, override, live_fusion in (
        ("SASRec warm 10 epochs, the live fusion", 0.25, CONSTANT, True),
        (
            "SASRec warm 10 epochs at lr 1e-3, the live fusion",
            0.25,
            {**CONSTANT, "learning_rate": 1e-3},
            True,
        ),
        ("SASRec warm 20 epochs, the live fusion", 0.5, CONSTANT, True),
        ("SASRec warm 10 epochs cosine, the live fusion", 0.25, COSINE, True),
        ("the retrain's fit (warm 10 epochs, own fusion)", 0.25, CONSTANT, False),
        ("the retrain's fit, cosine (warm 10 epochs, own fusion)", 0.25, COSINE, False),
        ("the same, batch 64, 20 epochs", 0.5, {**COSINE, "batch_size": 64}, False),
        ("the same, batch 128, 40 epochs", 1.0, {**COSINE, "batch_size": 128}, False),
        ("the retrain's fit, cosine from 8e-3 (the default)", 0.25, {}, False),
    ):
        sp = dict(spec)
        sp["SASRec"] = (SelfAttentive, {**spec["SASRec"][1], **override})
        t = time.perf_counter()
        warm = WarmStart(live.sources, item_map(ds0, ds1), share)
        stack, _ = fit_stack(
            ds1,
            Split.VALIDATION,
            live.fusion if live_fusion else None,
            progress=False,
            spec=sp,
            embeddings=emb,
            warm=warm,
        )
        seconds[label] = time.perf_counter() - t
        measure(label, stack)
    table = Table(title=f"gate fit after 10,000 events, {len(cases)} held-out users (ML-100k)")
    for c in ("fit", "NDCG@10", "minus from scratch [95% CI]", "fit s"):
        table.add_column(c)
    rows = {}
    for name, values in ndcg.items():
        d = paired_bootstrap(values, ndcg["from scratch"])
        rows[name] = {
            "ndcg10": float(values.mean()),
            "difference": [d.mean_difference, d.low, d.high],
            "seconds": seconds.get(name),
        }
        secs = f"{seconds[name]:.0f}" if name in seconds else "-"
        diff = f"{d.mean_difference:+.4f} [{d.low:+.4f}, {d.high:+.4f}]"
        table.add_row(name, f"{values.mean():.4f}", diff, secs)
    Console().print(table)
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()})",
        "command": "python benchmarks/bench_retrain_parts.py",
        "threads": threads,
        "held_out_users": len(cases),
        "rows": rows,
    }
    OUT.write_text(json.dumps(result, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
