"""What a fit's second pass costs and what starting it warm loses: the stack fitted through
validation twice on the same data, its second pass (every source on all the data, after the
held-out fit the fusion learns from) from scratch and warm from the held-out fit
(`llmrec fit --full-fit scratch|warm`), timed per step and measured on every user's test
item (NDCG@10 of the served retrieval order, paired bootstrap CI), in one run.

    python benchmarks/bench_full_fit.py
    python benchmarks/bench_full_fit.py --movielens ../shared/data/ml-1m \
        --stack-spec benchmarks/specs/ml-1m-retrain.json --name full-fit-ml-1m

The item texts are encoded once, before both fits (they do not depend on the mode).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from pipelines.artifact import load_dataset, write_dataset
from pipelines.prepare import PrepareConfig, run_local
from pipelines.schema import Split
from pipelines.sources import load_source
from serving.sqlite_store import SQLiteEventStore
from serving.version_eval import held_out, ndcg_per_case
from training.evaluation.bootstrap import paired_bootstrap
from training.fit_steps import FitSteps
from training.publish import publish_version
from training.retrieval import FitData
from training.stack import fit_stack, source_spec, text_encoder
from training.stack_spec import load_spec
from training.threads import set_threads

RESULTS = Path(__file__).parent / "results"
MODES = ("scratch", "warm")


def second_pass_seconds(steps: dict[str, float], sources: list[str]) -> float:
    """The seconds of the fit's second pass: every source's own step (the held-out fit's
    steps are prefixed `held-out `)."""
    return round(sum(steps.get(name, 0.0) for name in sources), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--movielens", help="a MovieLens folder (e.g. ../shared/data/ml-1m)")
    ap.add_argument("--stack-spec", help="the stack's recipe (default: DEFAULT_SOURCES)")
    ap.add_argument("--name", default="full-fit-ml-100k")
    args = ap.parse_args()
    spec = load_spec(args.stack_spec)
    threads = set_threads()
    console = Console(width=160)
    source = load_source("movielens", path=args.movielens) if args.movielens else None
    source = source or load_source("ml-100k")
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-full-fit-") as tmp:
        root = Path(tmp)
        write_dataset(run_local(source, PrepareConfig()), str(root / "ds"))
        ds = load_dataset(str(root / "ds"))
        data = FitData.from_dataset(ds, Split.VALIDATION)
        console.print(f"{ds.manifest.n_users:,} users, {ds.manifest.n_items:,} items")
        emb = text_encoder(spec).encode(data.item_text).astype(np.float32)
        store = SQLiteEventStore(root / "events.db", key=b"bench")
        cases = held_out(ds)
        names = list(source_spec(spec))
        per_case = {}
        for mode in MODES:
            console.rule(f"second pass: {mode}")
            steps = FitSteps()
            start = time.perf_counter()
            stack, _ = fit_stack(
                ds, Split.VALIDATION, embeddings=emb, spec=spec, steps=steps, full_fit=mode
            )
            seconds = time.perf_counter() - start
            stack.save(root / f"stack-{mode}")
            mv = publish_version(
                ds, root / "models", None, mode, progress=False, stack=root / f"stack-{mode}"
            )
            per_case[mode] = ndcg_per_case(mv, store, cases, progress=True)
            rows[mode] = {
                "fit_s": round(seconds, 1),
                "second_pass_s": second_pass_seconds(steps.seconds, names),
                "steps_s": steps.seconds,
                "fit_info": {n: m.fit_info for n, m in stack.sources.items() if m.fit_info},
                "ndcg_at_10": float(per_case[mode].mean()),
            }
    diff = paired_bootstrap(per_case["warm"], per_case["scratch"])
    data_name = Path(args.movielens).name if args.movielens else "ml-100k"
    t = Table(title=f"a fit's second pass, scratch vs warm ({data_name}, {threads} threads)")
    for c in ("second pass", "fit s", "second pass s", "test NDCG@10"):
        t.add_column(c, justify="right")
    for mode in MODES:
        r = rows[mode]
        t.add_row(mode, f"{r['fit_s']:.0f}", f"{r['second_pass_s']:.0f}", f"{r['ndcg_at_10']:.4f}")
    console.print(t)
    console.print(
        f"warm - scratch: {diff.mean_difference:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}] "
        f"over {len(cases):,} test users; fit time warm / scratch "
        f"{rows['warm']['fit_s'] / rows['scratch']['fit_s']:.2f}"
    )
    out = {
        "machine": f"{platform.node()} {platform.machine()}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
        "data": data_name,
        "threads": threads,
        "test_users": len(cases),
        "modes": rows,
        "difference": {"mean": diff.mean_difference, "low": diff.low, "high": diff.high},
    }
    path = RESULTS / f"{args.name}.json"
    path.write_text(json.dumps(out, indent=2))
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
