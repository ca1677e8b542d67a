"""What API keys cost and what the rate limit protects, over loopback HTTP on one graph:

1. The cache path (returning users whose lists the nearline step cached) with keys checked
   and with checking off (`insecure_local`, a live change of the same graph), in alternating
   rounds: the p50/p99 each adds.
2. A well-behaved key (a paced client) alone, then while an abusive key (many threads in a
   process of their own, no pause) is held to its rate, with the cache off so that both
   phases compute every list: the well-behaved key's latency (client and server) and
   answers past the deadline, and how much of the abuser's traffic got 429. An abuser runs
   on machines of its own; here its client shares the server's cores, so its process runs
   at a lower CPU priority (`--abuser-nice`, default 19; 0: as high as the server's): what
   it costs the server (the proxy and the Api replica refusing it) is still paid in full.

    python benchmarks/bench_api_keys.py --model-root artifacts/models/ml-100k
    python benchmarks/bench_api_keys.py --concurrency --name api-keys-abuse   # part 2 only
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

from benchmarks.bench_serving import _wait, closed_loop, run_info  # noqa: E402


def keyed_session(key: str | None):
    import requests

    s = requests.Session()
    if key is not None:
        s.headers["Authorization"] = f"Bearer {key}"
    return s


def cache_rows(base: str, users: list[str], key: str | None, concurrency: int, seconds: float):
    local = threading.local()

    def call(rng: random.Random):
        s = getattr(local, "s", None)
        if s is None:
            s = local.s = keyed_session(key)
        r = s.get(f"{base}/recommend/{rng.choice(users)}", params={"k": 10}, timeout=30)
        return "recommend", {"status": r.status_code, "cached": r.json().get("cached", False)}

    return closed_loop(call, concurrency, seconds, seed=concurrency)


def pct(rows: list[dict], q: float) -> float:
    return float(np.percentile([r["ms"] for r in rows], q)) if rows else float("nan")


def warm_cache(base: str, key: str, users: list[str], console: Console) -> None:
    """One event per user, then wait until each user's list is cached."""
    s = keyed_session(key)
    for u in users:
        s.post(f"{base}/events", json={"user_id": u, "item_id": "50", "type": "view"}, timeout=30)
    end = time.time() + 300
    pending = list(users)
    while pending and time.time() < end:
        pending = [
            u for u in pending if not s.get(f"{base}/recommend/{u}", timeout=30).json()["cached"]
        ]
        time.sleep(0.2)
    console.print(f"cached lists: {len(users) - len(pending)} of {len(users)}")


def paced(base: str, key: str, rate: float, seconds: float, out: list[dict], users: list[str]):
    """One request every 1/rate s (skipping ahead when late), from one session; each row has
    the client's time and the server's (`timings_ms.total`: from the Api's receipt)."""
    s = keyed_session(key)
    rng = random.Random(7)
    start = time.perf_counter()
    n = 0
    while (now := time.perf_counter()) < start + seconds:
        due = start + n / rate
        if now < due:
            time.sleep(due - now)
        n += 1
        t = time.perf_counter()
        r = s.get(f"{base}/recommend/{rng.choice(users)}", params={"k": 10}, timeout=30)
        body = r.json()
        out.append(
            {
                "ms": (time.perf_counter() - t) * 1000,
                "server_ms": body.get("timings_ms", {}).get("total", float("nan")),
                "status": r.status_code,
                "fallback": body.get("fallback"),
            }
        )


def _abuser(base: str, key: str, threads: int, seconds: float, users, queue, nice: int) -> None:
    """In a process of its own (its threads must not share the measuring client's GIL):
    `bench_serving.closed_loop` for `seconds`; puts the status codes on `queue`."""
    os.nice(nice)
    local = threading.local()

    def call(rng: random.Random):
        s = getattr(local, "s", None)
        if s is None:
            s = local.s = keyed_session(key)
        try:
            code = s.get(f"{base}/recommend/{rng.choice(users)}", timeout=30).status_code
        except Exception:
            code = 0
        return "recommend", {"status": code}

    queue.put([r["status"] for r in closed_loop(call, threads, seconds, seed=99)])


