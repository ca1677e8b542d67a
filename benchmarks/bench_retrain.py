"""What a retrain costs and whether it loses quality: a log (ML-100k, or a MovieLens folder
such as ML-1M) with its latest interactions held back, then replayed as live events (real
sequences, not random clicks), retrained warm (`llmrec retrain`) against a from-scratch fit
(`llmrec fit`) of the same new dataset, timed per stage and measured on the same held-out
users, in one run.

    python benchmarks/bench_retrain.py --events 1000 10000
    python benchmarks/bench_retrain.py --movielens ../shared/data/ml-1m \
        --events 1000 10000 100000 --stack-spec benchmarks/specs/ml-1m-retrain.json \
        --out benchmarks/results/retrain-ml-1m.json

(`ml-1m-retrain.json`: the default stack with SASRec cut to 8 epochs; ML-1M's default
40-epoch fits take about 23 minutes each on 2 cores, and a row makes four from scratch.)

The re-ranker is not trained here (both paths would add it; see docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

from cluster.retrain_job import RetrainOptions, run_retrain
from pipelines.artifact import load_dataset, write_dataset
from pipelines.prepare import PrepareConfig, run_local
from pipelines.schema import Split
from pipelines.sources import load_source
from serving.events import Event
from serving.sqlite_store import SQLiteEventStore
from serving.version_eval import held_out, ndcg_per_case
from training.evaluation.bootstrap import paired_bootstrap
from training.publish import load_version, publish_version
from training.stack import fit_stack
from training.stack_spec import load_spec
from training.threads import set_threads

RESULTS = Path(__file__).parent / "results"


def split_log(n_future: int, movielens: str | None = None):
    """(base source without the latest `n_future` interactions, those interactions), of
    ML-100k or of the MovieLens folder `movielens`."""
    source = load_source("movielens", path=movielens) if movielens else load_source("ml-100k")
    rows = pa.concat_tables([source.read_canonical(p) for p in source.paths])
    rows = rows.take(pc.sort_indices(rows, [("timestamp", "ascending")]))
    cut = rows.num_rows - n_future
    base = replace(
        source,
        paths=["<base>"],
        tables={"<base>": rows.slice(0, cut)},
        fingerprint=f"{source.fingerprint}+first:{cut}",
    )
    return base, rows.slice(cut)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def fit_base(n_future: int, root: Path, movielens: str | None, spec):
    """The live version every row starts from: the log without its latest `n_future`
    interactions, fitted as `llmrec fit` does. Returns (dataset, its stack's folder, the
    held-back interactions, fit seconds); the cut is the same for every row, so one fit."""
    base, future = split_log(n_future, movielens)
    root.mkdir(parents=True, exist_ok=True)
    ds_path = root / "base"
    write_dataset(run_local(base, PrepareConfig()), str(ds_path))
    ds0 = load_dataset(str(ds_path))
    (stack0, _), t_fit0 = timed(lambda: fit_stack(ds0, Split.TEST, progress=False, spec=spec))
    stack0.save(root / "stack-base")
    return ds0, root / "stack-base", future, t_fit0


def run(n_events: int, base, root: Path, console: Console, spec) -> dict:
    ds0, stack_dir, future, t_fit0 = base
    root.mkdir(parents=True, exist_ok=True)
    models = root / f"models-{n_events}"
    publish_version(ds0, models, None, "v0", progress=False, stack=stack_dir)

    store = SQLiteEventStore(root / f"events-{n_events}.db", key=b"bench")
    new = future.slice(0, n_events).to_pylist()
    store.append(
        [
            Event(str(r["user_id"]), str(r["item_id"]), "rating", float(r["timestamp"]), r["value"])
            for r in new
        ]
    )
    opts = RetrainOptions(
        models=str(models),
        store_url=f"sqlite://{root}/events-{n_events}.db",
        datasets=str(root / f"datasets-{n_events}"),
        reports=str(root / f"reports-{n_events}"),
        reranker=False,
        progress=False,
        keep_candidate=True,
    )
    report, t_warm = timed(lambda: run_retrain(opts, store, console))
    ds1 = load_dataset(load_version(models).dataset_uri)

    # From scratch on the same new dataset: what `llmrec fit` does (fusion on a held-out
    # fit, then every source on all interactions), and its through-validation twin for
    # quality on the same held-out users as the warm candidate.
    _, t_scratch = timed(lambda: fit_stack(ds1, Split.TEST, progress=False, spec=spec))
    scratch_val, _ = fit_stack(ds1, Split.VALIDATION, progress=False, spec=spec)
    scratch_val.save(root / f"scratch-{n_events}")
    scratch = publish_version(
        ds1,
        models,
        None,
        "scratch",
        progress=False,
        stack=root / f"scratch-{n_events}",
        point=False,
    )
    warm = load_version(models, f"{report['candidate']}.candidate")
    cases = held_out(ds1)
    a = ndcg_per_case(warm, store, cases, progress=False)
    b = ndcg_per_case(scratch, store, cases, progress=False)
    diff = paired_bootstrap(a, b)
    return {
        "events": n_events,
        "users": [ds0.manifest.n_users, ds1.manifest.n_users],
        "items": [ds0.manifest.n_items, ds1.manifest.n_items],
        "warm_seconds": round(t_warm, 1),
        "warm_stages": report["seconds"],
        "scratch_fit_seconds": round(t_scratch, 1),
        "first_fit_seconds": round(t_fit0, 1),
        "ratio": round(t_warm / t_scratch, 3),
        "published": report["published"],
        "gate": report["metrics"],
        "ndcg_warm": float(a.mean()),
        "ndcg_scratch": float(b.mean()),
        "difference": {"mean": diff.mean_difference, "low": diff.low, "high": diff.high},
        "held_out_users": len(cases),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--movielens", help="a MovieLens folder (e.g. ../shared/data/ml-1m)")
    ap.add_argument("--stack-spec", help="the stack's recipe (default: DEFAULT_SOURCES)")
    ap.add_argument("--out", default=str(RESULTS / "retrain.json"))
    args = ap.parse_args()
    spec = load_spec(args.stack_spec)
    set_threads()
    console = Console(width=160)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-retrain-") as tmp:
        console.rule(f"the live version: all but the latest {max(args.events)} interactions")
        base = fit_base(max(args.events), Path(tmp) / "base", args.movielens, spec)
        for n in args.events:
            console.rule(f"{n} events")
            row_root = Path(tmp) / f"row-{n}"
            rows.append(run(n, base, row_root, console, spec))
            shutil.rmtree(row_root, ignore_errors=True)
    data = Path(args.movielens).name if args.movielens else "ml-100k"
    t = Table(title=f"retrain after N live events ({data}, retrieval stack, 2 vCPU)")
    for c in (
        "events",
        "warm retrain s",
        "from-scratch fit s",
        "ratio",
        "NDCG@10 warm",
        "NDCG@10 scratch",
        "warm - scratch [95% CI]",
        "gate",
    ):
        t.add_column(c, justify="right")
    for r in rows:
        d = r["difference"]
        t.add_row(
            str(r["events"]),
            f"{r['warm_seconds']:.0f}",
            f"{r['scratch_fit_seconds']:.0f}",
            f"{r['ratio']:.2f}",
            f"{r['ndcg_warm']:.4f}",
            f"{r['ndcg_scratch']:.4f}",
            f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]",
            "published" if r["published"] else "refused",
        )
    console.print(t)
    out = {
        "machine": f"{platform.node()} {platform.machine()}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
        "data": data,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(out, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
