"""How much training SASRec needs on ML-100k (issue 4's stack): each setting is fitted on
train (scored on validation) and on train + validation (scored on test), full ranking with
the user's history masked, as `llmrec eval` does. Validation chooses; test is reported.

    python benchmarks/bench_sasrec.py
    python benchmarks/bench_sasrec.py --settings 'b32-ep40={"batch_size": 32, "epochs": 40}'

Each setting after the first is compared with it on test, user by user (paired bootstrap).
Prints a table and writes benchmarks/results/sasrec.json (`--out` for another file).
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
OUT = ROOT / "benchmarks" / "results" / "sasrec.json"

#: The settings of the 2026-11-29 run. The old default (20 epochs of batch 128) takes 400
#: optimiser steps; the others add steps by epochs or smaller batches. Overlapping windows
#: (`window_stride`) and longer histories (`max_len`) can be tried with --settings.
SETTINGS = {
    "old default: 20 ep, batch 128": {"epochs": 20, "batch_size": 128},
    "old default, seed 1": {"epochs": 20, "batch_size": 128, "seed": 1},
    "40 ep, batch 128": {"epochs": 40, "batch_size": 128},
    "20 ep, batch 32": {"epochs": 20, "batch_size": 32},
    "new default: 40 ep, batch 32": {"epochs": 40, "batch_size": 32},
    "new default, seed 1": {"epochs": 40, "batch_size": 32, "seed": 1},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "artifacts" / "datasets" / "ml-100k"))
    ap.add_argument("--settings", nargs="*", help="NAME=JSON params instead of the built-in list")
    ap.add_argument("--out", default=str(OUT), help="the JSON results file")
    args = ap.parse_args()
    settings = dict(s.split("=", 1) for s in args.settings) if args.settings else dict(SETTINGS)
    settings = {k: v if isinstance(v, dict) else json.loads(v) for k, v in settings.items()}

    from pipelines.artifact import load_dataset
    from pipelines.schema import Split
    from training.evaluation.bootstrap import paired_bootstrap
    from training.evaluation.harness import Phase
    from training.evaluation.metrics import metrics_from_ranks
    from training.retrieval import SelfAttentive

    ds = load_dataset(args.data)
    phases = [Phase.build(ds, Split.VALIDATION), Phase.build(ds, Split.TEST)]
    rows, first_test = [], None
    for name, params in settings.items():
        row: dict = {"setting": name, "params": SelfAttentive(**params).params}
        start = time.perf_counter()
        for phase in phases:
            model = SelfAttentive(**params).fit(phase.fit)
            m = metrics_from_ranks(phase.ranks(phase.score_matrix(model)))
            row[phase.name] = {k: float(np.mean(m[k])) for k in ("NDCG@10", "Recall@50")}
        row["fit_info"] = model.fit_info
        # Test NDCG@10 against the first setting's, user by user.
        if first_test is None:
            first_test = m["NDCG@10"]
        else:
            d = paired_bootstrap(m["NDCG@10"], first_test)
            row["test_vs_first"] = {
                "diff": d.mean_difference,
                "low": d.low,
                "high": d.high,
                "p": d.p_value,
            }
        row["seconds_per_fit"] = round((time.perf_counter() - start) / len(phases), 1)
        rows.append(row)
        print(f"{name}: {row['validation']} {row['test']}", flush=True)

    t = Table(title="SASRec on ML-100k, full ranking (validation chooses)")
    cols = ("setting", "val N@10", "val R@50", "test N@10", "test R@50", "vs first [95% CI]")
    for c in (*cols, "s / fit"):
        t.add_column(c, justify="left" if c == "setting" else "right")
    for r in rows:
        v, te, d = r["validation"], r["test"], r.get("test_vs_first")
        t.add_row(
            r["setting"],
            f"{v['NDCG@10']:.4f}",
            f"{v['Recall@50']:.3f}",
            f"{te['NDCG@10']:.4f}",
            f"{te['Recall@50']:.3f}",
            f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]" if d else "-",
            f"{r['seconds_per_fit']:.0f}",
        )
    Console(width=140).print(t)
    report = {
        "rows": rows,
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": " ".join(["python", *sys.argv]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
