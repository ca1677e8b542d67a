"""Load on the Serve graph over loopback HTTP: a closed loop at several concurrencies, 90%
GET /recommend and 10% POST /events over many users, against the same graph without the
re-ranker and an in-process call of the same logic (the Serve overhead), in one run.

    python benchmarks/bench_serving.py --model-root artifacts/models/ml-100k --duration 60
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from serving_stores import store_comparison, store_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
#: the benchmark's API key header (the graph checks keys, as served): set by `bench_keys`
AUTH: dict[str, str] = {}


def bench_keys(folder: Path) -> str:
    """A key file with one key of every scope and no practical rate limit; the key goes into
    AUTH. Returns the file for the graph's `api_keys`."""
    from serving.auth import SCOPES, new_key, write_keys

    key, record = new_key("bench", list(SCOPES), rate=1e6)
    write_keys(folder / "api-keys.json", [record])
    AUTH["Authorization"] = f"Bearer {key}"
    return str(folder / "api-keys.json")


def closed_loop(call, concurrency: int, duration: float, seed: int) -> list[dict]:
    """`concurrency` workers, each issuing its next request when the previous returns."""
    out: list[dict] = []
    lock = threading.Lock()
    stop = time.perf_counter() + duration

    def worker(w: int) -> None:
        rng = random.Random(seed * 1000 + w)
        local = []
        while time.perf_counter() < stop:
            t = time.perf_counter()
            kind, info = call(rng)
            local.append({"kind": kind, "ms": (time.perf_counter() - t) * 1000, **info})
        with lock:
            out.extend(local)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return out


def open_loop(call, rate: float, duration: float, seed: int, workers: int = 64) -> list[dict]:
    """Requests arriving at `rate` per second (Poisson), whatever the answers take: the load a
    service sees from many independent users, where `closed_loop` sends more the faster it
    answers. Each request's time counts from its arrival, so a client-side wait for a free
    worker is part of it (no coordinated omission)."""
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            break
        arrivals.append(t)
    out: list[dict] = []
    lock = threading.Lock()
    start = time.perf_counter()

    def one(n: int, at: float) -> None:
        kind, info = call(random.Random(seed * 100_003 + n))
        row = {"kind": kind, "ms": (time.perf_counter() - start - at) * 1000, **info}
        with lock:
            out.append(row)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for n, at in enumerate(arrivals):
            time.sleep(max(0.0, start + at - time.perf_counter()))
            pool.submit(one, n, at)
    return out


def summarize(rows: list[dict], duration: float, deadline_ms: float) -> dict:
    rec = [r for r in rows if r["kind"] == "recommend"]
    ms = np.array([r["ms"] for r in rec]) if rec else np.zeros(1)
    stages: dict[str, int] = {}
    late: dict[str, int] = {}  # what the answers past the deadline were
    late_timings: list[dict] = []  # where their time went (JSON: the latest answers first)
    for r in rec:
        key = "cache" if r.get("cached") else r.get("stage", "error")
        if r.get("fallback"):
            key += f" ({r['fallback']})"
        stages[key] = stages.get(key, 0) + 1
        if r.get("server_ms", 0) > deadline_ms:
            late[key] = late.get(key, 0) + 1
            late_timings.append({"stage": key, **r.get("timings", {})})
    errors = sum(1 for r in rows if r.get("status", 200) >= 500 or r.get("error"))
    served = [r["ms"] for r in rec if r.get("cached") or r.get("stage") == "retrieval"]
    cache = [r["ms"] for r in rec if r.get("cached")]
    # A stage that timed out gave up `margin` before the deadline: how long after that the
    # answer was done is what the margin has to cover.
    overshoot = np.array(
        [
            r["timings"]["total"] - (deadline_ms - r["timings"]["margin"])
            for r in rec
            if str(r.get("fallback")).endswith("_timeout") and "margin" in r.get("timings", {})
        ]
    )
    server = np.array([r.get("server_ms", 0) for r in rec]) if rec else np.zeros(1)
    return {
        "requests": len(rows),
        "throughput_rps": len(rows) / duration,
        "recommend_p50_ms": float(np.percentile(ms, 50)),
        "recommend_p95_ms": float(np.percentile(ms, 95)),
        "recommend_p99_ms": float(np.percentile(ms, 99)),
        "cache_or_retrieval_p50_ms": float(np.percentile(served, 50)) if served else None,
        "cache_or_retrieval_p99_ms": float(np.percentile(served, 99)) if served else None,
        # The cache path alone: where the event store's read cost shows.
        "cache_p50_ms": float(np.percentile(cache, 50)) if cache else None,
        "cache_p99_ms": float(np.percentile(cache, 99)) if cache else None,
        "error_rate": errors / max(len(rows), 1),
        "past_deadline": sum(late.values()),
        "past_deadline_by_stage": dict(sorted(late.items())),
        "past_deadline_timings_ms": sorted(late_timings, key=lambda t: -t.get("total", 0))[:100],
        "server_p99_ms": float(np.percentile(server, 99)) if rec else None,
        # The tail that decides whether an answer can be late: a stall shows here first.
        "server_p999_ms": float(np.percentile(server, 99.9)) if rec else None,
        "server_max_ms": float(server.max()) if rec else None,
        "within_10pct_of_deadline": int((server > 0.9 * deadline_ms).sum()),
        "timed_out": len(overshoot),
        "timeout_overshoot_ms": {
            "p50": float(np.percentile(overshoot, 50)),
            "p99": float(np.percentile(overshoot, 99)),
            "max": float(overshoot.max()),
        }
        if len(overshoot)
        else None,
        "stage_mix": {k: v / max(len(rec), 1) for k, v in sorted(stages.items())},
    }


