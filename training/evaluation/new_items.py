"""The new-item protocol: can the system recommend items it was never trained on?

A time cutoff splits the log. Items whose first interaction comes after it are *new*: the
models are fitted on the interactions up to the cutoff only, so a new item is known by its
text and categories alone, as an item added through `POST /items` is. A test case is each
user's first interaction with a new item after the cutoff, with everything the user did
before it as the history (what the event store holds when the request comes), ranked
against the whole catalogue with the history removed, as the leave-one-out protocol ranks.
Users with no interaction before their case are new users, not new-item cases: left out.

Baselines that know the answer is a new item:
- popularity among new items: new items by their interactions after the cutoff and before
  the case (the live counts a serving system has), every other item after them;
- random new item: new items in a seeded random order.
Pure numpy: the eval command and the benchmark fit the models and call `evaluate`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.artifact import Dataset
from pipelines.errors import LlmrecError
from pipelines.schema import Split
from training.evaluation.bootstrap import confidence_interval, paired_bootstrap
from training.evaluation.metrics import metrics_from_ranks, popularity_tiebreak, target_rank
from training.retrieval.data import FitData

#: Default cutoff: the time by which this share of the interactions had happened. On
#: ML-100k (5-core) 0.2 leaves 133 new items (10% of the catalogue) and 555 test users;
#: a later cutoff leaves too few new items (90 at 0.3, 31 at 0.6).
CUTOFF_QUANTILE = 0.2
METRICS = ("NDCG@10", "Recall@10", "Recall@50")
#: the rank of a target a list does not hold: beyond every cut-off
MISS = 2**31 - 1


@dataclass
class NewItemCases:
    cutoff: float
    new: np.ndarray  # bool per item
    full: FitData  # every interaction
    train: FitData  # interactions at or before the cutoff
    users: np.ndarray
    histories: list[np.ndarray]
    targets: np.ndarray
    times: np.ndarray

    def __len__(self) -> int:
        return len(self.users)

    def live_new_counts(self, case: int) -> np.ndarray:
        """Interactions per item after the cutoff and before the case, new items only."""
        return self.live_new_counts_at(self.times[case])

    def live_new_counts_at(self, time: float) -> np.ndarray:
        """Interactions per item after the cutoff and before `time`, new items only: the
        live counts a serving store holds at that moment."""
        d = self.full
        seen = (d.seq_times > self.cutoff) & (d.seq_times < time)
        counts = np.bincount(d.seq_items[seen], minlength=d.n_items).astype(np.float64)
        return np.where(self.new, counts, 0.0)


def new_item_cases(ds: Dataset, quantile: float = CUTOFF_QUANTILE) -> NewItemCases:
    """Cutoff at `quantile` of the interaction times; the cases and the training view."""
    return cases_from(FitData.from_dataset(ds, Split.TEST), quantile)


def cases_from(full: FitData, quantile: float = CUTOFF_QUANTILE) -> NewItemCases:
    """`new_item_cases` on every interaction of a `FitData` (sequences in time order)."""
    if not 0 < quantile < 1:
        raise ValueError(f"the cutoff quantile must be between 0 and 1, got {quantile}")
    cutoff = float(np.quantile(full.seq_times, quantile))
    first = np.full(full.n_items, np.inf)
    np.minimum.at(first, full.seq_items, full.seq_times.astype(np.float64))
    new = first > cutoff
    users, histories, targets, times = [], [], [], []
    for u in range(full.n_users):
        lo, hi = full.seq_indptr[u], full.seq_indptr[u + 1]
        items, t = full.seq_items[lo:hi], full.seq_times[lo:hi]
        at = np.flatnonzero((t > cutoff) & new[items])
        if len(at) and at[0] >= 1:
            users.append(u)
            histories.append(items[: at[0]].copy())
            targets.append(int(items[at[0]]))
            times.append(t[at[0]])
    if not users:
        raise LlmrecError(
            f"no user interacts with an item first seen after the cutoff (quantile {quantile}): "
            f"{int(new.sum())} new items; choose an earlier --cutoff-quantile"
        )
    return NewItemCases(
        cutoff=cutoff,
        new=new,
        full=full,
        train=full.only(full.seq_times <= cutoff, f"before{cutoff:.0f}"),
        users=np.asarray(users, np.int64),
        histories=histories,
        targets=np.asarray(targets, np.int64),
        times=np.asarray(times),
    )


def _summary(ranks: np.ndarray, tops: list[np.ndarray], new: np.ndarray, resamples: int):
    per_case = metrics_from_ranks(ranks)
    out: dict[str, Any] = {}
    for m in METRICS:
        ci = confidence_interval(per_case[m], resamples)
        out[m] = {"mean": ci.mean, "low": ci.low, "high": ci.high}
    shares = [new[t[:10]].mean() if len(t) else 0.0 for t in tops]
    out["new_share@10"] = float(np.mean(shares)) if shares else 0.0
    return out, per_case


def evaluate(
    cases: NewItemCases,
    rankers: Mapping[str, Callable[[int, np.ndarray], np.ndarray]],
    lists: Mapping[str, Callable[[int, np.ndarray, np.ndarray], np.ndarray]] | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Every ranker (`score(user, history)` over all items: full ranking) and every list
    maker (`top(user, history, live_counts)`: its ordered items, a miss beyond them; the
    system's candidate generator, given the live counts of new items a serving store holds
    when the case happens), plus the two baselines, on the same cases."""
    n_items = cases.train.n_items
    tiebreak = popularity_tiebreak(np.bincount(cases.train.seq_items, minlength=n_items))
    rng = np.random.default_rng(seed)
    new_idx = np.flatnonzero(cases.new)
    ranks: dict[str, list[int]] = {}
    tops: dict[str, list[np.ndarray]] = {}

    def add(name: str, rank: int, top: np.ndarray) -> None:
        ranks.setdefault(name, []).append(rank)
        tops.setdefault(name, []).append(top)

    for c in range(len(cases)):
        user, hist, target = int(cases.users[c]), cases.histories[c], int(cases.targets[c])
        excluded = np.zeros(n_items, dtype=bool)
        excluded[hist] = True
        for name, score in rankers.items():
            s = np.asarray(score(user, hist), dtype=np.float64)[:n_items]
            s = np.where(np.isfinite(s), s, -1e300)
            top = _top(s, excluded, tiebreak, 10)
            add(name, target_rank(s, target, excluded, tiebreak), top)
        live = cases.live_new_counts(c)
        for name, make in (lists or {}).items():
            items = np.asarray(make(user, hist, live))
            hit = np.flatnonzero(items == target)
            add(name, int(hit[0]) + 1 if len(hit) else MISS, items[:10])
        for name, s in (
            ("popularity among new items", np.where(cases.new, 1.0 + live, 0.0)),
            ("random new item", _random_new(new_idx, n_items, rng)),
        ):
            add(name, target_rank(s, target, excluded, tiebreak), _top(s, excluded, tiebreak, 10))

    models, per_case = {}, {}
    for name in ranks:
        models[name], per_case[name] = _summary(
            np.asarray(ranks[name]), tops[name], cases.new, resamples
        )
    ref = "popularity among new items"
    paired = {
        name: vars(paired_bootstrap(per_case[name]["Recall@50"], per_case[ref]["Recall@50"]))
        for name in models
        if name != ref
    }
    return {
        "protocol": "new-items",
        "cutoff": cases.cutoff,
        "new_items": int(cases.new.sum()),
        "items": int(n_items),
        "cases": len(cases),
        "train_interactions": len(cases.train.seq_items),
        "models": models,
        "recall50_vs_new_popularity": paired,
    }


