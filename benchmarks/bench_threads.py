"""How a torch stage slows when something else runs on the machine, by thread count: SASRec's
training epochs on ML-100k, on a quiet machine and beside a CPU-bound process on one core,
with 1 thread, with every core's torch/BLAS threads, and with the default that counts the
cores idle at start (`training.threads.set_threads`). Each cell runs in a fresh subprocess,
in one run, alternating.

    python benchmarks/bench_threads.py --data artifacts/datasets/ml-100k

Prints a table and writes benchmarks/results/threads.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "threads.json"

CELL = """
import sys, time
sys.path.insert(0, {root!r})
from training.threads import set_threads
n = set_threads({threads})
from pipelines.artifact import load_dataset
from pipelines.schema import Split
from training.retrieval import FitData, SelfAttentive
data = FitData.from_dataset(load_dataset({data!r}), Split.VALIDATION)
t = time.perf_counter()
SelfAttentive(epochs={epochs}, batch_size=32).fit(data)
print(n, (time.perf_counter() - t) / {epochs})
"""

HOG = "import time\nend = time.time() + 3600\nwhile time.time() < end:\n    pass\n"


def cell(data: str, threads: int | None, epochs: int, busy: bool) -> tuple[int, float]:
    """(threads used, seconds per epoch); `threads` None is the by-load default."""
    hog = subprocess.Popen([sys.executable, "-c", HOG]) if busy else None
    try:
        code = CELL.format(root=str(ROOT), threads=threads, data=data, epochs=epochs)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        used, seconds = out.stdout.strip().splitlines()[-1].split()
        return int(used), float(seconds)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "artifacts" / "datasets" / "ml-100k"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from training.threads import available_cores

    cores = available_cores()
    counts: list[int | None] = [*sorted({1, cores}), None]
    grid = [(busy, threads) for busy in (False, True) for threads in counts]
    seconds: dict[str, list[float]] = {}
    used: dict[str, list[int]] = {}
    for r in range(args.repeats):
        for busy, threads in grid:
            key = f"{'busy' if busy else 'quiet'}|{threads or 'auto'}"
            n, s = cell(args.data, threads, args.epochs, busy)
            seconds.setdefault(key, []).append(s)
            used.setdefault(key, []).append(n)
            print(f"repeat {r}: {key}: {n} threads, {s:.2f} s per epoch", flush=True)
    rows = []
    for busy, threads in grid:
        key = f"{'busy' if busy else 'quiet'}|{threads or 'auto'}"
        # "x quiet" compares with the same setting on a quiet machine: for the by-load default
        # that is what a user sees when the machine gets busy
        quiet = min(seconds[f"quiet|{threads or 'auto'}"])
        rows.append(
            {
                "machine_state": "beside a CPU-bound process" if busy else "quiet",
                "threads": threads or "by load",
                "threads_used": used[key],
                "seconds_per_epoch": seconds[key],
                "slowdown_vs_quiet": min(seconds[key]) / quiet,
            }
        )
    t = Table(title=f"SASRec epochs on ML-100k ({cores} cores), by threads and load")
    for c in ("machine", "threads", "used", "s / epoch (each repeat)", "x quiet, same setting"):
        t.add_column(c, justify="left" if c == "machine" else "right")
    for r in rows:
        t.add_row(
            r["machine_state"],
            str(r["threads"]),
            "/".join(str(n) for n in r["threads_used"]),
            " / ".join(f"{s:.2f}" for s in r["seconds_per_epoch"]),
            f"{r['slowdown_vs_quiet']:.2f}",
        )
    Console(width=120).print(t)
    report = {
        "rows": rows,
        "cores": cores,
        "epochs_per_cell": args.epochs,
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": " ".join(["python", *sys.argv]),
        "started": time.strftime("%H:%M:%S"),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
