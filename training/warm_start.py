"""Fits that start from an earlier fit: a retrain's from the live version, and a fit's
second pass (every source on all the data) from its own held-out fit. What a warm start
hands each source (`WarmStart`, `Retriever.warm_fit`), and the warm start of a cold fit's
second pass where `FullFit` asks for one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.artifact import Dataset
from training.full_fit import FullFit, full_fit_is_warm
from training.retrieval import FitData, Retriever

#: A warm fit with a few interactions per user more than the fit it starts from (after a
#: held-out fit, or a retrain's published fit after its gate's): this share of a full fit
#: (SASRec: 2 of 40 epochs).
NEXT_SHARE = 0.05


@dataclass
class WarmStart:
    """Fit sources from a previous fit of theirs: `sources` by name, `item_map[i]` item i's
    index in their data (-1: new), `share` of a full fit to spend (`Retriever.warm_fit`),
    `user_map[u]` user u's index there (None: not known; factor models then refit)."""

    sources: dict[str, Retriever]
    item_map: np.ndarray
    share: float
    user_map: np.ndarray | None = None


def item_map(previous: Dataset, current: Dataset) -> np.ndarray:
    """Each item of `current` as its index in `previous` (-1: new), by raw item id."""
    from pipelines.schema import ITEM_ID

    index = {item: i for i, item in enumerate(previous.items[ITEM_ID].to_pylist())}
    return np.array([index.get(i, -1) for i in current.items[ITEM_ID].to_pylist()], np.int64)


def warm_from_holdout(
    held: dict[str, Retriever], data: FitData, full_fit: FullFit | str
) -> WarmStart | None:
    """The warm start of a cold fit's second pass on `data` from the sources `held` fitted
    on its held-out view (same users, same items), where `full_fit` says so."""
    if not full_fit_is_warm(full_fit, len(data.seq_items)):
        return None
    return WarmStart(held, np.arange(data.n_items), NEXT_SHARE, np.arange(data.n_users))
