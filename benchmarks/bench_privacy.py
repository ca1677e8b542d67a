"""What differential privacy costs, in one run:

1. the cold-start lists: segment popularity released with user-level (epsilon, delta)-DP
   (`SegmentPopular(epsilon=...)`, docs/PRIVACY.md) against the exact counts, on the
   new-user protocol at sign-up (0 events, attributes stated: the segment path of the
   cold-start list), several noise draws per epsilon, paired against the exact list on the
   same users;
2. the re-ranker trained with DP-SGD (`llmrec train --dp-epsilon`) at each epsilon against
   the same re-ranker trained without it, on the same test users (`privacy_reranker.py`).

    python benchmarks/bench_privacy.py --epsilons 1 4 8 --draws 3
    python benchmarks/bench_privacy.py --no-reranker   # the cold-start part alone (seconds)

    python benchmarks/bench_privacy.py --reranker-mode hybrid --max-examples 400 \
        --dp-epochs 2 --name privacy-hybrid

Prints tables; writes benchmarks/results/<name>.json and .png (default name: privacy).
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "artifacts" / "datasets" / "ml-100k"))
    ap.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0, 8.0])
    ap.add_argument("--draws", type=int, default=3, help="noise draws per epsilon")
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--no-reranker", action="store_true", help="skip the DP-SGD part")
    ap.add_argument(
        "--reranker-mode",
        default="features",
        choices=["features", "hybrid"],
        help="which re-ranker DP-SGD trains (features: what routing serves on ML-100k)",
    )
    ap.add_argument("--dp-epochs", type=int, default=20)
    ap.add_argument("--dp-batch", type=int, default=64, help="expected batch (users)")
    ap.add_argument("--max-examples", type=int, default=None, help="cap for an LM's examples")
    ap.add_argument("--name", default="privacy", help="results file name (.json, .png)")
    args = ap.parse_args()

    from pipelines.artifact import load_dataset
    from training.candidates import CandidateGenerator
    from training.evaluation.new_users import evaluate, new_user_cases
    from training.retrieval.popularity import MostPopular, SegmentPopular

    start = time.perf_counter()
    ds = load_dataset(args.data)
    cases = new_user_cases(ds, lengths=(0,))
    data = cases.train
    pop = MostPopular().fit(data)

    def cold_list(segment: SegmentPopular):
        gen = CandidateGenerator({}, pop, segment)
        return lambda hist, seg: gen.generate(None, hist, n=50, segment=seg).items

    # "exact": every interaction, no noise (the counts before privacy); "bounded": the same
    # contribution bound as the private release (each user's first 20 items), no noise:
    # the cost of the noise alone is the private rows against this one.
    lists = {
        "exact": cold_list(SegmentPopular(epsilon=None, max_items_per_user=None).fit(data)),
        "bounded, no noise": cold_list(SegmentPopular(epsilon=None).fit(data)),
        "latest 20, no noise": cold_list(
            SegmentPopular(epsilon=None, earliest_items=False).fit(data)
        ),
    }
    info = {}
    for eps in args.epsilons:
        for draw in range(args.draws):
            name = f"epsilon {eps:g}, draw {draw}"
            model = SegmentPopular(epsilon=eps, delta=args.delta, seed=draw).fit(data)
            lists[name] = cold_list(model)
            info[name] = model.fit_info
    pairs = tuple((name, "exact") for name in lists if name != "exact")
    pairs += tuple((n, "bounded, no noise") for n in lists if n.startswith("epsilon"))
    report = evaluate(cases, lists, args.resamples, pairs)
    console = Console(width=200)
    out_rows = []
    for attrs in (True, False):
        rows = {r["list"]: r for r in report["rows"] if r["attributes"] == attrs}
        paired = {
            (p["a"], p["b"]): p
            for p in report["paired_ndcg10"]
            if p["attributes"] == attrs and p["events"] == 0
        }
        table, found = cold_table(rows, paired, info, attrs, len(cases.users))
        console.print(table)
        out_rows += found
        if attrs:
            exact = rows["exact"]["NDCG@10"]["mean"]
            bounded = rows["bounded, no noise"]["NDCG@10"]["mean"]
            per_eps = kept(rows, bounded, args.epsilons, args.draws)
        else:
            unstated = kept(rows, rows["exact"]["NDCG@10"]["mean"], args.epsilons, args.draws)
    out = {
        "machine": f"{platform.node()} {platform.machine()}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "users": len(cases.users),
        "delta": args.delta,
        "rows": out_rows,
        "releases": info,
        "kept_of_bounded_by_epsilon": per_eps,
        # no attribute stated: the private overall histogram against exact popularity
        "kept_of_exact_by_epsilon_no_attributes": unstated,
        "exact_ndcg10": exact,
        "bounded_ndcg10": bounded,
        "seconds": round(time.perf_counter() - start, 1),
    }
    ranker = None
    if not args.no_reranker:
        from benchmarks.privacy_reranker import sweep, table

        ranker = sweep(
            args.data,
            args.epsilons,
            args.reranker_mode,
            args.dp_epochs,
            args.dp_batch,
            args.delta,
            args.resamples,
            args.max_examples,
            console,
        )
        console.print(table(ranker))
        out["reranker"] = ranker
    out["seconds"] = round(time.perf_counter() - start, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=2, default=str))
    plot(per_eps, bounded, exact, ranker, RESULTS / f"{args.name}.png")
    print(f"wrote {RESULTS / args.name}.json and .png ({out['seconds']} s)")


def kept(rows: dict, base: float, epsilons: list[float], draws: int) -> dict[float, float]:
    """Per epsilon, the mean over noise draws of NDCG@10 as a share of `base`."""
    return {
        eps: float(
            np.mean([rows[f"epsilon {eps:g}, draw {d}"]["NDCG@10"]["mean"] for d in range(draws)])
            / base
        )
        for eps in epsilons
    }


def cold_table(rows: dict, paired: dict, info: dict, attrs: bool, users: int):
    """One table of the cold-start lists (attributes stated or not) and its JSON rows."""
    exact = rows["exact"]["NDCG@10"]["mean"]
    bounded = rows["bounded, no noise"]["NDCG@10"]["mean"]
    what = "attributes stated" if attrs else "no attribute stated (overall popularity)"
    table = Table(title=f"cold start at sign-up, {what} ({users} users)")
    cols = ("release", "sigma", "withheld", "NDCG@10 [95% CI]", "minus exact", "minus bounded")
    for c in (*cols, "kept of exact", "kept of bounded"):
        table.add_column(c, justify="right")
    out_rows = []

    def diff(p) -> str:
        return (
            "-" if p is None else f"{p['mean_difference']:+.4f} [{p['low']:+.4f}, {p['high']:+.4f}]"
        )

    for name, r in rows.items():
        m = r["NDCG@10"]
        rel = info.get(name, {}).get("privacy")
        withheld = sum(len(v) for v in info.get(name, {}).get("segments_withheld", {}).values())
        row = {
            "list": name,
            "attributes": attrs,
            "sigma": rel["sigma"] if rel else 0.0,
            "withheld": withheld,
            "ndcg10": m,
            "minus_exact": paired.get((name, "exact")),
            "minus_bounded": paired.get((name, "bounded, no noise")),
            "kept_of_exact": m["mean"] / exact if exact else None,
            "kept_of_bounded": m["mean"] / bounded if bounded else None,
        }
        out_rows.append(row)
        table.add_row(
            name,
            f"{row['sigma']:.1f}",
            str(withheld),
            f"{m['mean']:.4f} [{m['low']:.4f}, {m['high']:.4f}]",
            diff(row["minus_exact"]),
            diff(row["minus_bounded"]),
            f"{row['kept_of_exact']:.1%}",
            f"{row['kept_of_bounded']:.1%}",
        )
    return table, out_rows


def plot(
    per_eps: dict[float, float],
    bounded: float,
    exact: float,
    ranker: dict | None,
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = sorted(per_eps)
    fig, axes = plt.subplots(1, 2 if ranker else 1, figsize=(11 if ranker else 5.5, 3.8))
    ax = axes[0] if ranker else axes
    ax.plot(eps, [per_eps[e] for e in eps], marker="o", label="noised counts (mean of draws)")
    ax.axhline(1.0, color="grey", linestyle="--", label=f"bounded, no noise ({bounded:.3f})")
    ax.axhline(
        exact / bounded, color="black", linestyle="-.", label=f"every interaction ({exact:.3f})"
    )
    ax.axhline(0.95, color="red", linestyle=":", label="95% of bounded")
    ax.set_xscale("log")
    ax.set_xticks(eps, [f"{e:g}" for e in eps])
    ax.minorticks_off()
    ax.set_xlabel("epsilon (user level, delta 1e-5)")
    ax.set_ylabel("NDCG@10, share of bounded, no noise")
    ax.set_title("cold start at sign-up, attributes stated")
    ax.legend(fontsize=7)
    if ranker:
        ax = axes[1]
        private = [r for r in ranker["rows"] if r["plan"]]
        x = [round(r["plan"]["total_epsilon"], 1) for r in private]
        y = [r["ndcg10"]["mean"] for r in private]
        err = [
            [r["ndcg10"]["mean"] - r["ndcg10"]["low"] for r in private],
            [r["ndcg10"]["high"] - r["ndcg10"]["mean"] for r in private],
        ]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label="DP-SGD (95% CI)")
        base = next(r for r in ranker["rows"] if not r["plan"])["ndcg10"]["mean"]
        ax.axhline(base, color="grey", linestyle="--", label=f"non-private ({base:.3f})")
        ax.axhline(base - 0.01, color="red", linestyle=":", label="non-private - 0.01")
        fused = ranker["fused_ndcg10"]["mean"]
        ax.axhline(fused, color="black", linestyle="-.", label=f"fused order ({fused:.3f})")
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{e:g}" for e in x])
        ax.minorticks_off()
        ax.set_xlabel("epsilon (user level, delta 1e-5)")
        ax.set_ylabel("test NDCG@10")
        ax.set_title(f"the {ranker['mode']} re-ranker, DP-SGD")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
