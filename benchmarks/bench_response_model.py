"""What the one response model costs per answer: FastAPI validates a route's return value
against its `response_model` and serialises the model, where an untyped route only encodes
the dict. Measured on real answers of a published version (re-ranked, cold start, popularity
fallback), in one process, alternating the two ways.

    python benchmarks/bench_response_model.py --model-root artifacts/models/ml-100k

Prints a table and writes benchmarks/results/response-model.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "response-model.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-root", default=str(ROOT / "artifacts" / "models" / "ml-100k"))
    ap.add_argument("--rounds", type=int, default=2000)
    args = ap.parse_args()

    import asyncio

    from fastapi.routing import serialize_response
    from fastapi.utils import create_model_field

    from serving.api_models import Recommendation
    from serving.config import LiveSettings
    from serving.recommender import RetrievalService
    from serving.responses import fallback_answer, popularity_answer, respond
    from serving.sqlite_store import SQLiteEventStore
    from training.publish import load_version

    mv = load_version(args.model_root)
    tmp = Path(tempfile.mkdtemp(prefix="bench-response"))
    settings = LiveSettings(model_root=args.model_root, store=f"sqlite://{tmp / 'events.db'}")
    svc = RetrievalService(mv, SQLiteEventStore(tmp / "events.db"), settings)
    warm = svc.retrieve("1", shown=10)
    cold = svc.retrieve("someone-new", shown=10)
    head = np.arange(min(20, len(warm.items)), dtype=np.float32)
    items = popularity_answer(svc.stack.popularity.counts, svc.catalog, 10, [])
    answers = {
        "re-ranked": respond(warm, 10, head, "r", None, {"total": 0.01}, "v/reranker"),
        "cold start": respond(cold, 10, None, "r", None, {"total": 0.01}, None),
        "popularity fallback": fallback_answer("u", "r", "retrieval_timeout", items, "v", {}),
    }
    for out in answers.values():
        out["experiment"] = None
    # The field FastAPI builds for `response_model=Recommendation`; an async route validates
    # and serialises inline (is_coroutine), and a route without a model only encodes.
    field = create_model_field(name="Response", type_=Recommendation, mode="serialization")
    loop = asyncio.new_event_loop()

    def typed(out):
        return loop.run_until_complete(serialize_response(field=field, response_content=out))

    def untyped(out):
        return loop.run_until_complete(serialize_response(field=None, response_content=out))

    rows = []
    for name, out in answers.items():
        times = {"without the model": [], "with the model": []}
        for _ in range(args.rounds):
            for label, fn in (("without the model", untyped), ("with the model", typed)):
                t = time.perf_counter()
                fn(out)
                times[label].append(time.perf_counter() - t)
        row = {"answer": name}
        for label, ts in times.items():
            row[label] = {
                "p50_ms": float(np.percentile(ts, 50) * 1000),
                "p99_ms": float(np.percentile(ts, 99) * 1000),
            }
        row["added_p50_ms"] = row["with the model"]["p50_ms"] - row["without the model"]["p50_ms"]
        rows.append(row)

    t = Table(title="the response model's cost per answer (validation + serialisation)")
    for c in ("answer", "without: p50 / p99 ms", "with: p50 / p99 ms", "added p50 ms"):
        t.add_column(c, justify="left" if c == "answer" else "right")
    for r in rows:
        a, b = r["without the model"], r["with the model"]
        t.add_row(
            r["answer"],
            f"{a['p50_ms']:.3f} / {a['p99_ms']:.3f}",
            f"{b['p50_ms']:.3f} / {b['p99_ms']:.3f}",
            f"{r['added_p50_ms']:+.3f}",
        )
    Console(width=120).print(t)
    report = {
        "rows": rows,
        "rounds": args.rounds,
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": " ".join(["python", *sys.argv]),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