def abuse(base: str, key: str, threads: int, seconds: float, users, nice: int = 0):
    """Start the abusive client's process; returns (process, queue of its codes)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_abuser, args=(base, key, threads, seconds, users, queue, nice))
    proc.start()
    return proc, queue


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-root", default="artifacts/models/ml-100k")
    p.add_argument("--port", type=int, default=8767)
    p.add_argument("--cache-users", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per mode")
    p.add_argument("--round-s", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, nargs="*", default=[1, 8], help="none: skip part 1")
    p.add_argument("--good-rate", type=float, default=10.0, help="the paced key's requests/s")
    p.add_argument("--abuse-threads", type=int, default=16)
    p.add_argument("--abuse-rate", type=float, default=5.0, help="the abusive key's limit")
    p.add_argument("--abuse-s", type=float, default=40.0)
    p.add_argument("--abuser-nice", type=int, default=19, help="the abusive client's CPU niceness")
    p.add_argument("--name", default="api-keys", help="results/<name>.json")
    p.add_argument(
        "--proxy-gate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Serve's proxy refuses a key over its own rate (serving/proxy_gate.py)",
    )
    args = p.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from serving.deploy import export_serve_env

    export_serve_env("cpu")
    import ray
    from ray import serve

    from serving.auth import SCOPES, new_key, write_keys
    from serving.deploy import run_profile

    console = Console(width=160)
    tmp = Path(tempfile.mkdtemp(prefix="bench-keys"))
    good, good_rec = new_key("good", list(SCOPES))
    bad, bad_rec = new_key("abuser", ["recommend"], rate=args.abuse_rate)
    write_keys(tmp / "keys.json", [good_rec, bad_rec])
    if args.proxy_gate:  # as `llmrec serve` does: before Ray starts, so its proxy has it
        from serving.proxy_gate import export_env

        export_env(str(tmp / "keys.json"))
    ray.init(log_to_driver=False, include_dashboard=False)
    base = f"http://127.0.0.1:{args.port}"
    graph = {
        "model_root": str(Path(args.model_root).resolve()),
        "store": f"sqlite://{tmp / 'events.db'}",
        "api_keys": str(tmp / "keys.json"),
        "warm": False,
    }

    def deploy(**live) -> None:
        run_profile("cpu", graph, user_config=live or None, port=args.port)
        _wait(base)

    deploy()
    users = [f"bench-{i}" for i in range(args.cache_users)]
    warm_cache(base, good, users, console)
    out: dict = {**run_info(), "cache_path": [], "abuse": {}}
    table = Table(title="API keys on the cache path (same graph, alternating rounds)")
    for c in ("concurrency", "keys", "requests", "cached", "p50 ms", "p99 ms"):
        table.add_column(c)
    for c in args.concurrency:
        rows: dict[str, list[dict]] = {"checked": [], "off": []}
        for _ in range(args.rounds):
            for mode in ("checked", "off"):
                deploy(insecure_local=mode == "off")
                key = good if mode == "checked" else None
                rows[mode] += cache_rows(base, users, key, c, args.round_s)
        cell = {"concurrency": c}
        for mode, rs in rows.items():
            ok = [r for r in rs if r["status"] == 200]
            cell[mode] = {
                "requests": len(rs),
                "errors": len(rs) - len(ok),
                "cached_share": float(np.mean([r["cached"] for r in ok])) if ok else 0.0,
                "p50_ms": pct(ok, 50),
                "p99_ms": pct(ok, 99),
            }
            table.add_row(
                str(c),
                mode,
                str(len(rs)),
                f"{cell[mode]['cached_share']:.0%}",
                f"{cell[mode]['p50_ms']:.2f}",
                f"{cell[mode]['p99_ms']:.2f}",
            )
        cell["added_p50_ms"] = cell["checked"]["p50_ms"] - cell["off"]["p50_ms"]
        cell["added_p99_ms"] = cell["checked"]["p99_ms"] - cell["off"]["p99_ms"]
        out["cache_path"].append(cell)
    if args.concurrency:
        console.print(table)
    # Keys checked again; no cache, so that every request of both phases computes its list
    # (a list computed in the first phase would answer the second from the cache).
    deploy(cache=False)
    known = [str(u) for u in range(1, 944)]
    deadline_ms = 200.0
    phases = {}
    for phase in ("alone", "with abuser"):
        good_rows: list[dict] = []
        codes: list[int] = []
        started = None
        if phase != "alone":
            started = abuse(
                base, bad, args.abuse_threads, args.abuse_s + 5, known, args.abuser_nice
            )
            time.sleep(5)  # the abuser at full speed before the measured client starts
        paced(base, good, args.good_rate, args.abuse_s, good_rows, known)
        if started is not None:
            proc, queue = started
            codes = queue.get(timeout=120)
            proc.join(30)
        ok = [r for r in good_rows if r["status"] == 200]
        server = [{"ms": r["server_ms"]} for r in ok]
        phases[phase] = {
            "good_requests": len(good_rows),
            "good_errors": len(good_rows) - len(ok),
            "good_p50_ms": pct(ok, 50),
            "good_p99_ms": pct(ok, 99),
            "good_past_deadline": sum(r["ms"] > deadline_ms for r in ok),
            "good_server_p50_ms": pct(server, 50),
            "good_server_p99_ms": pct(server, 99),
            "good_server_past_deadline": sum(r["ms"] > deadline_ms for r in server),
            "good_fallbacks": sum(r["fallback"] is not None for r in ok),
            "abuser_requests": len(codes),
            "abuser_per_s": len(codes) / (args.abuse_s + 5),
            "abuser_429_share": (codes.count(429) / len(codes)) if codes else None,
            "abuser_200": codes.count(200),
        }
    out["abuse"] = {
        "good_rate": args.good_rate,
        "abuse_threads": args.abuse_threads,
        "abuser_limit_per_s": args.abuse_rate,
        "seconds": args.abuse_s,
        "abuser_nice": args.abuser_nice,
        "proxy_gate": args.proxy_gate,
        "deadline_ms": deadline_ms,
        "phases": phases,
    }
    t = Table(
        title="A well-behaved key while an abusive key is rate-limited (ms: client, then the "
        "server's own total)"
    )
    for col in (
        "phase",
        "good req",
        "good p50",
        "good p99",
        "past 200 ms",
        "server p50 / p99",
        "fallbacks",
        "abuser req/s",
        "abuser 429",
    ):
        t.add_column(col)
    for phase, r in phases.items():
        share = r["abuser_429_share"]
        t.add_row(
            phase,
            str(r["good_requests"]),
            f"{r['good_p50_ms']:.1f}",
            f"{r['good_p99_ms']:.1f}",
            str(r["good_past_deadline"]),
            f"{r['good_server_p50_ms']:.1f} / {r['good_server_p99_ms']:.1f}",
            str(r["good_fallbacks"]),
            f"{r['abuser_per_s']:.0f}",
            "-" if share is None else f"{share:.1%}",
        )
    console.print(t)
    serve.shutdown()
    ray.shutdown()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=2))
    console.print(f"wrote {RESULTS / args.name}.json")


if __name__ == "__main__":
    main()
