"""Pipeline benchmark: synthetic logs through the Ray Data job and the single-process engine.

Both engines run the same steps on the same files, each in a fresh subprocess, in one run.
Memory is the peak of system-wide used memory (total - available, which counts Ray's shared
object store and every worker) above the level before the subprocess started.

    python benchmarks/bench_prepare.py                 # 1M, 5M, 20M
    python benchmarks/bench_prepare.py --sizes 1e6     # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def worker(engine: str, size: int, out: str) -> None:
    """Runs in the subprocess: one engine, one size; prints a JSON line of timings."""
    from pipelines.artifact import write_dataset
    from pipelines.prepare import PrepareConfig, run_local
    from pipelines.sources import load_source

    t0 = time.perf_counter()
    timings = {}
    if engine == "ray":
        from cluster.ray_runtime import connect
        from pipelines.prepare_ray import run_ray

        connect()
        timings["ray_init_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    source = load_source("synthetic", synthetic_interactions=size)
    cfg = PrepareConfig()
    data = run_ray(source, cfg) if engine == "ray" else run_local(source, cfg)
    t2 = time.perf_counter()
    manifest = write_dataset(data, out, overwrite=True)
    t3 = time.perf_counter()
    timings.update(
        job_s=t2 - t1,
        write_s=t3 - t2,
        total_s=t3 - t0,
        rows=manifest.counts.rows["raw"],
        kept=manifest.counts.rows["kcore"],
        users=manifest.n_users,
        items=manifest.n_items,
        files=manifest.files,
    )
    print("RESULT " + json.dumps(timings))


def used() -> int:
    vm = psutil.virtual_memory()
    return vm.total - vm.available


def measure(engine: str, size: int, out: Path) -> dict:
    base = used()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], used())
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", engine, "--size", str(size), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    wall = time.perf_counter() - start
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"{engine} {size} failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    res = json.loads(line[len("RESULT ") :])
    res.update(engine=engine, size=size, process_wall_s=wall, peak_mem_gib=(peak[0] - base) / 2**30)
    return res


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size"] for r in rows})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.38
    for k, engine in enumerate(("local", "ray")):
        ys = [
            next(r["job_s"] for r in rows if r["size"] == s and r["engine"] == engine)
            for s in sizes
        ]
        ax.bar([i + (k - 0.5) * width for i in range(len(sizes))], ys, width, label=engine)
    ax.set_xticks(range(len(sizes)), [f"{s / 1e6:g}M" for s in sizes])
    ax.set_xlabel("synthetic interactions")
    ax.set_ylabel("job time (s), excl. ray.init")
    ax.set_title("llmrec prepare: Ray Data vs single process (2 cores)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="1e6,5e6,2e7", help="comma-separated interaction counts")
    p.add_argument("--worker", choices=["local", "ray"], help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--scratch", default="/tmp/llmrec-bench", help="where artifacts are written")
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.size, args.out)
        return

    console = Console(width=140)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    rows = []
    from pipelines.sources.synthetic import SyntheticSpec, generate
    from pipelines.storage import cache_dir

    for size in sizes:
        spec = SyntheticSpec(n_interactions=size)
        with console.status(f"generating {size:,} synthetic interactions"):
            t = time.perf_counter()
            generate(spec, cache_dir() / "synthetic" / spec.key())
            console.print(f"data for {size:,}: ready in {time.perf_counter() - t:.1f} s")
        for engine in ("local", "ray"):
            with console.status(f"{engine} engine, {size:,} rows"):
                r = measure(engine, size, Path(args.scratch) / f"{engine}-{size}")
            rows.append(r)
            console.print(f"  {engine:5s} job {r['job_s']:.1f} s, peak {r['peak_mem_gib']:.2f} GiB")

    table = Table(title="prepare: synthetic interactions, Ray Data vs single process")
    for col in (
        "rows",
        "engine",
        "job s",
        "rows/s",
        "ray.init s",
        "write s",
        "peak GiB",
        "ray / local",
        "same files",
    ):
        table.add_column(col, justify="right")
    for size in sizes:
        local = next(r for r in rows if r["size"] == size and r["engine"] == "local")
        for r in (local, next(r for r in rows if r["size"] == size and r["engine"] == "ray")):
            r["ratio_vs_local"] = r["job_s"] / local["job_s"]
            r["same_files_as_local"] = r["files"] == local["files"]
            table.add_row(
                f"{r['rows']:,}",
                r["engine"],
                f"{r['job_s']:.1f}",
                f"{r['rows'] / r['job_s']:,.0f}",
                f"{r.get('ray_init_s', 0):.1f}",
                f"{r['write_s']:.1f}",
                f"{r['peak_mem_gib']:.2f}",
                f"{r['ratio_vs_local']:.2f}x",
                str(r["same_files_as_local"]),
            )
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
        "machine": {
            "cpus": os.cpu_count(),
            "mem_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "results": [{k: v for k, v in r.items() if k != "files"} for r in rows],
    }
    (RESULTS / "prepare.json").write_text(json.dumps(meta, indent=2))
    plot(rows, RESULTS / "prepare.png")
    console.print(f"wrote {RESULTS / 'prepare.json'} and {RESULTS / 'prepare.png'}")


if __name__ == "__main__":
    main()
