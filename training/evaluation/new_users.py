"""The new-user protocol: what a sign-up gets after 0, 1, 3 and 10 events.

A seeded share of users is held out of training entirely: none of their interactions reach
any model. Each held-out user is then replayed as a sign-up: after their first L events
(L in `LENGTHS`), the system is asked for a list, and the target is their next item,
ranked against the whole catalogue with those L events removed. With stated attributes
the request carries the user's segment codes (age band, gender, occupation), as
`PUT /users/{id}/attributes` does; without, it carries none. The system is the candidate
generator as serving runs it (cold start below one event, sparse below 5, warm beyond);
the baseline is overall popularity. Pure numpy: the eval command fits the models and calls
`evaluate`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.artifact import Dataset
from pipelines.errors import LlmrecError
from pipelines.schema import Split
from training.evaluation.bootstrap import confidence_interval, paired_bootstrap
from training.evaluation.metrics import metrics_from_ranks
from training.retrieval.data import FitData

LENGTHS = (0, 1, 3, 10)
#: Held-out users: a fifth of ML-100k's 943 is 188, enough for a CI of about +-0.04 on a
#: Recall@50 near 0.3; more would weaken the models the rest are trained with.
HOLDOUT_SHARE = 0.2
METRICS = ("NDCG@10", "Recall@10", "Recall@50")
#: the rank of a target a list does not hold: beyond every cut-off
MISS = 2**31 - 1


@dataclass
class NewUserCases:
    users: np.ndarray  # held-out users (indices), each with more than max(lengths) events
    full: FitData
    train: FitData  # every interaction of the other users
    lengths: tuple[int, ...]

    def history(self, user: int, length: int) -> np.ndarray:
        return self.full.history(user)[:length]

    def target(self, user: int, length: int) -> int:
        return int(self.full.history(user)[length])

    def segment(self, user: int) -> dict[str, int]:
        """The user's stated attributes as segment codes (unknown ones left out)."""
        return {a: int(c[user]) for a, c in self.full.user_segments.items() if c[user] >= 0}


def new_user_cases(
    ds: Dataset, share: float = HOLDOUT_SHARE, lengths=LENGTHS, seed: int = 0
) -> NewUserCases:
    return cases_from(FitData.from_dataset(ds, Split.TEST), share, lengths, seed)


def cases_from(
    full: FitData, share: float = HOLDOUT_SHARE, lengths=LENGTHS, seed: int = 0
) -> NewUserCases:
    if not 0 < share < 1:
        raise ValueError(f"the held-out share of users must be between 0 and 1, got {share}")
    lengths = tuple(sorted(set(lengths)))
    eligible = np.flatnonzero(np.diff(full.seq_indptr) > max(lengths))
    if len(eligible) < 2:
        raise LlmrecError(
            f"{len(eligible)} users have more than {max(lengths)} interactions: too few to "
            "replay as sign-ups"
        )
    rng = np.random.default_rng(seed)
    n = max(1, round(share * full.n_users))
    users = np.sort(rng.choice(eligible, min(n, len(eligible)), replace=False))
    held = np.zeros(full.n_users, dtype=bool)
    held[users] = True
    train = full.only(~held[full.seq_users()], f"without{len(users)}users")
    return NewUserCases(users, full, train, lengths)


def evaluate(
    cases: NewUserCases,
    lists: dict[str, Callable[[np.ndarray, dict[str, int] | None], np.ndarray]],
    resamples: int = 1000,
    pairs: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any]:
    """Each list maker (`top(history, segment codes or None)`: its ordered items, a miss
    beyond them) at every history length, with and without stated attributes; `pairs`:
    (a, b) lists compared per length, with and without attributes (paired NDCG@10, a minus
    b)."""
    rows: list[dict[str, Any]] = []
    per_case: dict[tuple[str, int, bool], np.ndarray] = {}
    for length in cases.lengths:
        for stated in (False, True):
            for name, make in lists.items():
                ranks = []
                for u in cases.users:
                    hist = cases.history(int(u), length)
                    items = np.asarray(make(hist, cases.segment(int(u)) if stated else None))
                    hit = np.flatnonzero(items == cases.target(int(u), length))
                    ranks.append(int(hit[0]) + 1 if len(hit) else MISS)
                m = metrics_from_ranks(np.asarray(ranks))
                per_case[(name, length, stated)] = m["NDCG@10"]
                row: dict[str, Any] = {"list": name, "events": length, "attributes": stated}
                for k in METRICS:
                    ci = confidence_interval(m[k], resamples)
                    row[k] = {"mean": ci.mean, "low": ci.low, "high": ci.high}
                rows.append(row)
    # What stating attributes is worth, per list and length (paired: the same users).
    gains = [
        {
            "list": name,
            "events": length,
            **vars(
                paired_bootstrap(per_case[(name, length, True)], per_case[(name, length, False)])
            ),
        }
        for name in lists
        for length in cases.lengths
    ]
    paired = [
        {
            "a": a,
            "b": b,
            "events": length,
            "attributes": stated,
            **vars(paired_bootstrap(per_case[(a, length, stated)], per_case[(b, length, stated)])),
        }
        for a, b in pairs
        for length in cases.lengths
        for stated in (False, True)
    ]
    return {
        "protocol": "new-users",
        "paired_ndcg10": paired,
        "held_out_users": len(cases.users),
        "train_users": int(cases.full.n_users - len(cases.users)),
        "lengths": list(cases.lengths),
        "rows": rows,
        "attributes_gain_ndcg10": gains,
    }