def http_call(base: str, users: list[str], items: list[str]):
    import requests

    session = threading.local()

    def call(rng: random.Random):
        s = getattr(session, "s", None)
        if s is None:
            s = session.s = requests.Session()
            s.headers.update(AUTH)
        user = rng.choice(users)
        try:
            if rng.random() < 0.1:
                r = s.post(
                    f"{base}/events",
                    json={"user_id": user, "item_id": rng.choice(items), "type": "click"},
                    timeout=30,
                )
                return "event", {"status": r.status_code}
            r = s.get(f"{base}/recommend/{user}", params={"k": 10}, timeout=30)
            if r.status_code != 200:
                return "recommend", {"status": r.status_code, "error": True}
            j = r.json()
            return "recommend", {
                "status": 200,
                "stage": j["stage"],
                "cached": j["cached"],
                "fallback": j["fallback"],
                "server_ms": j["timings_ms"].get("total", 0),
                "timings": j["timings_ms"],
            }
        except requests.RequestException:
            return "recommend", {"error": True}

    return call


def inprocess_call(retrieval, reranker, store, users, items):
    from serving.events import Event
    from serving.responses import respond

    lock = threading.Lock()  # one model instance, as one replica would have

    def call(rng: random.Random):
        user = rng.choice(users)
        if rng.random() < 0.1:
            store.append([Event(user, rng.choice(items), "click", time.time())])
            return "event", {"status": 200}
        t = time.perf_counter()
        with lock:
            r = retrieval.retrieve(user)
            scores = None
            if r.path != "cold_start" and reranker is not None:
                scores = reranker.score([(r.prompt_history, r.items, r.features)])[0]
            out = respond(r, 10, scores, "x", None, {"total": time.perf_counter() - t}, None)
        return "recommend", {
            "stage": out["stage"],
            "cached": False,
            "fallback": None,
            "server_ms": out["timings_ms"]["total"],
            "timings": out["timings_ms"],
        }

    return call


