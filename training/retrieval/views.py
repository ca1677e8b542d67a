"""What one source says for one request, kept to what the fusion reads: its ranked top
items, the mean and spread of its scores over the user's recommendable items, and its score
of any item asked for. A request then fuses the union of the sources' top items (a few
hundred) instead of arrays over the whole catalogue for every source."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from training.retrieval.fusion import _row_stats, top_list


@dataclass
class SourceView:
    #: the source's list: its best items with a finite score, best first (at most `depth`)
    top: np.ndarray
    #: mean and standard deviation of its finite scores over the recommendable items
    mean: float
    std: float
    #: scores of given items (-inf: unscorable or not recommendable)
    scores_at: Callable[[np.ndarray], np.ndarray]

    def at(self, items: np.ndarray) -> np.ndarray:
        return np.asarray(self.scores_at(np.asarray(items, dtype=np.int64)), dtype=np.float32)

    def ranks_at(self, items: np.ndarray) -> np.ndarray:
        """1-based rank of each of `items` in `top` (0: not in it)."""
        order = np.argsort(self.top, kind="stable")
        return values_at(self.top[order], order + 1, items, 0).astype(np.int32)


def values_at(keys: np.ndarray, values: np.ndarray, asked: np.ndarray, missing: float):
    """`values` of the `asked` keys (`keys` sorted ascending); `missing` for keys not there."""
    asked = np.asarray(asked, dtype=np.int64)
    if not len(keys):
        return np.full(len(asked), missing, dtype=np.asarray(values).dtype)
    pos = np.minimum(np.searchsorted(keys, asked), len(keys) - 1)
    return np.where(keys[pos] == asked, values[pos], missing)


def dense_view(scores: np.ndarray, depth: int) -> SourceView:
    """The view of scores over the whole catalogue (not recommendable items already -inf)."""
    mean, std = _row_stats(scores)
    return SourceView(
        top=top_list(scores, depth),
        mean=float(mean[0]),
        std=float(std[0]),
        scores_at=lambda items: scores[items],
    )


def _unscorable(items: np.ndarray) -> np.ndarray:
    return np.full(len(items), -np.inf, dtype=np.float32)


def empty_view() -> SourceView:
    """A source with nothing to say for this request (as `_row_stats` of an empty row)."""
    return SourceView(np.zeros(0, dtype=np.int64), 0.0, 1e-9, _unscorable)


def sparse_view(items: np.ndarray, scores: np.ndarray, depth: int) -> SourceView:
    """The view of a source that scores only `items` (sorted ids; every other item -inf)."""
    if not len(items):
        return empty_view()
    mean, std = _row_stats(scores)

    def at(asked: np.ndarray) -> np.ndarray:
        return values_at(items, scores, asked, -np.inf).astype(np.float32)

    return SourceView(items[top_list(scores, depth)], float(mean[0]), float(std[0]), at)


def masked(scores: np.ndarray, items: np.ndarray, banned: np.ndarray) -> np.ndarray:
    """`scores` of `items` with the banned ones (and those beyond `banned`) at -inf."""
    inside = items < len(banned)
    ok = np.zeros(len(items), dtype=bool)
    ok[inside] = ~banned[items[inside]]
    return np.where(ok, scores, -np.inf).astype(np.float32)
