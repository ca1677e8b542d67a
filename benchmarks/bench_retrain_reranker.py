"""The re-ranker in a retrain: fine-tuned warm from the live version's adapter and heads (what
`llmrec retrain` does: `--warm`, 1 epoch of at most 600 examples) against its recipe trained
from scratch on the same new data, timed, and both evaluated on the same test users, in one
run. ML-100k's latest N interactions (by time) are held back; the live re-ranker is trained
on the rest, the two candidates on everything (the new dataset version). The demo's stack
(SASRec on its 20-epoch schedule) and the default CPU training settings.

    python benchmarks/bench_retrain_reranker.py --events 10000
    python benchmarks/bench_retrain_reranker.py --events 10000 --max-examples 1200 --epochs 1

Prints a table; writes benchmarks/results/retrain-reranker.json.
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

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=10000)
    ap.add_argument("--data", default=str(ROOT / "artifacts" / "datasets" / "ml-100k"))
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument(
        "--max-examples",
        type=int,
        default=None,
        help="the live and from-scratch recipe's LM examples [default: TrainSettings']",
    )
    ap.add_argument("--epochs", type=int, default=None, help="[default: TrainSettings']")
    args = ap.parse_args()

    from benchmarks.bench_retrain import split_log
    from cluster.commands.demo import demo_sources
    from cluster.ray_runtime import connect
    from cluster.retrain_job import RetrainOptions
    from pipelines.artifact import load_dataset, write_dataset
    from pipelines.prepare import PrepareConfig, run_local
    from training.reranker.evaluate import evaluate_rerankers
    from training.reranker.model import RerankerConfig
    from training.reranker.prepared import prepare_examples
    from training.reranker.recipe import train_recipe
    from training.reranker.settings import TrainSettings
    from training.threads import set_threads

    set_threads()
    console = Console(width=160)
    spec = demo_sources()
    cfg, settings = RerankerConfig(), TrainSettings()
    recipe = {"max_examples": args.max_examples, "epochs": args.epochs}
    settings = settings.model_copy(update={k: v for k, v in recipe.items() if v is not None})
    opts = RetrainOptions(models="", store_url="", datasets="", reports="")
    base, _ = split_log(args.events)
    ds1 = load_dataset(args.data)
    connect()
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-rr-") as tmp:
        root = Path(tmp)
        write_dataset(run_local(base, PrepareConfig()), str(root / "base"))
        ds0 = load_dataset(str(root / "base"))

        def train(name: str, ds, s: TrainSettings) -> Path:
            console.rule(name)
            start = time.perf_counter()
            prepared = prepare_examples(ds, cfg, s, progress=False, spec=spec)
            target = root / name
            train_recipe(prepared, cfg, s, target, str(root / "runs"), name)
            seconds[name] = round(time.perf_counter() - start, 1)
            return target

        live = train("live", ds0, settings)
        warm_settings = settings.model_copy(
            update={
                "epochs": opts.warm_epochs,
                "max_examples": opts.warm_examples,
                "init_from": str(live),
                "init_features_from": None,
            }
        )
        warm = train("warm", ds1, warm_settings)
        scratch = train("scratch", ds1, settings)
        console.rule("evaluate")
        report = evaluate_rerankers(
            ds1, {"warm": warm, "scratch": scratch}, args.resamples, progress=False, spec=spec
        )
    models = report["models"]
    pair = next(
        (p for p in report["paired_bootstrap"] if {p["a"], p["b"]} == {"warm", "scratch"}), None
    )
    t = Table(title=f"the re-ranker after {args.events} new interactions (ML-100k, 2 vCPU)")
    for c in ("re-ranker", "train s (examples + training)", "test NDCG@10 [95% CI]"):
        t.add_column(c, justify="right")
    for name in ("warm", "scratch"):
        m = models[name]["test"]["NDCG@10"]
        t.add_row(
            name, f"{seconds[name]:.0f}", f"{m['mean']:.4f} [{m['low']:.4f}, {m['high']:.4f}]"
        )
    console.print(t)
    if pair:
        sign = 1 if pair["a"] == "warm" else -1
        console.print(
            f"warm - scratch: {sign * pair['mean_difference']:+.4f} "
            f"(95% CI of a - b: [{pair['low']:+.4f}, {pair['high']:+.4f}], a = {pair['a']})"
        )
    out = {
        "machine": f"{platform.node()} {platform.machine()}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "events": args.events,
        "seconds": seconds,
        "warm_settings": {"epochs": opts.warm_epochs, "max_examples": opts.warm_examples},
        "recipe_settings": {"epochs": settings.epochs, "max_examples": settings.max_examples},
        "report": report,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "retrain-reranker.json").write_text(json.dumps(out, indent=2, default=str))
    console.print(f"wrote {RESULTS / 'retrain-reranker.json'}")


if __name__ == "__main__":
    main()