def steal_ms() -> float | None:
    """CPU time the hypervisor gave to others while this VM's vCPUs wanted it (all CPUs,
    since boot): a stall no process here can avoid. None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    return int(fields[8]) * 1000 / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else None


def ingress_state(base: str) -> dict[str, float]:
    """The ingress's stall counters from /metrics: the loop probe's late wake-ups by bucket
    and the collector's passes and longest pause by generation."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    text = requests.get(f"{base}/metrics", headers=AUTH, timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "llmrec_loop_lag_wakeup_seconds_bucket":
                out[f"wakeups_le_{sample.labels['le']}"] = sample.value
            elif sample.name == "llmrec_loop_lag_wakeup_seconds_count":
                out["wakeups"] = sample.value
            elif sample.name == "llmrec_gc_pause_seconds_bucket":
                out[f"gc_gen{sample.labels['generation']}_le_{sample.labels['le']}"] = sample.value
            elif sample.name == "llmrec_gc_pause_seconds_count":
                out[f"gc_gen{sample.labels['generation']}"] = sample.value
            elif sample.name == "llmrec_gc_longest_pause_seconds":
                out[f"gc_longest_gen{sample.labels['generation']}"] = sample.value
    return out


def stalls(before: dict[str, float], after: dict[str, float]) -> dict:
    """What the ingress went through during one cell: late wake-ups of its loop over 20, 50
    and 100 ms, and the collector's passes by generation, with those over 20 and 50 ms."""

    def delta(key: str) -> float:
        return after.get(key, 0) - before.get(key, 0)

    def over(prefix: str, le: str) -> int:
        return int(delta(prefix) - delta(f"{prefix}_le_{le}"))

    return {
        "loop_wakeups": int(delta("wakeups")),
        "loop_late_over_20ms": over("wakeups", "0.02"),
        "loop_late_over_50ms": over("wakeups", "0.05"),
        "loop_late_over_100ms": over("wakeups", "0.1"),
        **{f"gc_passes_gen{g}": int(delta(f"gc_gen{g}")) for g in range(3)},
        **{f"gc_over_20ms_gen{g}": over(f"gc_gen{g}", "0.02") for g in range(3)},
        **{f"gc_over_50ms_gen{g}": over(f"gc_gen{g}", "0.05") for g in range(3)},
        "gc_longest_ms_since_start": [
            round(after.get(f"gc_longest_gen{g}", 0) * 1000, 1) for g in range(3)
        ],
    }


