"""SASRec's learning curve on a leave-one-out dataset (ML-1M by default), the way the
sequential-recommendation papers measure it: one fit on the training rows, validation
NDCG@10 after every few epochs (that is what chooses the epoch count), and test NDCG@10 of
the same model with the validation item in the user's history. Full ranking over all
items, the user's own items removed. The published results on this data are printed
beside ours.

    python benchmarks/bench_sasrec_curve.py --data artifacts/datasets/ml-1m \
        --params '{"max_len": 200, "batch_size": 128, "epochs": 30}' --every 3

Prints a table, writes benchmarks/results/sasrec-curve-<dataset>.json and a PNG.
"""

from __future__ import annotations

import argparse
import json
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

from training.evaluation.published import published  # noqa: E402

PUBLISHED_ML1M = published("ml-1m")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "artifacts" / "datasets" / "ml-1m"))
    ap.add_argument("--params", default="{}", help="SASRec parameters (JSON)")
    ap.add_argument("--every", type=int, default=3, help="evaluate after every N epochs")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="the JSON results file")
    args = ap.parse_args()

    from pipelines.artifact import load_dataset
    from pipelines.schema import Split
    from training.evaluation.bootstrap import confidence_interval
    from training.evaluation.harness import Phase
    from training.evaluation.metrics import metrics_from_ranks
    from training.retrieval import SelfAttentive
    from training.threads import set_threads

    threads = set_threads(args.threads)
    ds = load_dataset(args.data)
    name = Path(args.data).name
    val, test = Phase.build(ds, Split.VALIDATION), Phase.build(ds, Split.TEST)
    model = SelfAttentive(**json.loads(args.params))
    rows: list[dict] = []
    start = time.perf_counter()

    def on_epoch(epoch: int, fitted: SelfAttentive) -> None:
        if epoch % args.every and epoch != model.params["epochs"]:
            return
        train_s = time.perf_counter() - start - sum(r["eval_s"] for r in rows)
        t = time.perf_counter()
        row: dict = {"epoch": epoch, "train_s": round(train_s, 1)}
        for phase in (val, test):
            m = metrics_from_ranks(phase.ranks(phase.score_matrix(fitted)))
            row[phase.name] = {k: float(np.mean(m[k])) for k in ("NDCG@10", "Recall@10")}
            ci = confidence_interval(m["NDCG@10"])
            row[phase.name]["NDCG@10 CI"] = [ci.low, ci.high]
        row["eval_s"] = round(time.perf_counter() - t, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)

    model.fit(val.fit, on_epoch=on_epoch)
    best = max(rows, key=lambda r: r["validation"]["NDCG@10"])

    t = Table(title=f"SASRec on {name}: one fit on train; validation chooses the epoch")
    for c in ("epoch", "val N@10", "test N@10", "test N@10 95% CI", "test R@10", "train s"):
        t.add_column(c, justify="right")
    for r in rows:
        te = r["test"]
        lo, hi = te["NDCG@10 CI"]
        mark = " *" if r is best else ""
        t.add_row(
            f"{r['epoch']}{mark}",
            f"{r['validation']['NDCG@10']:.4f}",
            f"{te['NDCG@10']:.4f}",
            f"[{lo:.4f}, {hi:.4f}]",
            f"{te['Recall@10']:.4f}",
            f"{r['train_s']:.0f}",
        )
    if name == "ml-1m":
        for label, (ndcg, recall) in PUBLISHED_ML1M.items():
            t.add_row(f"published: {label}", "", f"{ndcg:.4f}", "", f"{recall:.4f}", "")
    Console(width=140).print(t)
    report = {
        "dataset": name,
        "params": model.params,
        "loss": model.fit_info["loss"],
        "rows": rows,
        "chosen_epoch": best["epoch"],
        "chosen_test": best["test"],
        "published": PUBLISHED_ML1M if name == "ml-1m" else None,
        "threads": threads,
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}, "
        f"{threads} threads",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": " ".join(["python", *sys.argv]),
    }
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"sasrec-curve-{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    _plot(rows, name, out.with_suffix(".png"))
    print(f"wrote {out}")


def _plot(rows: list[dict], name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [r["epoch"] for r in rows]
    for split in ("validation", "test"):
        ax.plot(epochs, [r[split]["NDCG@10"] for r in rows], marker="o", label=split)
    if name == "ml-1m":
        ax.axhline(
            PUBLISHED_ML1M["SASRec, full cross-entropy"][0],
            ls="--",
            c="grey",
            label="published SASRec, full CE (test)",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("NDCG@10")
    ax.set_title(f"SASRec on {name}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
