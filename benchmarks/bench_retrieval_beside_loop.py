"""One retrieval on a thread beside a thread that runs Python without pause, as the Api's
retrieval thread runs beside a busy event loop (`retrieval_in_api`): the retrieval gives
the GIL up at every numpy call and waits up to the switch interval to get it back. Times
`RetrievalService.retrieve` for users drawn uniformly alone, then beside the busy thread at
several switch intervals (Python's default is 5 ms).

    python benchmarks/bench_retrieval_beside_loop.py --model-root <bench_scale work>/models

Prints a table, writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
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
    ap.add_argument("--users", type=int, default=40, help="retrievals timed per row")
    ap.add_argument("--intervals-ms", type=float, nargs="+", default=[5.0, 1.0, 0.5])
    ap.add_argument("--name", default="retrieval-beside-loop", help="results file stem")
    args = ap.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    from pipelines.artifact import load_dataset
    from serving.config import LiveSettings
    from serving.recommender import load_retrieval
    from training.publish import load_version

    torch.set_num_threads(1)
    threadpool_limits(1)
    console = Console(width=120)
    mv = load_version(args.model_root)
    store = Path(tempfile.mkdtemp(prefix="bench-beside-")) / "events.db"
    svc = load_retrieval(mv, LiveSettings(store=f"sqlite://{store}"))
    users = load_dataset(mv.dataset_uri).users["user_id"].to_pylist()
    rng = np.random.default_rng(3)
    n = args.users
    picks = [str(users[i]) for i in rng.choice(len(users), (2 + len(args.intervals_ms)) * n, False)]
    for u in picks[:n]:  # first calls build what loads lazily
        svc.retrieve(u, shown=10)

    def timed(batch: list[str]) -> list[float]:
        out = []
        for u in batch:
            t = time.perf_counter()
            svc.retrieve(u, shown=10)
            out.append(1000 * (time.perf_counter() - t))
        return out

    rows = [{"beside": "nothing", "switch_ms": 5.0, "ms": timed(picks[n : 2 * n])}]
    default = sys.getswitchinterval()
    for j, interval in enumerate(args.intervals_ms):
        sys.setswitchinterval(interval / 1000)
        stop = threading.Event()

        def busy(stop: threading.Event = stop) -> None:  # Python, as a busy event loop
            x = 0
            while not stop.is_set():
                for i in range(1000):
                    x += i

        loop = threading.Thread(target=busy)
        loop.start()
        res: list[float] = []
        batch = picks[(2 + j) * n : (3 + j) * n]
        worker = threading.Thread(target=lambda b=batch, r=res: r.extend(timed(b)))
        worker.start()
        worker.join()
        stop.set()
        loop.join()
        rows.append({"beside": "a busy Python thread", "switch_ms": interval, "ms": res})
    sys.setswitchinterval(default)
    table = Table(title=f"RetrievalService.retrieve, {svc.catalog.n_items:,} items, {n} users")
    for c in ("beside", "switch interval ms", "p50 ms", "p90 ms"):
        table.add_column(c, justify="left" if c == "beside" else "right")
    for r in rows:
        ms = np.asarray(r["ms"])
        r["p50_ms"], r["p90_ms"] = float(np.median(ms)), float(np.percentile(ms, 90))
        table.add_row(
            r["beside"], f"{r['switch_ms']:g}", f"{r['p50_ms']:.1f}", f"{r['p90_ms']:.1f}"
        )
    console.print(table)
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
        "items": svc.catalog.n_items,
        "rows": [{k: v for k, v in r.items() if k != "ms"} for r in rows],
    }
    out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
