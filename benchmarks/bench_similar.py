"""What the private "also watched" release costs `/items/{id}/similar`: the item-to-item
list of each user's last item before the test split, asked to contain the user's test item
(the next one they watched), for the exact count-based sources (transitions, item-kNN BM25,
content), content alone, SASRec with content, and the release (with SASRec and content)
at several epsilons and without noise. Serving ranks by SASRec + content (the release joins
only a stack without SASRec, or one whose spec asks for it). One fit of every source on
train + validation, the same ranking function serving uses (`similar_ranking`), paired
bootstrap against the exact sources.

    python benchmarks/bench_similar.py --epsilons 1 4 8

Prints a table; writes benchmarks/results/similar.json and similar.png.
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
RESULTS = ROOT / "benchmarks" / "results"
K = 10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "artifacts" / "datasets" / "ml-100k"))
    ap.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0, 8.0])
    ap.add_argument("--cap", type=int, default=20, help="max_items_per_user of the release")
    ap.add_argument(
        "--no-sasrec",
        action="store_true",
        help="leave SASRec out of every list (its fit is the cost on larger data)",
    )
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from pipelines.artifact import load_dataset
    from pipelines.schema import Split
    from training.evaluation.bootstrap import confidence_interval, paired_bootstrap
    from training.evaluation.harness import Phase
    from training.retrieval import PrivateCoVisits
    from training.retrieval.base import pad_to
    from training.retrieval.fusion import (
        LEGACY_SIMILAR_SOURCES,
        SIMILAR_SOURCES,
        similar_ranking,
    )
    from training.stack import DEFAULT_SOURCES, source_spec, stack_from_data, text_encoder
    from training.threads import set_threads

    threads = set_threads()
    start = time.perf_counter()
    ds = load_dataset(args.data)
    test = Phase.build(ds, Split.TEST)
    data = test.fit
    wanted = {*LEGACY_SIMILAR_SOURCES, *SIMILAR_SOURCES} - ({"SASRec"} if args.no_sasrec else set())
    spec = {n: e for n, e in source_spec(DEFAULT_SOURCES).items() if n in wanted}
    emb = text_encoder(spec).encode(data.item_text).astype(np.float32)
    stack = stack_from_data(data, None, emb, "validation", False, spec)
    with_models = " + content" if args.no_sasrec else " + SASRec + content"
    releases = {f"also watched ε={e:g}{with_models}": e for e in args.epsilons}
    releases[f"also watched, no noise{with_models}"] = None
    covisits = {
        name: PrivateCoVisits(epsilon=e, max_items_per_user=args.cap).fit(data)
        for name, e in releases.items()
    }
    src = stack.sources
    exact = {s: src[s] for s in LEGACY_SIMILAR_SOURCES}
    models = {s: src[s] for s in ("SASRec", "content") if s in src}
    variants = {
        "exact sources (transitions, item-kNN BM25, content)": exact,
        "content alone": {"content": src["content"]},
        **({} if args.no_sasrec else {"SASRec + content": models}),
        **{name: {"also watched": m, **models} for name, m in covisits.items()},
    }
    n = data.n_items
    queries = np.array([data.history(u)[-1] for u in range(data.n_users)])
    hits = {name: np.zeros(data.n_users) for name in variants}
    ndcg = {name: np.zeros(data.n_users) for name in variants}
    for name, models in variants.items():
        for u, (q, t) in enumerate(zip(queries, test.targets, strict=True)):
            scores = {s: pad_to(m.score(None, np.array([q])), n)[:n] for s, m in models.items()}
            top, _, _ = similar_ranking(scores, int(q), K)
            where = np.flatnonzero(top == t)
            if len(where):
                hits[name][u] = 1.0
                ndcg[name][u] = 1.0 / np.log2(where[0] + 2)
    base = next(iter(variants))
    rows = []
    for name in variants:
        ci = confidence_interval(hits[name], args.resamples)
        row = {
            "list": name,
            f"HR@{K}": vars(ci),
            f"NDCG@{K}": float(ndcg[name].mean()),
        }
        if name != base:
            row["minus exact"] = vars(paired_bootstrap(hits[name], hits[base], args.resamples))
        rows.append(row)
    release_info = {name: m.fit_info for name, m in covisits.items()}
    with_pairs = {
        name: float(np.mean(np.diff(m.matrix.indptr) > 0)) for name, m in covisits.items()
    }

    t = Table(title=f"similar items of each user's last item: is the next one in the top {K}?")
    for c in (
        "list",
        f"HR@{K} [95% CI]",
        f"NDCG@{K}",
        "minus exact [95% CI]",
        "pairs",
        "items with a pair",
    ):
        t.add_column(c, justify="left" if c == "list" else "right")
    for r in rows:
        h = r[f"HR@{K}"]
        d = r.get("minus exact")
        info = release_info.get(r["list"])
        t.add_row(
            r["list"],
            f"{h['mean']:.4f} [{h['low']:.4f}, {h['high']:.4f}]",
            f"{r[f'NDCG@{K}']:.4f}",
            "-" if d is None else _diff(d),
            "-" if info is None else str(info["pairs_released"]),
            "-" if info is None else f"{with_pairs[r['list']]:.0%}",
        )
    Console(width=200).print(t)
    name = Path(args.data).name
    report = {
        "dataset": name,
        "users": int(data.n_users),
        "items": int(n),
        "k": K,
        "cap": args.cap,
        "rows": rows,
        "releases": release_info,
        "items_with_a_released_pair": with_pairs,
        "seconds": round(time.perf_counter() - start, 1),
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}, "
        f"{threads} threads",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": " ".join(["python", *sys.argv]),
    }
    out = Path(
        args.out or RESULTS / ("similar.json" if name == "ml-100k" else f"similar-{name}.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    _plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')} ({report['seconds']} s)")


def _diff(d: dict) -> str:
    return f"{d['mean_difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["list"] for r in rows]
    hr = [r[f"HR@{K}"] for r in rows]
    err = [[h["mean"] - h["low"] for h in hr], [h["high"] - h["mean"] for h in hr]]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.2))
    ax.barh(range(len(rows)), [h["mean"] for h in hr], xerr=err, color="#4c72b0", capsize=3)
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()
    ax.set_xlabel(f"the next item in the top {K} similar items of the last one (95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
