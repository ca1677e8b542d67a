""" "Also watched" pairs released with differential privacy: what `/items/{id}/similar`
ranks by, besides content similarity.

An item-to-item list built from exact co-occurrence counts tells a visitor that someone
watched a rare pair; this release bounds and hides each user's part in it:
- each user contributes the unordered pairs among their first `max_items_per_user` (20)
  distinct items, each pair once: at most m = 20 * 19 / 2 pairs, each count moves by at
  most 1, so the L2 sensitivity is sqrt(m);
- Gaussian noise calibrated by the analytic Gaussian mechanism for (epsilon, delta / 2) is
  added to every pair that occurs, and only pairs whose noisy count exceeds a threshold are
  released. The threshold makes the chance that a pair only one user has (count 1) is
  released at most delta / 2 over that user's m pairs (Gaussian partition selection, as in
  Wilson et al., "Differentially private SQL with bounded user contribution", PETS 2020):
  tau = 1 + sigma * Phi^-1(1 - delta / (2 m)). Together: (epsilon, delta) at user level.
Everything after the release (ranking, the fusion with content) is post-processing.

Pure numpy and scipy.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Self

import numpy as np
import scipy.sparse as sp
from scipy.stats import norm

from training.retrieval.base import Retriever, SparseRows, csr_from_state, csr_state
from training.retrieval.data import FitData
from training.retrieval.private_counts import analytic_gaussian_sigma, distinct_per_user


def release_plan(epsilon: float, delta: float, cap: int) -> dict[str, float]:
    """Noise scale and release threshold for pairs among `cap` items per user."""
    pairs = cap * (cap - 1) // 2
    if pairs < 1:
        raise ValueError(f"max_items_per_user must be at least 2, got {cap}")
    l2 = math.sqrt(pairs)
    sigma = analytic_gaussian_sigma(epsilon, delta / 2, l2)
    threshold = 1.0 + sigma * float(norm.isf(delta / (2 * pairs)))
    return {"sigma": sigma, "threshold": threshold, "l2_sensitivity": l2, "pairs_per_user": pairs}


#: Pairs built per step of `pair_counts`: bounds its memory at any number of users.
CHUNK_PAIRS = 4_000_000


def pair_counts(users: np.ndarray, items: np.ndarray, n_items: int) -> sp.csr_matrix:
    """Upper-triangle counts of distinct users per unordered item pair; `users`, `items`
    are each user's distinct (bounded) items. Built a chunk of users at a time."""
    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    order = np.argsort(users, kind="stable")
    users, items = users[order], items[order]
    starts = np.r_[0, np.flatnonzero(np.diff(users)) + 1, len(users)] if len(users) else []
    total = sp.csr_matrix((n_items, n_items), dtype=np.float64)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    pending = 0
    triu: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def flush() -> sp.csr_matrix:
        r, c = np.concatenate(rows), np.concatenate(cols)
        rows.clear()
        cols.clear()
        part = sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(n_items, n_items))
        part.sum_duplicates()
        return part

    for a, b in itertools.pairwise(starts):
        k = int(b - a)
        if k < 2:
            continue
        if k not in triu:
            triu[k] = np.triu_indices(k, 1)
        i, j = triu[k]
        x, y = items[a:b][i], items[a:b][j]
        rows.append(np.minimum(x, y))
        cols.append(np.maximum(x, y))
        pending += len(x)
        if pending >= CHUNK_PAIRS:
            total = total + flush()
            pending = 0
    if rows:
        total = total + flush()
    total = total.tocsr()
    total.sum_duplicates()
    return total


class PrivateCoVisits(SparseRows, Retriever):
    """Items watched by the same users, from the differentially private pair release
    (module docstring). `epsilon: null` releases the bounded counts without noise or
    threshold (for measuring what the noise costs)."""

    kind = "private_covisits"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"epsilon": 8.0, "delta": 1e-5, "max_items_per_user": 20, "seed": 0}

    def fit(self, data: FitData) -> Self:
        p = self.params
        cap = int(p["max_items_per_user"])
        users = data.seq_users()
        keep = distinct_per_user(users, data.seq_items, cap, earliest=True)
        counts = pair_counts(users[keep], data.seq_items[keep], data.n_items)
        info: dict[str, Any] = {"unit": "user", "max_items_per_user": cap, "epsilon": None}
        if p["epsilon"] is not None:
            plan = release_plan(float(p["epsilon"]), float(p["delta"]), cap)
            rng = np.random.default_rng(p["seed"])
            counts.data = counts.data + rng.normal(0.0, plan["sigma"], len(counts.data))
            counts.data[counts.data <= plan["threshold"]] = 0.0
            counts.eliminate_zeros()
            info |= {"epsilon": float(p["epsilon"]), "delta": float(p["delta"]), **plan}
        info["pairs_released"] = int(counts.nnz)
        both = (counts + counts.T).tocsr().astype(np.float32)
        self.matrix = both
        self.fit_info = info
        self._fitted(data)
        return self

    def rows(self, history: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        h = np.asarray(history, dtype=np.int64)
        h = h[h < self.matrix.shape[0]]
        return self.matrix, h, np.ones(len(h), np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return csr_state(self.matrix)

    def set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.matrix = csr_from_state(arrays)
