"""Every stage as a user runs it, at growing sizes: `llmrec prepare`, `fit`, `train`,
`publish`, then `llmrec serve` (start to ready, the replicas' memory, and requests at
concurrency 8 for users drawn uniformly, most of them not precomputed, then for the
precomputed users alone: the cache path's latency). Each stage is its own process; wall
time and the peak resident memory of its process tree are recorded.

Synthetic logs come from `pipelines.sources.synthetic` with 1 user per 20 interactions and
1 item per 100 (20M interactions: 1M users, 200k items), read through the generic source
as a user's Parquet files would be; `ml-1m` reads a MovieLens-1M folder.

    python benchmarks/bench_scale.py --sizes 1e6 5e6 2e7 ml-1m
    python benchmarks/bench_scale.py --sizes 1e6 --sasrec-epochs 2 --stages prepare fit

Prints a table, writes benchmarks/results/scale.json and a log-log PNG of time against
interactions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
STAGES = ("prepare", "fit", "train", "publish", "serve")
#: seconds of load on the precomputed users alone (the cache path's own latency)
CACHE_S = 15
ML1M = ROOT.parent / "shared" / "data" / "ml-1m"


def tree_rss(proc: psutil.Process) -> int:
    """Resident memory of a process and all its descendants (Ray's workers included)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def run_stage(cmd: list[str], env: dict[str, str], log: Path) -> dict:
    """Run one CLI stage; its wall time and the peak RSS of its process tree."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        ps, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            peak = max(peak, tree_rss(ps))
            time.sleep(0.25)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({proc.returncode}):\n{tail}")
    return {"seconds": round(wall, 1), "peak_rss_gib": round(peak / 2**30, 2)}


def source_args(size: str, work: Path) -> tuple[list[str], dict]:
    """`llmrec prepare` arguments for a size (the synthetic files generated here first)."""
    if size == "ml-1m":
        return ["--dataset", "movielens", "--path", str(ML1M)], {"interactions": 999_611}
    from pipelines.sources.synthetic import SyntheticSpec, generate

    n = int(float(size))
    spec = SyntheticSpec(n_interactions=n, n_users=max(100, n // 20), n_items=max(100, n // 100))
    folder = generate(spec, work / "raw")
    return [
        "--dataset",
        "generic",
        "--interactions",
        str(folder / "interactions"),
        "--columns",
        "user=user,item=item,timestamp=ts,value=rating",
        "--items",
        str(folder / "items.parquet"),
        "--item-columns",
        "id=item_id,title=title,text=description,categories=categories",
    ], {"interactions": n, "users": spec.n_users, "items": spec.n_items}


def profile_deadline_ms() -> float:
    """The request deadline `llmrec serve` runs with (the cpu profile's Api settings)."""
    from serving.config import LiveSettings
    from serving.deploy import read_profile

    deployments = read_profile("cpu")["applications"][0]["deployments"]
    api = next((d for d in deployments if d["name"] == "Api"), {})
    return LiveSettings(**api.get("user_config", {})).deadline_ms


def serve_stage(
    work: Path,
    env: dict[str, str],
    duration: float,
    port: int,
    profile: str = "cpu",
    rates: tuple[float, ...] = (),
    rate_s: float = 20.0,
) -> dict:
    """Start `llmrec serve` on the published version; time to ready, replica memory, load."""
    import requests

    import benchmarks.bench_serving as bs
    from pipelines.artifact import load_dataset
    from training.publish import load_version

    keys = bs.bench_keys(work)
    store = work / f"events-{int(time.time())}.db"  # a fresh store each run
    base = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "cluster", "serve", "--root", str(work / "models"),
        "--store", f"sqlite://{store}", "--port", str(port), "--api-keys", keys,
        "--profile", profile,
    ]  # fmt: skip
    start = time.perf_counter()
    with open(work / "serve.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    out: dict = {}
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(
                    f"llmrec serve exited:\n{(work / 'serve.log').read_text()[-3000:]}"
                )
            try:
                if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.perf_counter() - start > 1800:
                raise SystemExit("the graph was not ready within 30 minutes")
            time.sleep(0.5)
        out["ready_s"] = round(time.perf_counter() - start, 1)
        warm = requests.get(f"{base}/readyz", timeout=5).json().get("warm") or {}
        out["precomputed_users"] = warm.get("users")
        replicas = {}
        for p in psutil.process_iter(["cmdline"]):
            name = " ".join(p.info["cmdline"] or [])
            if "ServeReplica:" in name:
                label = name.split("ServeReplica:")[1].split()[0]
                replicas[label] = max(replicas.get(label, 0), p.memory_info().rss)
        out["replica_rss_gib"] = {k: round(v / 2**30, 2) for k, v in sorted(replicas.items())}
        ds = load_dataset(load_version(str(work / "models")).dataset_uri)
        users = [str(u) for u in ds.users["user_id"].to_pylist()]
        items = [str(i) for i in ds.items["item_id"].to_pylist()[:1000]]
        deadline = profile_deadline_ms()

        def measured(rows: list[dict], seconds: float, keys: tuple[str, ...]) -> dict:
            summary = bs.summarize(rows, seconds, deadline)
            return {k: summary[k] for k in keys}

        def load_c8(who: list[str], seconds: float, seed: int, keys: tuple[str, ...]) -> dict:
            rows = bs.closed_loop(bs.http_call(base, who, items), 8, seconds, seed=seed)
            return measured(rows, seconds, keys)

        out["load_c8"] = load_c8(users, duration, 8, (
            "requests", "throughput_rps", "recommend_p50_ms", "recommend_p99_ms",
            "cache_p50_ms", "cache_p99_ms", "server_p99_ms", "past_deadline",
            "error_rate", "stage_mix",
        ))  # fmt: skip
        # Uniform users arriving at fixed rates (open loop): how many of them a replica can
        # personalise on request, where concurrency 8 sends as fast as answers come back.
        for rate in rates:
            rows = bs.open_loop(bs.http_call(base, users, items), rate, rate_s, seed=10)
            out.setdefault("open_loop", {})[f"{rate:g}"] = measured(rows, rate_s, (
                "requests", "throughput_rps", "recommend_p50_ms", "recommend_p99_ms",
                "server_p99_ms", "past_deadline", "error_rate", "stage_mix",
            ))  # fmt: skip
        # The cache path on its own: the users the precompute covered (the most recently
        # active first, as the replica orders them), a few seconds at the same concurrency.
        n = out["precomputed_users"] or 0
        if n:
            from serving.catalog import Catalog

            warmed = Catalog(ds).users_by_activity()[:n]
            out["precomputed_c8"] = load_c8(warmed, CACHE_S, 9, (
                "requests", "throughput_rps", "recommend_p99_ms", "cache_p50_ms",
                "cache_p99_ms", "past_deadline", "stage_mix",
            ))  # fmt: skip
        out["seconds"] = round(time.perf_counter() - start, 1)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"],
                       capture_output=True, env=env)  # fmt: skip
    return out


def run_size(size: str, args: argparse.Namespace, console: Console) -> dict:
    if args.reuse:  # the earlier stages' outputs are there already
        work = Path(args.reuse)
    else:
        work = Path(tempfile.mkdtemp(prefix=f"scale-{size}-", dir=args.work))
    env = {
        **os.environ,
        "LLMREC_CACHE_DIR": str(work / "cache"),
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    from training.stack import DEFAULT_SOURCES, spec_to_json

    spec = {n: (k, dict(p)) for n, (k, p) in DEFAULT_SOURCES.items()}
    if args.sasrec_epochs is not None:
        spec["SASRec"][1]["epochs"] = args.sasrec_epochs
    (work / "spec.json").write_text(json.dumps(spec_to_json(spec)))
    gen = time.perf_counter()
    prepare_args, shape = source_args(size, work)
    row: dict = {"size": size, **shape, "generate_s": round(time.perf_counter() - gen, 1)}
    llmrec = [sys.executable, "-m", "cluster"]
    data = ["--data", str(work / "data")]  # --dataset: the artifact's name, after prepare
    spec_opt = ["--stack-spec", str(work / "spec.json")]
    # A re-ranker this run trains, or one an earlier run left in the reused folder.
    with_reranker = "train" in args.stages or (work / "reranker" / "reranker.json").exists()
    commands = {
        "prepare": [*llmrec, "prepare", *prepare_args, "--engine", "local",
                    "--out", str(work / "data")],
        "fit": [*llmrec, "fit", *data, "--out", str(work / "stack"), *spec_opt],
        "train": [*llmrec, "train", *data, "--out", str(work / "reranker"), *spec_opt,
                  "--mode", args.train_mode, "--max-examples", str(args.max_examples),
                  "--example-users", str(args.example_users),
                  "--storage", str(work / "runs"), "--name", "scale"],
        "publish": [*llmrec, "publish", *data, "--stack", str(work / "stack"),
                    "--root", str(work / "models"),
                    *(["--reranker", str(work / "reranker")] if with_reranker else [])],
    }  # fmt: skip
    for stage in STAGES:
        if stage not in args.stages:
            continue
        console.print(f"[bold]{size}[/]: {stage} ...")
        if stage in commands and stage != "prepare":
            name = json.loads((work / "data" / "manifest.json").read_text())["name"]
            commands[stage][4:4] = ["--dataset", name]  # after `python -m cluster <stage>`
        if stage == "serve":
            row["serve"] = serve_stage(
                work, env, args.duration, args.port, args.profile, tuple(args.rates), args.rate_s
            )
        else:
            row[stage] = run_stage(commands[stage], env, work / f"{stage}.log")
        if stage == "fit":  # where the fit's time went, as the stack recorded it
            meta = json.loads((work / "stack" / "stack.json").read_text())
            row["fit"]["steps_s"] = meta.get("fit_seconds", {})
        console.print(f"  {row[stage]}")
        if stage == "prepare" or args.reuse:
            manifest = json.loads((work / "data" / "manifest.json").read_text())
            row.update(users=manifest["n_users"], items=manifest["n_items"])
    row["work"] = str(work)
    return row


def table(rows: list[dict]) -> Table:
    t = Table(title="Every stage as interactions grow (wall s / peak RSS GiB of the process tree)")
    cols = ("size", "users", "items", *STAGES, "replica GiB", "c8 p50/p99 ms", "late")
    for c in (*cols, "cache p99 ms"):
        t.add_column(c, justify="right")
    for r in rows:
        cells = [r["size"], f"{r.get('users', 0):,}", f"{r.get('items', 0):,}"]
        for s in STAGES:
            v = r.get(s)
            if v is None:
                cells.append("-")
            elif s == "serve":
                cells.append(f"ready {v['ready_s']:.0f}")
            else:
                cells.append(f"{v['seconds']:.0f} / {v['peak_rss_gib']:.1f}")
        sv = r.get("serve") or {}
        rss = sv.get("replica_rss_gib") or {}
        cells.append(", ".join(f"{k} {v}" for k, v in rss.items()) or "-")
        load = sv.get("load_c8")
        cells.append(
            f"{load['recommend_p50_ms']:.0f} / {load['recommend_p99_ms']:.0f}" if load else "-"
        )
        cells.append(str(load["past_deadline"]) if load else "-")
        warmed = sv.get("precomputed_c8")  # load on the precomputed users alone
        hit_p99 = (warmed or {}).get("cache_p99_ms")
        cells.append(f"{hit_p99:.0f}" if hit_p99 is not None else "-")
        t.add_row(*cells)
    return t


def personalised(stage_mix: dict[str, float]) -> float:
    """The share of answers made for the user (cached or computed), not the cold-start list."""
    return sum(v for k, v in stage_mix.items() if not k.startswith("cold_start"))


def rate_table(rows: list[dict]) -> Table | None:
    """The open-loop phases: what share of uniform users is personalised at each rate."""
    t = Table(title="Uniform users arriving at a fixed rate (open loop)")
    for c in ("size", "offered req/s", "answered req/s", "personalised", "p50 / p99 ms", "late"):
        t.add_column(c, justify="right")
    for r in rows:
        for rate, v in ((r.get("serve") or {}).get("open_loop") or {}).items():
            t.add_row(
                r["size"],
                rate,
                f"{v['throughput_rps']:.1f}",
                f"{personalised(v['stage_mix']):.1%}",
                f"{v['recommend_p50_ms']:.0f} / {v['recommend_p99_ms']:.0f}",
                str(v["past_deadline"]),
            )
    return t if t.row_count else None


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    synth = sorted((r for r in rows if r["size"] != "ml-1m"), key=lambda r: r["interactions"])
    for s in STAGES[:4]:
        pts = [(r["interactions"], r[s]["seconds"]) for r in synth if r.get(s)]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=s)
    pts = [(r["interactions"], r["serve"]["ready_s"]) for r in synth if r.get("serve")]
    if pts:
        ax.plot(*zip(*pts, strict=True), marker="o", label="serve: ready")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("interactions")
    ax.set_ylabel("wall seconds")
    ax.set_title("Stage time against interactions (synthetic)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def combine(paths: list[str]) -> dict:
    """One row per size from the stages of several result files (a later file's stage
    replaces an earlier one's), each stage naming the file it came from: the runs of one
    size are often separate (a 20M fit alone takes most of an hour)."""
    by_size: dict[str, dict] = {}
    for path in paths:
        for r in json.loads(Path(path).read_text())["rows"]:
            row = by_size.setdefault(r["size"], {"size": r["size"]})
            for key in ("interactions", "users", "items"):
                row[key] = r.get(key, row.get(key))
            for stage in STAGES:
                if r.get(stage):
                    row[stage] = {**r[stage], "from": Path(path).name}
    rows = by_size.values()
    order = sorted(rows, key=lambda r: (r["size"] == "ml-1m", r.get("interactions") or 0))
    return {
        "rows": order,
        "combined_from": list(paths),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": " ".join(["python", *sys.argv]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["1e6", "5e6", "2e7", "ml-1m"])
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument("--sasrec-epochs", type=int, default=None, help="[default: the stack's]")
    ap.add_argument("--train-mode", default="features", choices=("features", "hybrid", "lm"))
    ap.add_argument("--max-examples", type=int, default=2400)
    ap.add_argument(
        "--example-users",
        type=int,
        default=2000,
        help="users `train` builds examples from: each of their 10 held-out positions is a "
        "retrieval over the catalogue, the stage's cost beside its three fits of the stack",
    )
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load at c=8")
    ap.add_argument(
        "--rates",
        type=float,
        nargs="*",
        default=[5.0, 10.0, 20.0],
        help="open-loop phases after the one at concurrency 8: uniform users arriving at "
        "each rate (requests/s, Poisson)",
    )
    ap.add_argument("--rate-s", type=float, default=20.0, help="seconds of each rate phase")
    ap.add_argument("--port", type=int, default=8777)
    ap.add_argument("--profile", default="cpu", help="the serve stage's profile (a name or YAML)")
    ap.add_argument("--work", default=None, help="where the stages write [default: a temp dir]")
    ap.add_argument(
        "--reuse",
        default=None,
        help="a work folder of an earlier run of one size: run --stages on its outputs",
    )
    ap.add_argument("--name", default="scale", help="results file stem")
    ap.add_argument(
        "--combine",
        nargs="+",
        default=None,
        metavar="JSON",
        help="run nothing: one table and plot from the stages of these result files",
    )
    args = ap.parse_args()
    console = Console(width=200)
    if args.combine:
        report = combine(args.combine)
        console.print(table(report["rows"]))
        out = RESULTS / f"{args.name}.json"
        out.write_text(json.dumps(report, indent=2))
        plot(report["rows"], out.with_suffix(".png"))
        console.print(f"wrote {out}")
        return
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        rows.append(run_size(size, args, console))
        console.print(table(rows))
        if (rates := rate_table(rows)) is not None:
            console.print(rates)
    report = {
        "rows": rows,
        "sasrec_epochs": args.sasrec_epochs,
        "train_mode": args.train_mode,
        "max_examples": args.max_examples,
        "example_users": args.example_users,
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}, "
        f"{psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": " ".join(["python", *sys.argv]),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{args.name}.json"
    out.write_text(json.dumps(report, indent=2))
    plot(rows, out.with_suffix(".png"))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
