"""The event stores side by side, without Serve: what the request path reads (version +
cached list), what an event costs to acknowledge (one append, fsynced), from one thread
and from several, on SQLite and on a local redis-server (AOF, fsync always), in one run.

    python benchmarks/bench_event_store.py --seconds 10
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

from cluster.local_redis import LocalRedis
from serving.events import Event, open_store

RESULTS = Path(__file__).parent / "results"


def timed(fn, seconds: float, threads: int) -> tuple[float, np.ndarray]:
    """Calls of `fn(i)` from `threads` threads for `seconds`: (calls/s, latencies in ms)."""
    lat: list[list[float]] = [[] for _ in range(threads)]
    end = time.perf_counter() + seconds

    def run(w: int) -> None:
        i = 0
        while time.perf_counter() < end:
            t = time.perf_counter()
            fn(w * 10_000_000 + i)
            lat[w].append((time.perf_counter() - t) * 1000)
            i += 1

    ts = [threading.Thread(target=run, args=(w,)) for w in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    ms = np.array([x for w in lat for x in w])
    return len(ms) / seconds, ms


def measure(url: str, seconds: float, threads: list[int]) -> list[dict]:
    store = open_store(url)
    users = [f"user-{i}" for i in range(500)]
    for u in users:  # a history and a cached list per user
        store.append([Event(u, f"item-{j}", "view", float(j)) for j in range(20)])
        store.cache_put(u, store.version(u), {"items": [{"item_id": str(j)} for j in range(100)]})
    rows = []

    def read(i: int) -> None:
        u = users[i % len(users)]
        store.cache_get(u, store.version(u))

    def append(i: int) -> None:
        store.append(
            [Event(users[i % len(users)], f"item-{i}", "click", time.time(), None, f"e{i}")]
        )

    for name, fn in (("read: version + cached list", read), ("append one event", append)):
        for n in threads:
            rate, ms = timed(fn, seconds, n)
            rows.append(
                {
                    "operation": name,
                    "threads": n,
                    "per_s": rate,
                    "p50_ms": float(np.percentile(ms, 50)),
                    "p99_ms": float(np.percentile(ms, 99)),
                }
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="per cell")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    p.add_argument("--name", default="event-store")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-store"))
    redis = LocalRedis(tmp / "redis").start()
    try:
        results = {
            "machine": f"{os.cpu_count()} vCPU {platform.processor() or platform.machine()}",
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "command": " ".join(sys.argv),
            "stores": {
                "sqlite": measure(f"sqlite://{tmp / 'events.db'}", args.seconds, args.threads),
                "redis": measure(redis.url, args.seconds, args.threads),
            },
        }
    finally:
        redis.stop()
    t = Table(title=f"Event stores, {args.seconds:.0f} s per cell (Redis: AOF, fsync always)")
    for col in ("operation", "threads", "store", "per s", "p50 ms", "p99 ms"):
        t.add_column(col, justify="left" if col in ("operation", "store") else "right")
    for i in range(len(results["stores"]["sqlite"])):
        for kind in ("sqlite", "redis"):
            r = results["stores"][kind][i]
            t.add_row(
                r["operation"], str(r["threads"]), kind, f"{r['per_s']:.0f}",
                f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
            )  # fmt: skip
    Console(width=140).print(t)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{args.name}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