def reflection(base: str, trials: int) -> dict:
    """Time from an event's acknowledgement to a response that already reflects it."""
    import requests

    ms, reflected = [], 0
    answered_by: dict[str, int] = {}
    for i in range(trials):
        user = f"reflect-{i}"
        click = {"user_id": user, "item_id": "1", "type": "click"}
        requests.post(f"{base}/events", json=click, headers=AUTH)
        top = requests.get(f"{base}/recommend/{user}", params={"k": 1}, headers=AUTH).json()
        top = top["items"][0]
        requests.post(
            f"{base}/events",
            json={"user_id": user, "item_id": top["item_id"], "type": "click"},
            headers=AUTH,
        )
        t = time.perf_counter()
        got = requests.get(f"{base}/recommend/{user}", params={"k": 10}, headers=AUTH).json()
        ms.append((time.perf_counter() - t) * 1000)
        reflected += top["item_id"] not in [x["item_id"] for x in got["items"]]
        how = "cache" if got["cached"] else got["stage"]
        how += f" ({got['fallback']})" if got["fallback"] else ""
        answered_by[how] = answered_by.get(how, 0) + 1
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "reflected": reflected / trials,
        "answered_by": answered_by,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-root", default="artifacts/models/ml-100k")
    p.add_argument("--duration", type=float, default=60.0, help="seconds per cell")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--new-users", type=int, default=200, help="unknown users in the mix")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument(
        "--reflection-only",
        type=float,
        nargs="+",
        metavar="REFLECT_MS",
        help="only measure event reflection, with reflect_ms unset (0) and at each value given",
    )
    p.add_argument(
        "--shed",
        type=int,
        default=3,
        help="shed_inflight of the load-shedding variant (0: skip it)",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        choices=("in-process", "rerank", "plain"),
        default=["in-process", "rerank", "plain"],
        help="which of the in-process call, the graph with and without the re-ranker to run "
        "(the shedding variant follows --shed)",
    )
    p.add_argument(
        "--live",
        default="{}",
        help="JSON live settings applied to every graph variant, e.g. '{\"reflect_ms\": 10}'",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="JSON",
        help="more graphs with the re-ranker, each with these live settings on top, run after "
        "the first in the order given: an A/B in one run ('{}' repeats the first; an "
        '"env_vars" key sets the replicas\' environment, e.g. \'{"env_vars": '
        '{"RAY_worker_niceness": "15"}}\')',
    )
    p.add_argument("--reflection-trials", type=int, default=30)
    p.add_argument(
        "--stores",
        nargs="+",
        choices=("sqlite", "redis"),
        default=["sqlite"],
        help="event stores the graphs run on, each in turn (redis: a local redis-server with "
        "AOF fsync always, started here); with two, a comparison table follows",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with two stores: deploy each store's graph this many times, alternating, and "
        "give each difference per round",
    )
    p.add_argument("--name", default="serving", help="results file stem under benchmarks/results")
    args = p.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from serving.deploy import export_serve_env

    export_serve_env("cpu")  # Serve's proxy as `llmrec serve` runs it
    import ray
    from ray import serve

    from serving.config import LiveSettings
    from serving.deploy import run_profile
    from serving.recommender import RetrievalService
    from serving.rerank_service import RerankService
    from serving.sqlite_store import SQLiteEventStore
    from training.publish import load_version

    console = Console(width=180)
    mv = load_version(args.model_root)
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving"))
    root = str(Path(args.model_root).resolve())
    if args.reflection_only:
        reflection_only(args, root, tmp, console)
        return
    keys = bench_keys(tmp)
    from serving.deploy import read_profile

    # The in-process variant runs the re-ranker with the CPU profile's compression too.
    profile = read_profile("cpu")["applications"][0]["deployments"]
    rr_live = next(d for d in profile if d["name"] == "Reranker").get("user_config", {})
    settings = LiveSettings(model_root=root, store=f"sqlite://{tmp / 'events.db'}", **rr_live)
    deadline = settings.deadline_ms

    retrieval_probe = RetrievalService(mv, SQLiteEventStore(tmp / "probe.db"), settings)
    known = list(retrieval_probe.catalog.user_index)
    items = retrieval_probe.catalog.item_ids[:1000]
    users = known + [f"new-{i}" for i in range(args.new_users)]

    results: dict = {
        **run_info(),
        "model_version": mv.version,
        "deadline_ms": deadline,
        "duration_s": args.duration,
        "cells": [],
    }

    # In-process first (no Ray running): the same logic without Serve.
    if "in-process" in args.variants:
        store = SQLiteEventStore(tmp / "inproc.db")
        retrieval = RetrievalService(mv, store, settings)
        reranker = RerankService(mv, store, settings) if mv.reranker else None
        for c in args.concurrency:
            rows = closed_loop(
                inprocess_call(retrieval, reranker, store, users, items), c, args.duration, seed=c
            )
            results["cells"].append(
                {
                    "variant": "in-process (same logic, no Serve)",
                    "concurrency": c,
                    **summarize(rows, args.duration, deadline),
                }
            )
            console.print(results["cells"][-1])
        del retrieval, reranker

    ray.init(log_to_driver=False, include_dashboard=False)
    base = f"http://127.0.0.1:{args.port}"
    graphs = []
    if "rerank" in args.variants:
        graphs.append(("graph with re-ranker", {"shed_inflight": None}))
    for other in args.compare:
        live = json.loads(other)  # "env_vars": the replicas' environment, not a live setting
        graphs.append(
            (f"graph with re-ranker + {json.dumps(live)}", {"shed_inflight": None, **live})
        )
    if args.shed:
        graphs.append(
            (f"graph with re-ranker, shed above {args.shed}", {"shed_inflight": args.shed})
        )
    if "plain" in args.variants:
        graphs.append(("graph without re-ranker", {"rerank": False}))
    extra = json.loads(args.live)
    graphs = [(variant, {**live, **extra}) for variant, live in graphs]
    redis = None
    if "redis" in args.stores:
        from cluster.local_redis import LocalRedis

        redis = LocalRedis(tmp / "redis").start()
    if len(args.stores) > 1:  # each variant on each store, back to back, round after round
        graphs = [
            (f"{v} [{s}]", dict(live), s, r)
            for r in range(args.rounds)
            for v, live in graphs
            for s in args.stores
        ]
    else:
        graphs = [(v, live, args.stores[0], 0) for v, live in graphs]
    results["event_reflection_by_store"] = {}
    for n, (variant, live, store_kind, rnd) in enumerate(graphs, start=1):
        env = live.pop("env_vars", None)
        # A fresh store per variant: none inherits another's cached lists.
        store = (
            f"{redis.url}?prefix=graph{n}"
            if store_kind == "redis"
            else f"sqlite://{tmp / f'graph-{n}.db'}"
        )
        run_profile(
            "cpu",
            {"model_root": root, "store": store, "api_keys": keys},
            user_config=live or None,
            port=args.port,
            env=env,
        )
        _wait(base)
        warm = _wait_warm(base, console)
        for c in args.concurrency:
            before, stolen = ingress_state(base), steal_ms()
            rows = closed_loop(http_call(base, users, items), c, args.duration, seed=c)
            stolen = None if stolen is None else steal_ms() - stolen
            results["cells"].append(
                {
                    "variant": variant,
                    "round": rnd,
                    "concurrency": c,
                    "precompute": warm,
                    **summarize(rows, args.duration, deadline),
                    "ingress": stalls(before, ingress_state(base)),
                    "cpu_steal_ms": stolen,
                }
            )
            console.print(results["cells"][-1])
        if (
            variant.startswith("graph with re-ranker")
            and "+" not in variant
            and "shed" not in variant
        ):
            e = reflection(base, args.reflection_trials)
            results["event_reflection_by_store"][store_kind] = e
            results.setdefault("event_reflection", e)
        serve.shutdown()
    ray.shutdown()
    if redis is not None:
        redis.stop()

    t = Table(
        title=f"Serve graph under a closed loop, {args.duration:.0f} s per cell, "
        f"90% recommend / 10% events, deadline {deadline:.0f} ms"
    )
    for col in (
        "variant",
        "conc.",
        "req/s",
        "p50",
        "p95",
        "p99",
        "cache/retrieval p50/p99",
        "errors",
        "server p99/p99.9/max",
        "> 90% of deadline",
        "past deadline",
        "stage mix",
    ):
        t.add_column(col, justify="left" if col in ("variant", "stage mix") else "right")
    for cell in results["cells"]:
        cr = (
            f"{cell['cache_or_retrieval_p50_ms']:.0f}/{cell['cache_or_retrieval_p99_ms']:.0f}"
            if cell["cache_or_retrieval_p50_ms"] is not None
            else "-"
        )
        t.add_row(
            cell["variant"],
            str(cell["concurrency"]),
            f"{cell['throughput_rps']:.1f}",
            f"{cell['recommend_p50_ms']:.0f}",
            f"{cell['recommend_p95_ms']:.0f}",
            f"{cell['recommend_p99_ms']:.0f}",
            cr,
            f"{cell['error_rate']:.1%}",
            f"{cell['server_p99_ms']:.0f}/{cell['server_p999_ms']:.0f}/{cell['server_max_ms']:.0f}",
            str(cell["within_10pct_of_deadline"]),
            str(cell["past_deadline"]),
            ", ".join(f"{k} {v:.0%}" for k, v in cell["stage_mix"].items()),
        )
    console.print(t)
    for cell in results["cells"]:
        if "ingress" in cell:
            i = cell["ingress"]
            console.print(
                f"ingress, {cell['variant']} at {cell['concurrency']}: loop woke "
                f">20 / >50 / >100 ms late {i['loop_late_over_20ms']} / "
                f"{i['loop_late_over_50ms']} / {i['loop_late_over_100ms']} times of "
                f"{i['loop_wakeups']}; collector passes by generation "
                f"{i['gc_passes_gen0']} / {i['gc_passes_gen1']} / {i['gc_passes_gen2']}, "
                f"of them >20 ms {i['gc_over_20ms_gen0']} / {i['gc_over_20ms_gen1']} / "
                f"{i['gc_over_20ms_gen2']}; "
                f"CPU taken by the hypervisor {cell['cpu_steal_ms']} ms"
            )
        if cell["past_deadline"]:
            late = ", ".join(f"{k} {v}" for k, v in cell["past_deadline_by_stage"].items())
            console.print(f"past the deadline, {cell['variant']} at {cell['concurrency']}: {late}")
    for kind, e in results["event_reflection_by_store"].items():
        console.print(
            f"event reflected in the next request ({kind}): {e['reflected']:.0%} of trials, "
            f"next-request latency p50 {e['p50_ms']:.0f} ms, p99 {e['p99_ms']:.0f} ms"
        )
    if len(args.stores) > 1:
        results["store_comparison"] = store_comparison(results["cells"])
        console.print(store_table(results["store_comparison"]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{args.name}.json"
    out.write_text(json.dumps(results, indent=2))
    plot(results, out.with_suffix(".png"))
    console.print(f"wrote {out} and {out.with_suffix('.png')}")


def run_info() -> dict[str, str]:
    """Where, when and how a result was measured."""
    return {
        "machine": f"{os.cpu_count()} vCPU {platform.processor() or platform.machine()}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
    }


def reflection_only(args, root: str, tmp: Path, console: Console) -> None:
    """Event reflection with the re-ranker, without and with `reflect_ms` (one run)."""
    import ray
    from ray import serve

    from serving.deploy import run_profile

    ray.init(log_to_driver=False, include_dashboard=False)
    base = f"http://127.0.0.1:{args.port}"
    out = {
        **run_info(),
        "trials": 30,
        "cells": [],
    }
    t = Table(title="Event reflection: the request right after an acknowledged event")
    for col in ("reflect_ms", "reflected", "p50 ms", "p99 ms", "answered by"):
        t.add_column(col)
    for n, value in enumerate(args.reflection_only):
        live = {"reflect_ms": value or None}
        store = f"sqlite://{tmp / f'reflect-{n}.db'}"
        keys = bench_keys(tmp)
        args_ = {"model_root": root, "store": store, "api_keys": keys}
        run_profile("cpu", args_, user_config=live, port=args.port)
        _wait(base)
        cell = {"reflect_ms": value or None, **reflection(base, 30)}
        out["cells"].append(cell)
        t.add_row(
            str(cell["reflect_ms"]),
            f"{cell['reflected']:.0%}",
            f"{cell['p50_ms']:.0f}",
            f"{cell['p99_ms']:.0f}",
            ", ".join(f"{k} {v}" for k, v in cell["answered_by"].items()),
        )
        serve.shutdown()
    ray.shutdown()
    console.print(t)
    (RESULTS / "serving_reflection.json").write_text(json.dumps(out, indent=2))
    console.print(f"wrote {RESULTS / 'serving_reflection.json'}")


def _wait(base: str) -> None:
    import requests

    for _ in range(240):
        try:
            if requests.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError("graph not ready")


def _wait_warm(base: str, console: Console, timeout_s: float = 900) -> dict | None:
    """Wait for the graph's precompute of known users' lists (None: it has none, e.g.
    without the re-ranker or with warm off): the load then meets the steady state, not a
    cold start."""
    import requests

    end = time.time() + timeout_s
    while True:
        warm = requests.get(f"{base}/readyz", timeout=5).json().get("warm")
        if not warm or warm["model"] is None:
            return None
        if warm["seconds"] is not None:
            console.print(f"precomputed {warm['done']} users' lists in {warm['seconds']} s")
            return warm
        if time.time() > end:
            raise RuntimeError(f"the precompute did not finish in {timeout_s:.0f} s: {warm}")
        time.sleep(1)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for variant in dict.fromkeys(c["variant"] for c in results["cells"]):
        cells = [c for c in results["cells"] if c["variant"] == variant]
        conc = [c["concurrency"] for c in cells]
        ax.plot(conc, [c["recommend_p50_ms"] for c in cells], marker="o", label=f"{variant} p50")
        ax.plot(
            conc,
            [c["recommend_p99_ms"] for c in cells],
            marker="x",
            linestyle="--",
            label=f"{variant} p99",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrency (closed loop)")
    ax.set_ylabel("/recommend latency, ms")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
