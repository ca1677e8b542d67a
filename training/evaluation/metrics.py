"""Ranking metrics as pure functions of (scores, target): one target item per user."""

from __future__ import annotations

import numpy as np

CUTOFFS_NDCG = (5, 10)
CUTOFFS_RECALL = (5, 10, 20, 50)


def popularity_tiebreak(counts: np.ndarray) -> np.ndarray:
    """Position of each item in popularity order (0 = most popular; ties by item id).

    Ranks break score ties with it, so a model that cannot tell items apart falls back to
    popularity rather than to item-id order.
    """
    order = np.lexsort((np.arange(len(counts)), -counts))
    pos = np.empty(len(counts), dtype=np.int64)
    pos[order] = np.arange(len(counts))
    return pos


def target_rank(scores: np.ndarray, target: int, excluded: np.ndarray, tiebreak: np.ndarray) -> int:
    """1-based rank of `target` among the non-excluded items (full ranking).

    `excluded` is a boolean mask (the user's history); order is by score, then `tiebreak`.
    """
    s = scores.astype(np.float64, copy=False)
    st = s[target]
    ahead = (s > st) | ((s == st) & (tiebreak < tiebreak[target]))
    return int(1 + np.count_nonzero(ahead & ~excluded))


def ranked_top(
    scores: np.ndarray, excluded: np.ndarray, tiebreak: np.ndarray, k: int
) -> np.ndarray:
    """The top-k non-excluded items in the order `target_rank` uses."""
    order = np.lexsort((tiebreak, -scores.astype(np.float64)))
    return order[~excluded[order]][:k]


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-user metric values (arrays, for bootstrap) from 1-based target ranks."""
    r = np.asarray(ranks, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for k in CUTOFFS_NDCG:
        out[f"NDCG@{k}"] = np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)
    for k in CUTOFFS_RECALL:
        out[f"Recall@{k}"] = (r <= k).astype(np.float64)
    out["MRR@10"] = np.where(r <= 10, 1.0 / r, 0.0)
    return out


def coverage(top_lists: list[np.ndarray] | np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one user's list."""
    if len(top_lists) == 0:
        return 0.0
    return len(np.unique(np.concatenate([np.asarray(t) for t in top_lists]))) / n_items