def _top(scores: np.ndarray, excluded: np.ndarray, tiebreak: np.ndarray, k: int) -> np.ndarray:
    order = np.lexsort((tiebreak, -scores))
    return order[~excluded[order]][:k]


def _random_new(new_idx: np.ndarray, n_items: int, rng: np.random.Generator) -> np.ndarray:
    s = np.zeros(n_items)
    s[new_idx] = 1.0 + rng.random(len(new_idx))
    return s


def fit_and_evaluate(
    ds: Dataset,
    spec=None,
    quantile: float = CUTOFF_QUANTILE,
    text_models: tuple[str, ...] = (),
    resamples: int = 1000,
    progress: bool = True,
    rerankers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Fit the stack of `spec` (default `DEFAULT_SOURCES`: sources, then the fusion on a
    held-out fit) on the data up to the cutoff, and evaluate every source, the system's
    candidate list (fused, routed as serving routes) and the baselines. `text_models`: more
    content rows, one per text encoder (same parameters as the spec's content source).
    `rerankers`: name -> folder of re-rankers trained before the cutoff
    (`training.evaluation.cold_rerank`), each reordering the system's candidates."""
    from training.new_item_place import shown_items
    from training.retrieval import Content
    from training.retrieval.embeddings import TextEncoder
    from training.stack import DEFAULT_SOURCES, holdout_fit, stack_from_data, text_encoder

    spec = spec or DEFAULT_SOURCES
    cases = new_item_cases(ds, quantile)
    data = cases.train
    embeddings = text_encoder(spec).encode(data.item_text).astype(np.float32)
    fusion, _ = holdout_fit(data, 1, embeddings, progress, spec)
    stack = stack_from_data(data, fusion, embeddings, "new-items", progress, spec)
    rankers = {name: src.score for name, src in stack.sources.items()}
    content = next((p for k, p in spec.values() if issubclass(k, Content)), {})
    for model in text_models:
        emb = TextEncoder(model, cache=True).encode(data.item_text).astype(np.float32)
        extra = Content(**{**content, "model_path": model}).with_embeddings(emb, data)
        rankers[f"content ({model})"] = extra.score
    gen = stack.generator()

    def system(live: bool) -> Callable[[int, np.ndarray, np.ndarray], np.ndarray]:
        def top(user: int, history: np.ndarray, counts: np.ndarray) -> np.ndarray:
            gen.live_counts = counts if live else None
            return gen.generate(user, history, n=50).items

        return top

    def shown(user: int, history: np.ndarray, counts: np.ndarray) -> np.ndarray:
        gen.live_counts = counts
        c = gen.generate(user, history, n=50)
        return shown_items(c.items, c.new_events, 10, gen.config.shown_new_item_rank)

    lists = {
        "system (fused candidates)": system(True),
        "system without live counts": system(False),
        "system, shown 10 with its new-item place": shown,
    }
    if rerankers:
        from training.evaluation.cold_rerank import reranked_lists

        for name, folder in rerankers.items():
            for suffix, make in reranked_lists(stack, folder, data.item_text).items():
                lists[f"system + {name}{suffix}"] = make
    seconds: dict[str, float] = {}
    report = evaluate(cases, rankers, timed_lists(lists, seconds), resamples)
    report["sources"] = list(stack.sources)
    # The place's price: every interaction after the cutoff, old items too.
    from training.evaluation.new_item_place_price import evaluate_place

    report["shown_place"] = evaluate_place(cases, gen, resamples=resamples)
    # What each list costs per case on this machine (one thread per request's work, as
    # serving runs it): the LM's price beside its gain.
    report["list_ms_per_case"] = {k: round(1000 * v / len(cases), 2) for k, v in seconds.items()}
    return report


def timed_lists(lists: Mapping[str, Callable], seconds: dict[str, float]) -> dict[str, Callable]:
    """`lists` whose calls add their wall time to `seconds[name]`."""

    def wrap(name: str, make: Callable) -> Callable:
        def top(*args: Any) -> np.ndarray:
            start = time.perf_counter()
            try:
                return make(*args)
            finally:
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start

        return top

    return {name: wrap(name, make) for name, make in lists.items()}


def print_report(report: dict[str, Any], console) -> None:
    from rich.table import Table

    t = Table(
        title=f"new-item protocol: {report['cases']} cases, {report['new_items']} of "
        f"{report['items']} items new (95% CIs; new@10: share of new items in the top 10)"
    )
    for col in ("model", *METRICS, "new@10", "Recall@50 vs new-item popularity", "ms/case"):
        t.add_column(col, justify="left" if col == "model" else "right")
    paired = report["recall50_vs_new_popularity"]
    ms = report.get("list_ms_per_case", {})
    for name, m in sorted(report["models"].items(), key=lambda kv: -kv[1]["Recall@50"]["mean"]):
        cells = [f"{m[k]['mean']:.4f} [{m[k]['low']:.3f}, {m[k]['high']:.3f}]" for k in METRICS]
        p = paired.get(name)
        diff = f"{p['mean_difference']:+.3f} [{p['low']:+.3f}, {p['high']:+.3f}]" if p else "—"
        cost = f"{ms[name]:.1f}" if name in ms else "—"
        t.add_row(name, *cells, f"{m['new_share@10']:.1%}", diff, cost)
    console.print(t)
    if "shown_place" in report:
        from training.evaluation.new_item_place_price import print_place_report

        print_place_report(report["shown_place"], console)


def plot(report: dict[str, Any], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(report["models"].items(), key=lambda kv: kv[1]["Recall@50"]["mean"])
    names = [n for n, _ in rows]
    mean = np.array([m["Recall@50"]["mean"] for _, m in rows])
    err = np.array(
        [
            [mean[i] - m["Recall@50"]["low"], m["Recall@50"]["high"] - mean[i]]
            for i, (_, m) in enumerate(rows)
        ]
    ).T
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
    ax.barh(names, mean, xerr=err, color="tab:blue", alpha=0.8)
    ax.set_xlabel("Recall@50 on new-item cases (95% CI)")
    ax.set_title(f"New items: {report['new_items']} new, {report['cases']} cases")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