def fit_and_evaluate(
    ds: Dataset,
    spec=None,
    share: float = HOLDOUT_SHARE,
    lengths=LENGTHS,
    resamples: int = 1000,
    progress: bool = True,
    variants: dict[str, Any] | None = None,
    rerankers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Fit the stack of `spec` (default `DEFAULT_SOURCES`) without the held-out users and
    evaluate the system's 50 candidates and overall popularity on them. `variants`: more
    lists of the same fitted stack under other `CandidateConfig`s, by name. `rerankers`:
    name -> folder of re-rankers trained without the held-out users
    (`training.evaluation.cold_rerank`), each reordering the system's candidates, compared
    with them and (a hybrid) with its feature layer alone."""
    from training.evaluation.new_items import timed_lists
    from training.retrieval.base import top_n
    from training.stack import DEFAULT_SOURCES, holdout_fit, stack_from_data, text_encoder

    spec = spec or DEFAULT_SOURCES
    cases = new_user_cases(ds, share, lengths)
    data = cases.train
    embeddings = text_encoder(spec).encode(data.item_text).astype(np.float32)
    fusion, _ = holdout_fit(data, 1, embeddings, progress, spec)
    stack = stack_from_data(data, fusion, embeddings, "new-users", progress, spec)
    gen = stack.generator()
    pop = np.bincount(data.seq_items, minlength=data.n_items).astype(np.float64)

    def popular(hist: np.ndarray, segment) -> np.ndarray:
        return top_n(pop, 50, hist)

    def system(g):
        return lambda h, seg: g.generate(None, h, n=50, segment=seg).items

    base = "system (50 candidates)"  # what variants and re-rankers are paired against
    lists = {base: system(gen), "most popular": popular}
    pairs = []
    for name, config in (variants or {}).items():
        lists[f"system ({name})"] = system(stack.generator(config))
        pairs += [(f"system ({name})", "most popular"), (f"system ({name})", base)]
    if rerankers:
        from training.evaluation.cold_rerank import LAYER, ROUTED, reranked_user_lists

        for name, folder in rerankers.items():
            made = reranked_user_lists(stack, folder, data.item_text)
            for suffix, make in made.items():
                lists[f"system + {name}{suffix}"] = make
                pairs.append((f"system + {name}{suffix}", base))
            layer, routed = f"system + {name}{LAYER}", f"system + {name}{ROUTED}"
            if layer in lists:
                pairs.append((f"system + {name}", layer))
            if routed in lists:
                pairs.append((routed, layer))
    seconds: dict[str, float] = {}
    report = evaluate(cases, timed_lists(lists, seconds), resamples, tuple(pairs))
    # What each list costs per request on this machine, the LM's price beside its gain.
    calls = 2 * len(cases.users) * len(cases.lengths)
    report["list_ms_per_case"] = {k: round(1000 * v / calls, 2) for k, v in seconds.items()}
    return report


def print_report(report: dict[str, Any], console) -> None:
    from rich.table import Table

    t = Table(
        title=f"new-user protocol: {report['held_out_users']} users never trained on, replayed "
        f"as sign-ups (95% CIs)"
    )
    for col in ("events", "attributes", "list", *METRICS, "ms/request"):
        t.add_column(col, justify="left" if col == "list" else "right")
    ms = report.get("list_ms_per_case", {})
    for r in report["rows"]:
        cells = [f"{r[k]['mean']:.4f} [{r[k]['low']:.3f}, {r[k]['high']:.3f}]" for k in METRICS]
        cost = f"{ms[r['list']]:.1f}" if r["list"] in ms else "—"
        stated = "stated" if r["attributes"] else "none"
        t.add_row(str(r["events"]), stated, r["list"], *cells, cost)
    console.print(t)
    if report["paired_ndcg10"]:
        p = Table(title="paired NDCG@10, a − b (the same users and lengths; 95% CIs)")
        for col in ("events", "attributes", "a", "b", "a − b", "p (a not better)"):
            p.add_column(col, justify="left" if col in ("a", "b") else "right")
        for r in report["paired_ndcg10"]:
            diff = f"{r['mean_difference']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}]"
            stated = "stated" if r["attributes"] else "none"
            p.add_row(str(r["events"]), stated, r["a"], r["b"], diff, f"{r['p_value']:.3f}")
        console.print(p)


def plot(report: dict[str, Any], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["list"] for r in report["rows"]):
        for stated, style in ((False, "--"), (True, "-")):
            rows = [r for r in report["rows"] if r["list"] == name and r["attributes"] == stated]
            x = [r["events"] for r in rows]
            y = [r["Recall@50"]["mean"] for r in rows]
            lo = [r["Recall@50"]["low"] for r in rows]
            hi = [r["Recall@50"]["high"] for r in rows]
            label = f"{name}, {'attributes stated' if stated else 'no attributes'}"
            ax.plot(x, y, style, marker="o", label=label)
            ax.fill_between(x, lo, hi, alpha=0.15)
    ax.set_xlabel("events since sign-up")
    ax.set_ylabel("Recall@50 of the next item (95% CI)")
    ax.set_title(f"New users: {report['held_out_users']} never trained on")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
