"""What a retrain costs and whether it loses quality: a log (ML-100k, or a MovieLens folder
such as ML-1M) with its latest interactions held back, then replayed as live events (real
sequences, not random clicks), retrained warm (`llmrec retrain`) against a from-scratch fit
(`llmrec fit`) of the same new dataset, timed per stage and measured on the same held-out
users, in one run.

    python benchmarks/bench_retrain.py --events 1000 10000
    python benchmarks/bench_retrain.py --movielens ../shared/data/ml-1m --events 10000 \
        --stack-spec SPEC --out benchmarks/results/retrain-ml-1m.json

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


def run(
    n_events: int, n_future: int, root: Path, console: Console, movielens: str | None, spec
) -> dict:
    base, future = split_log(n_future, movielens)
    ds_path = root / f"base-{n_events}"
    write_dataset(run_local(base, PrepareConfig()), str(ds_path))
    ds0 = load_dataset(str(ds_path))
    models = root / f"models-{n_events}"
    (stack0, _), t_fit0 = timed(lambda: fit_stack(ds0, Split.TEST, progress=False, spec=spec))
    stack0.save(root / f"stack-{n_events}")
    publish_version(ds0, models, None, "v0", progress=False, stack=root / f"stack-{n_events}")

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
        for n in args.events:
            console.rule(f"{n} events")
            rows.append(run(n, max(args.events), Path(tmp), console, args.movielens, spec))
            shutil.rmtree(Path(tmp), ignore_errors=True)
            Path(tmp).mkdir(exist_ok=True)
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
