"""The re-ranker half of `bench_privacy.py`: the same re-ranker trained without differential
privacy (the default recipe) and with DP-SGD at each epsilon (`--dp-epsilon`, user level,
docs/PRIVACY.md), every one evaluated on the same ML-100k test users, paired against the
non-private one. One stack (the demo's sources) builds the examples once for every run."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

NON_PRIVATE = "non-private"


def sweep(
    data: str,
    epsilons: list[float],
    mode: str,
    dp_epochs: int,
    dp_batch: int,
    delta: float,
    resamples: int,
    max_examples: int | None,
    console,
) -> dict[str, Any]:
    """Train and evaluate; returns rows (name, epsilon, plan, NDCG@10, paired difference)."""
    from cluster.commands.demo import demo_sources
    from cluster.ray_runtime import connect
    from pipelines.artifact import load_dataset
    from training.reranker.evaluate import CANDIDATES_NAME, evaluate_rerankers
    from training.reranker.model import RerankerConfig, read_meta
    from training.reranker.prepared import prepare_examples
    from training.reranker.recipe import FEATURE_STAGE, train_recipe
    from training.reranker.settings import TrainSettings

    spec = demo_sources()
    ds = load_dataset(data)
    cfg = RerankerConfig(mode=mode)
    base = TrainSettings(max_examples=max_examples, routing_users=0)
    if mode == "features":  # the recipe's own schedule for the feature layer alone
        base = base.model_copy(update=FEATURE_STAGE)
    console.rule("examples")
    prepared = prepare_examples(ds, cfg, base, progress=False, spec=spec)
    connect()
    seconds: dict[str, float] = {}
    folders: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dp-") as tmp:
        root = Path(tmp)
        runs = [(NON_PRIVATE, base)]
        for eps in epsilons:
            dp = {"dp_epsilon": eps, "dp_delta": delta, "dp_batch_size": dp_batch}
            runs.append((f"epsilon {eps:g}", base.model_copy(update=dp | {"epochs": dp_epochs})))
        for name, settings in runs:
            console.rule(name)
            start = time.perf_counter()
            target = root / name.replace(" ", "-")
            train_recipe(prepared, cfg, settings, target, str(root / "runs"), target.name)
            seconds[name] = round(time.perf_counter() - start, 1)
            folders[name] = target
        plans = {n: read_meta(f).get("privacy") for n, f in folders.items()}
        console.rule("evaluate")
        report = evaluate_rerankers(ds, folders, resamples, progress=False, spec=spec)
    paired = {
        (p["a"], p["b"]): p for p in report["paired_bootstrap"] if NON_PRIVATE in (p["a"], p["b"])
    }
    rows = []
    for name in folders:
        m = report["models"][name]["test"]["NDCG@10"]
        p = paired.get((name, NON_PRIVATE)) or paired.get((NON_PRIVATE, name))
        diff = None
        if p is not None:
            sign = 1 if p["a"] == name else -1
            lo, hi = sorted((sign * p["low"], sign * p["high"]))
            diff = {"mean": sign * p["mean_difference"], "low": lo, "high": hi}
        rows.append(
            {
                "name": name,
                # every stage's budget (a hybrid's feature layer and LM stage add up)
                "epsilon": plans[name]["total_epsilon"] if plans[name] else None,
                "plan": plans[name],
                "ndcg10": m,
                "minus_non_private": diff,
                "train_seconds": seconds[name],
            }
        )
    fused = report["models"][CANDIDATES_NAME]["test"]["NDCG@10"]
    return {
        "mode": mode,
        "dp_epochs": dp_epochs,
        "dp_batch": dp_batch,
        "training_examples": len(prepared.train),
        "users_with_examples": len({r.user for r in prepared.train}),
        "rows": rows,
        "fused_ndcg10": fused,
        "report": report,
    }


def table(result: dict[str, Any]):
    from rich.table import Table

    t = Table(
        title=f"the {result['mode']} re-ranker trained with DP-SGD (ML-100k test users; "
        f"{result['dp_epochs']} epochs, expected batch {result['dp_batch']})"
    )
    cols = ("training", "epsilon spent (total)", "noise multiplier", "NDCG@10 [95% CI]")
    for c in (*cols, "minus non-private", "train s"):
        t.add_column(c, justify="right")
    for r in result["rows"]:
        m, d, plan = r["ndcg10"], r["minus_non_private"], r["plan"]
        t.add_row(
            r["name"],
            "inf" if plan is None else f"{plan['total_epsilon']:.2f}",
            "-" if plan is None else f"{plan['noise_multiplier']:.2f}",
            f"{m['mean']:.4f} [{m['low']:.4f}, {m['high']:.4f}]",
            "-" if d is None else f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]",
            f"{r['train_seconds']:.0f}",
        )
    return t
