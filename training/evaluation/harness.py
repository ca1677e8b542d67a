"""The LlamaRec protocol: leave-one-out, full ranking over all items, history masked, one
target per user. Hyper-parameters are chosen on validation (fit on train) and reported on
test (refit on train + validation).

`one_fit=True` is the sequential-recommendation papers' variant (SASRec, BERT4Rec,
gSASRec on ML-1M): the fit on train that validation chose is tested as it is, with the
validation item in the user's history, and SASRec's epoch count is chosen on validation
during that one fit. It halves the cost (no refit); the CF sources' user vectors then lack
each user's validation item."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pipelines.artifact import Dataset
from pipelines.schema import Split
from training.evaluation.bootstrap import confidence_interval, paired_bootstrap
from training.evaluation.metrics import (
    coverage,
    metrics_from_ranks,
    popularity_tiebreak,
    ranked_top,
)
from training.evaluation.published import published
from training.retrieval import (
    ALS,
    BPR,
    Content,
    FitData,
    ItemKNN,
    MostPopular,
    Retriever,
    SegmentPopular,
    SelfAttentive,
    Transitions,
)
from training.retrieval.fusion import LearnedFusion, source_ranks

COLD_USER_MAX_TRAIN = 5
#: one-fit protocol: SASRec's validation NDCG@10 is measured after every this many epochs
#: (and after the last); the best epoch's weights are kept
EPOCH_CHECK_EVERY = 3
POPULAR_SHARE = 0.2  # targets among the 20% most popular items count as "popular"
FUSION_DEPTH = 100
FUSION_NAME = "fusion (learned, of sources)"


@dataclass
class Phase:
    """One evaluation round: what the models see, and what they must find."""

    name: str
    fit: FitData
    targets: np.ndarray  # one item per user
    excluded: np.ndarray  # bool users x items: the history the ranking masks
    tiebreak: np.ndarray
    train_len: np.ndarray
    popular_target: np.ndarray

    @classmethod
    def build(cls, ds: Dataset, split: Split) -> Phase:
        through = Split(split - 1)
        fit = FitData.from_dataset(ds, through)
        seq = ds.sequences
        rows = np.flatnonzero(seq.splits == split)
        users = np.repeat(np.arange(ds.manifest.n_users), np.diff(seq.indptr))
        if not np.array_equal(users[rows], np.arange(ds.manifest.n_users)):
            raise ValueError("the leave-one-out protocol needs exactly one target per user")
        excluded = fit.matrix.to_scipy().toarray() > 0
        train_only = seq.splits == Split.TRAIN
        train_len = np.bincount(users[train_only], minlength=ds.manifest.n_users)
        counts = np.bincount(fit.seq_items, minlength=fit.n_items)
        tiebreak = popularity_tiebreak(counts)
        targets = seq.items[rows]
        popular = tiebreak[targets] < int(np.ceil(POPULAR_SHARE * fit.n_items))
        return cls(split.label, fit, targets, excluded, tiebreak, train_len, popular)

    def score_matrix(self, model: Retriever) -> np.ndarray:
        return np.stack([model.score(u, self.fit.history(u)) for u in range(self.fit.n_users)])

    def ranks(self, scores: np.ndarray) -> np.ndarray:
        """1-based target rank per user, vectorised over the score matrix."""
        idx = np.arange(len(self.targets))
        s = scores.astype(np.float64, copy=False)
        st = s[idx, self.targets][:, None]
        tb = self.tiebreak
        ahead = (s > st) | ((s == st) & (tb[None, :] < tb[self.targets][:, None]))
        ahead &= ~self.excluded
        return 1 + ahead.sum(axis=1)

    def top(self, scores: np.ndarray, k: int = 10) -> list[np.ndarray]:
        return [
            ranked_top(scores[u], self.excluded[u], self.tiebreak, k) for u in range(len(scores))
        ]


@dataclass
class ModelSpec:
    name: str
    build: Callable[[dict[str, Any]], Retriever]
    grid: list[dict[str, Any]]
    #: what validation selects on: NDCG@10 for a ranking, Recall@50 for a candidate source
    metric: str = "NDCG@10"


def grid(**axes: Iterable[Any]) -> list[dict[str, Any]]:
    keys = list(axes)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*axes.values())]


def default_specs(
    encoder=None, text_model: str | None = None, sasrec: dict[str, Any] | None = None
) -> list[ModelSpec]:
    """The baselines and sources of the comparison, each with a small search grid; the
    content source encodes with `text_model` (a folder or name, default MiniLM); SASRec's
    one point is `sasrec` (default: its default parameters)."""
    embeddings: dict[int, np.ndarray] = {}
    text = {} if text_model is None else {"model_path": [text_model]}

    def content(params: dict[str, Any]) -> Retriever:
        return _CachedContent(embeddings, encoder=encoder, **params)

    return [
        ModelSpec("most popular", lambda p: MostPopular(**p), [{}]),
        ModelSpec("recent popular", lambda p: MostPopular(**p), grid(window_days=[7, 30, 90])),
        ModelSpec("segment popular", lambda p: SegmentPopular(**p), grid(smoothing=[10, 100])),
        ModelSpec(
            "ALS",
            lambda p: ALS(**p),
            grid(factors=[32, 64], regularization=[0.1, 1.0], alpha=[1.0, 5.0]),
        ),
        ModelSpec("BPR", lambda p: BPR(**p), grid(factors=[32, 64], learning_rate=[0.01, 0.05])),
        ModelSpec(
            "item-kNN BM25",
            lambda p: ItemKNN(similarity="bm25", **p),
            grid(neighbours=[20, 100, 400]),
        ),
        ModelSpec(
            "item-kNN cosine",
            lambda p: ItemKNN(similarity="cosine", **p),
            grid(neighbours=[20, 100, 400]),
        ),
        ModelSpec(
            "transitions",
            lambda p: Transitions(**p),
            grid(
                window=[1, 2, 3], recent=[1, 3, 5], recency_decay=[0.5], pop_damping=[0.0, 0.3, 0.6]
            ),
        ),
        # A second transitions source for the candidate set: wider windows, chosen for recall.
        ModelSpec(
            "transitions (recall)",
            lambda p: Transitions(**p),
            grid(
                window=[5, 10],
                recent=[5, 10],
                recency_decay=[0.8],
                pop_damping=[0.3],
                both_ways=[False, True],
            ),
            metric="Recall@50",
        ),
        ModelSpec("content", content, grid(recent=[1, 5, 20], recency_decay=[0.8], **text)),
        # One point, not a grid: each fit costs about 80 s on 2 cores (docs/BENCHMARKS.md).
        ModelSpec("SASRec", lambda p: SelfAttentive(**p), [dict(sasrec or {})]),
    ]


class _CachedContent(Content):
    """Embeds item text once per phase (it depends on the text only) for the whole grid."""

    def __init__(self, cache: dict[int, np.ndarray], **params: Any):
        super().__init__(**params)
        self._cache = cache

    def fit(self, data: FitData):
        key = hash(tuple(data.item_text))
        if key not in self._cache:
            self._cache[key] = self.encoder.encode(data.item_text)
        return self.with_embeddings(self._cache[key], data)


FUSION_SOURCES = (
    "transitions",
    "transitions (recall)",
    "SASRec",
    "ALS",
    "BPR",
    "item-kNN BM25",
    "item-kNN cosine",
    "content",
    "segment popular",
    "recent popular",
)


@dataclass
class ModelResult:
    name: str
    params: dict[str, Any]
    validation_ndcg10: float
    test_ranks: np.ndarray
    test_top10: list[np.ndarray]
    val_scores: np.ndarray | None = None
    test_scores: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def best_epoch(
    model: SelfAttentive, params: dict[str, Any], val: Phase, metric: str = "NDCG@10"
) -> tuple[SelfAttentive, dict[str, Any], np.ndarray]:
    """One fit on `val.fit`, validation measured every `EPOCH_CHECK_EVERY` epochs: the model
    with the best epoch's weights, `params` with that epoch count, its validation scores."""
    total = model.params["epochs"]
    best: dict[str, Any] = {}

    def on_epoch(epoch: int, fitted: SelfAttentive) -> None:
        if epoch % EPOCH_CHECK_EVERY and epoch != total:
            return
        s = val.score_matrix(fitted)
        value = float(metrics_from_ranks(val.ranks(s))[metric].mean())
        if not best or value > best["value"]:
            best.update(value=value, epoch=epoch, weights=fitted.state(), scores=s)

    model.fit(val.fit, on_epoch=on_epoch)
    model.set_state(best["weights"])  # each epoch's weights are a fresh copy
    return model, {**params, "epochs": best["epoch"]}, best["scores"]


