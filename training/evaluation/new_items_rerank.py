"""The re-ranker on the new-item protocol (`training.evaluation.new_items`).

A re-ranker trained on every interaction has seen the new items, so it is trained for this
protocol on the interactions up to the cutoff only (`prepare_before_cutoff`, what
`llmrec train --new-items-cutoff` builds): each user's last item before the cutoff is the
validation target, and no example names a new item as the answer. It records the view it
was trained on (`cutoff_version`), which `llmrec eval --protocol new-items` checks, and
which `publish` refuses (it is not the dataset's version).

At evaluation it reorders the head of the system's candidates for each case as serving
does: the first K of the 50, which end with new-item slots of their own (filled by live
engagement; `CandidateGenerator.generate`'s `head`), the rest following unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipelines.artifact import Dataset
from training.evaluation.new_items import CUTOFF_QUANTILE, new_item_cases
from training.reranker.examples import Row, subset
from training.reranker.features import candidate_features
from training.reranker.model import RerankerConfig
from training.reranker.prepared import PreparedData, prepare_from
from training.reranker.settings import TrainSettings

#: the system's candidate count, as `llmrec eval --protocol new-items` reports it
CANDIDATES = 50


def cutoff_version(ds: Dataset, quantile: float = CUTOFF_QUANTILE) -> str:
    """The name of the data a re-ranker trained before the cutoff records."""
    return f"{ds.manifest.version}+before-q{quantile:g}"


def prepare_before_cutoff(
    ds: Dataset,
    cfg: RerankerConfig,
    settings: TrainSettings,
    quantile: float = CUTOFF_QUANTILE,
    progress: bool = True,
    spec=None,
) -> PreparedData:
    """The re-ranker's examples from the interactions at or before the new-item cutoff:
    training rows from the earlier ones, each user's last one before the cutoff validates
    (users with two or fewer are not validated)."""
    cases = new_item_cases(ds, quantile)
    data, hidden = cases.train.holdout_last(1)
    targets = np.array([int(h[-1]) if len(h) else -1 for h in hidden], dtype=np.int64)
    return prepare_from(
        data, targets, cfg, settings, None, progress, spec, cutoff_version(ds, quantile)
    )


def reranked_lists(
    stack, folder: str | Path, item_texts: list[str]
) -> dict[str, Callable[[int, np.ndarray, np.ndarray], np.ndarray]]:
    """List makers (`new_items.evaluate`'s `top(user, history, live_counts)`) for the
    re-ranker in `folder` over `stack`'s candidates: the full model, and a hybrid's feature
    layer alone."""
    from training.reranker.inference import Reranker
    from training.reranker.routing import FeatureLayer

    reranker = Reranker(folder, item_texts)
    gen = stack.generator()
    t, sources = reranker.template, stack.source_names

    def maker(score: Callable) -> Callable[[int, np.ndarray, np.ndarray], np.ndarray]:
        def top(user: int, history: np.ndarray, counts: np.ndarray) -> np.ndarray:
            gen.live_counts = counts
            c = gen.generate(user, history, n=CANDIDATES, head=t.candidates)
            k = min(t.candidates, len(c.items))
            feats = candidate_features(subset(c, np.arange(k)), sources, stack.log_popularity)
            row = Row(user, np.asarray(history)[-t.history_items :], c.items[:k], feats, -1)
            order = np.argsort(-np.asarray(score(row)), kind="stable")
            return np.concatenate([c.items[:k][order], c.items[k:]])

        return top

    mode = reranker.meta["config"].get("mode")
    out = {"": maker(lambda row: reranker.score_rows([row])[0])}
    if mode == "hybrid":
        layer = FeatureLayer.load(folder)
        out[" (feature layer alone)"] = maker(lambda row: layer.score(row.features))
    return out
