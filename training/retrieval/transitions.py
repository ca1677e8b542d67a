"""Sequential transitions: what users go on to after an item, from their sequences."""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from training.retrieval.base import Retriever, SparseRows, csr_from_state, csr_state
from training.retrieval.data import FitData


class Transitions(SparseRows, Retriever):
    """Item-to-item scores from forward co-occurrence within `window` steps of each user's
    chronological sequence (weight 1/distance), damped by the target's popularity. With
    `both_ways`, co-occurrence counts in both directions: items rated in one sitting have an
    arbitrary order, so the item that "comes next" may sit just before.

    A user is scored from their `recent` last items, the newest weighted 1, the one before
    `recency_decay`, and so on. Stateless per user: a new event changes the next request.
    """

    kind = "transitions"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {
            "window": 3,
            "recent": 5,
            "recency_decay": 0.6,
            "pop_damping": 0.3,
            "both_ways": False,
        }

    def fit(self, data: FitData) -> Self:
        items = data.seq_items.astype(np.int64)
        users = data.seq_users()
        n = data.n_items
        rows, cols, vals = [], [], []
        for d in range(1, self.params["window"] + 1):
            same = users[d:] == users[:-d]
            rows.append(items[:-d][same])
            cols.append(items[d:][same])
            vals.append(np.full(int(same.sum()), 1.0 / d, dtype=np.float32))
        c = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
        )
        c.sum_duplicates()
        if self.params["both_ways"]:
            c = (c + c.T).tocsr()
        c.setdiag(0)
        c.eliminate_zeros()
        pop = np.bincount(items, minlength=n).astype(np.float32)
        damp = np.power(np.maximum(pop, 1.0), -self.params["pop_damping"]).astype(np.float32)
        self.matrix = (c @ sp.diags(damp)).tocsr().astype(np.float32)
        self._fitted(data)
        return self

    def rows(self, history: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        m = self.matrix
        recent = history[::-1][: self.params["recent"]]
        keep = recent < m.shape[0]
        weights = self.params["recency_decay"] ** np.arange(len(recent), dtype=np.float32)
        return m, recent[keep], weights[keep]

    def state(self) -> dict[str, np.ndarray]:
        return csr_state(self.matrix)

    def set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.matrix = csr_from_state(arrays)