def select_and_test(
    spec: ModelSpec, val: Phase, test: Phase, keep_scores: bool, one_fit: bool = False
) -> ModelResult:
    best: tuple[float, dict[str, Any], np.ndarray, np.ndarray, Retriever] | None = None
    for params in spec.grid:
        model = spec.build(params)
        if one_fit and isinstance(model, SelfAttentive):
            model, params, s = best_epoch(model, params, val, spec.metric)
        else:
            s = val.score_matrix(model.fit(val.fit))
        ranks = val.ranks(s)
        chosen = float(metrics_from_ranks(ranks)[spec.metric].mean())
        if best is None or chosen > best[0]:
            best = (chosen, params, s, ranks, model)
    assert best is not None
    _, params, val_scores, val_ranks, model = best
    ndcg = float(metrics_from_ranks(val_ranks)["NDCG@10"].mean())
    # One fit: the chosen model as it is, scored on the test histories (validation item in).
    fitted = model if one_fit else spec.build(params).fit(test.fit)
    test_scores = test.score_matrix(fitted)
    return ModelResult(
        spec.name,
        params,
        ndcg,
        test.ranks(test_scores),
        test.top(test_scores),
        val_scores if keep_scores else None,
        test_scores if keep_scores else None,
    )


def fusion(results: dict[str, ModelResult], val: Phase, test: Phase) -> ModelResult:
    """Learned fusion of the sources: trained on validation targets, applied on test."""
    names = [n for n in FUSION_SOURCES if n in results]
    # History masked once; ranks and the fusion's score features both read the masked scores.
    val_s = {n: np.where(val.excluded, -np.inf, results[n].val_scores) for n in names}
    test_s = {n: np.where(test.excluded, -np.inf, results[n].test_scores) for n in names}
    val_r = {n: source_ranks(val_s[n], None, FUSION_DEPTH) for n in names}
    test_r = {n: source_ranks(test_s[n], None, FUSION_DEPTH) for n in names}

    def log_pop(phase: Phase) -> np.ndarray:
        return np.log1p(np.bincount(phase.fit.seq_items, minlength=phase.fit.n_items))

    model = LearnedFusion(names, FUSION_DEPTH).fit(val_r, val_s, log_pop(val), val.targets)
    val_fused = model.score(val_r, val_s, log_pop(val))
    val_ndcg = float(metrics_from_ranks(val.ranks(val_fused))["NDCG@10"].mean())
    fused = model.score(test_r, test_s, log_pop(test))
    ranks = test.ranks(fused)
    users = np.arange(len(test.targets))
    union = {}
    for k in (20, 50, 100):
        hit = np.zeros(len(users), dtype=bool)
        for n in names:
            r = test_r[n][users, test.targets]
            hit |= (r > 0) & (r <= k)
        union[f"union of top-{k} per source ({len(names)} sources)"] = float(hit.mean())
    extra = {
        "sources": names,
        "candidate_recall": {f"fused top-{k}": float(np.mean(ranks <= k)) for k in (20, 50, 100)}
        | union,
    }
    return ModelResult(
        FUSION_NAME, {"fusion": model.to_json()}, val_ndcg, ranks, test.top(fused), extra=extra
    )


