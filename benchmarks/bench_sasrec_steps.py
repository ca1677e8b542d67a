"""What one SASRec training batch costs as the catalogue grows, with the sampled softmax
(beyond `full_softmax_items`), updating every item row each batch (a dense Adam step over
the table) or only the rows the batch touched (`item_updates: sparse`, the default with the
sampled loss).

An epoch has one batch per window, so its time is batches x this cost: with dense updates
the cost grows with the items, and an epoch with users x items, faster than the data.

    python benchmarks/bench_sasrec_steps.py
    python benchmarks/bench_sasrec_steps.py --items 50000 200000 --steps 30 --threads 2

Prints a table and writes benchmarks/results/sasrec-steps.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from training.retrieval.sequential import SelfAttentive, _Network, _optimizers, train_batch

RESULTS = Path(__file__).resolve().parent / "results"


def ms_per_batch(n_items: int, sparse: bool, steps: int, warmup: int = 3) -> float:
    """Mean wall ms of a training batch (forward, sampled loss, backward, optimizer step)
    of the default SASRec over `n_items` items, on random windows."""
    p = SelfAttentive.default_params()
    torch.manual_seed(0)
    net = _Network(n_items, p, sparse_items=sparse)
    opts = _optimizers(net, p["learning_rate"], sparse)
    batch = torch.randint(1, n_items + 1, (p["batch_size"], p["max_len"] + 1))
    for _ in range(warmup):
        train_batch(net, opts, batch, n_items, p["negatives"])
    start = time.perf_counter()
    for _ in range(steps):
        train_batch(net, opts, batch, n_items, p["negatives"])
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, nargs="+", default=[50_000, 200_000])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for n in args.items:
        dense = ms_per_batch(n, False, args.steps)
        sparse = ms_per_batch(n, True, args.steps)
        rows.append({"items": n, "dense_ms": round(dense, 1), "sparse_ms": round(sparse, 1)})
    table = Table(title=f"SASRec, one batch of {SelfAttentive.default_params()['batch_size']}")
    for c in ("items", "dense item updates ms", "sparse ms", "dense / sparse"):
        table.add_column(c, justify="right")
    for r in rows:
        ratio = r["dense_ms"] / r["sparse_ms"]
        table.add_row(f"{r['items']:,}", f"{r['dense_ms']}", f"{r['sparse_ms']}", f"{ratio:.1f}")
    Console().print(table)
    RESULTS.mkdir(exist_ok=True)
    out = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "steps": args.steps,
        "rows": rows,
    }
    (RESULTS / "sasrec-steps.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