def summarize(result: ModelResult, test: Phase, n_items: int, resamples: int) -> dict[str, Any]:
    per_user = metrics_from_ranks(result.test_ranks)
    out: dict[str, Any] = {
        "params": result.params,
        "validation_NDCG@10": result.validation_ndcg10,
        "test": {m: vars(confidence_interval(v, resamples)) for m, v in per_user.items()},
        "coverage@10": coverage(result.test_top10, n_items),
        "slices": {},
    }
    ndcg = per_user["NDCG@10"]
    for name, mask in (
        ("cold users (<=5 train items)", test.train_len <= COLD_USER_MAX_TRAIN),
        ("popular targets", test.popular_target),
        ("long-tail targets", ~test.popular_target),
    ):
        out["slices"][name] = {
            "users": int(mask.sum()),
            "NDCG@10": float(ndcg[mask].mean()) if mask.any() else None,
        }
    out.update(result.extra)
    return out


def evaluate(
    ds: Dataset,
    specs: list[ModelSpec] | None = None,
    resamples: int = 1000,
    progress: bool = True,
    one_fit: bool = False,
) -> dict[str, Any]:
    """Run every spec and the fusion; returns the JSON-ready report. `one_fit`: the
    papers' variant (module docstring)."""
    val, test = Phase.build(ds, Split.VALIDATION), Phase.build(ds, Split.TEST)
    specs = specs if specs is not None else default_specs()
    results: dict[str, ModelResult] = {}
    for spec in tqdm(specs, desc="models", disable=not progress):
        keep = spec.name in FUSION_SOURCES
        results[spec.name] = select_and_test(spec, val, test, keep, one_fit)
    if any(n in results for n in FUSION_SOURCES):
        f = fusion(results, val, test)
        results[f.name] = f
    n_items = ds.manifest.n_items
    models = {name: summarize(r, test, n_items, resamples) for name, r in results.items()}
    ndcg = {name: metrics_from_ranks(r.test_ranks)["NDCG@10"] for name, r in results.items()}
    pairs = [
        (FUSION_NAME, "SASRec"),
        (FUSION_NAME, "transitions"),
        ("transitions", "ALS"),
        ("BPR", "ALS"),
        ("ALS", "most popular"),
    ]
    paired = [
        {"a": a, "b": b, "metric": "NDCG@10", **vars(paired_bootstrap(ndcg[a], ndcg[b]))}
        for a, b in pairs
        if a in ndcg and b in ndcg
    ]
    return {
        "dataset": ds.manifest.name,
        "dataset_version": ds.manifest.version,
        "protocol": "leave-one-out; full ranking over all items; history masked; "
        + (
            "one fit on train: params and SASRec's epochs chosen on validation, the same "
            "models tested with the validation item in the history; "
            if one_fit
            else "params chosen on validation (fit on train), reported on test (refit on "
            "train+val); "
        )
        + "score ties broken by train popularity",
        "one_fit": one_fit,
        "published": {
            name: {"NDCG@10": ndcg10, "Recall@10": recall10}
            for name, (ndcg10, recall10) in published(ds.manifest.name).items()
        },
        "users": len(test.targets),
        "items": int(n_items),
        "bootstrap_resamples": resamples,
        "models": models,
        "paired_bootstrap": paired,
    }
