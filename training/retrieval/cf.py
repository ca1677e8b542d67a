"""Collaborative filtering fitted with `implicit`: ALS, BPR and item-kNN (cosine / BM25).

`implicit` fits; scoring and user fold-in are plain numpy on the saved arrays, so serving
needs neither the training code path nor a GPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from training.retrieval.base import Retriever, SparseRows, csr_from_state, csr_state, pad_to
from training.retrieval.data import FitData
from training.retrieval.item_index import INDEX_PREFIX, ItemIndex
from training.retrieval.views import SourceView, empty_view, masked


def _quiet_threads() -> None:
    # implicit warns when BLAS runs several threads inside its own parallel loops.
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, "blas")


class _Factors(Retriever):
    """Shared by ALS and BPR: user and item factors; score = user . item."""

    def _fit_factors(
        self, model, data: FitData, init: tuple[np.ndarray, np.ndarray] | None = None
    ) -> Self:
        """Fit an `implicit` factor model and keep only its factors as float32 arrays.
        `init`: (user, item) factors to start from (implicit trains on from factors set
        before its fit)."""
        if init is not None:
            model.user_factors, model.item_factors = init
        model.fit(data.matrix.to_scipy(), show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)
        self._fitted(data)
        self._build_index()
        return self

    _index: ItemIndex | None = None

    def _build_index(self) -> None:
        """The index over the item factors, from `index_from` items (0: never), where every
        row is finite."""
        self._index = ItemIndex.over(
            self.item_factors, self.params.get("index_from", 0), self.params["seed"]
        )

    def _user_vector(self, user: int | None, history: np.ndarray) -> np.ndarray | None:
        if user is not None and 0 <= user < len(self.user_factors):
            return self.user_factors[user]
        return self.fold_in(history) if len(history) else None

    def search(
        self, user: int | None, history: np.ndarray, banned: np.ndarray, depth: int
    ) -> SourceView | None:
        """The user's top items from the index over the item factors (None without one)."""
        if self._index is None:
            return None
        u = self._user_vector(user, history)
        if u is None:
            return empty_view()
        return self._index.view(
            self.item_factors,
            u,
            banned,
            depth,
            self.params["index_probes"],
            lambda items: masked(self._dot(u, items), items, banned),
        )

    def _dot(self, u: np.ndarray, items: np.ndarray) -> np.ndarray:
        """`u`'s scores of `items`: -inf beyond the factors and for rows without any yet."""
        items = np.asarray(items, dtype=np.int64)
        out = np.full(len(items), -np.inf, dtype=np.float32)
        known = items < len(self.item_factors)
        out[known] = self.item_factors[items[known]] @ u
        out[np.isnan(out)] = -np.inf
        return out

    def score_items(self, user: int | None, history: np.ndarray, items: np.ndarray) -> np.ndarray:
        u = self._user_vector(user, history)
        if u is None:
            return np.full(len(items), -np.inf, dtype=np.float32)
        return self._dot(u, items)

    def _model(self, iterations: int):
        """The `implicit` model of these parameters, running `iterations`."""
        raise NotImplementedError

    def fit(self, data: FitData) -> Self:
        _quiet_threads()  # before the constructor: ALS's checks the BLAS thread count
        return self._fit_factors(self._model(self.params["iterations"]), data)

    def warm_fit(
        self,
        data: FitData,
        previous: Retriever,
        item_map: np.ndarray,
        share: float,
        user_map: np.ndarray | None = None,
    ) -> Self:
        """`share` of the iterations (at least one) from `previous`'s factors, where both
        the items and the users of `data` are mapped to it; a refit otherwise (a user's
        index is not stable across datasets, and a stranger's factors are no start).
        Items and users `previous` did not know start as a fresh fit's do."""
        same = type(previous) is type(self) and previous.params["factors"] == self.params["factors"]
        if not same or user_map is None:
            return self.fit(data)
        _quiet_threads()
        iterations = max(1, round(self.params["iterations"] * share))
        model = self._model(iterations)
        rng = np.random.default_rng(self.params["seed"])
        users = _start_rows(previous.user_factors, user_map, data.n_users, rng, self._fresh)
        items = _start_rows(previous.item_factors, item_map, data.n_items, rng, self._fresh)
        self.fit_info = {"warm_iterations": iterations}
        return self._fit_factors(model, data, (self._start_users(users), items))

    @staticmethod
    def _fresh(rng: np.random.Generator, rows: int, width: int) -> np.ndarray:
        """Rows for users or items new to a warm fit: small, like implicit's start."""
        return (rng.random((rows, width), dtype=np.float32) - 0.5) * 0.01

    def _start_users(self, users: np.ndarray) -> np.ndarray:
        """A warm fit's user rows as the model's layout wants them (ALS: as they are)."""
        return users

    def score(self, user: int | None, history: np.ndarray) -> np.ndarray:
        u = self._user_vector(user, history)
        if u is None:
            return np.full(self.n_items, -np.inf, dtype=np.float32)
        out = self.item_factors @ u
        out[np.isnan(out)] = -np.inf  # items added without interactions yet
        return pad_to(out, self.n_items)

    def score_rows(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        """Known users' rows in one product with the item factors (a fusion chunk of 100
        users at 200,000 items: one pass over the item factors instead of 100)."""
        users = np.asarray(users, dtype=np.int64)
        known = (users >= 0) & (users < len(self.user_factors))
        if not known.all():
            return super().score_rows(users, histories)
        out = self.user_factors[users] @ self.item_factors.T
        out[np.isnan(out)] = -np.inf  # items added without interactions yet
        if out.shape[1] < self.n_items:
            pad = np.full((len(users), self.n_items - out.shape[1]), -np.inf, np.float32)
            out = np.hstack([out, pad])
        return out

    def fold_in(self, history: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def partial_fit_users(self, users: np.ndarray, histories: list[np.ndarray]) -> None:
        """Recompute the factors of `users` from their new histories (milliseconds)."""
        users = np.asarray(users, dtype=np.int64)
        if len(users) and users.max() >= len(self.user_factors):
            grow = int(users.max()) + 1 - len(self.user_factors)
            pad = np.zeros((grow, self.user_factors.shape[1]), np.float32)
            self.user_factors = np.vstack([self.user_factors, pad])
        for u, h in zip(users, histories, strict=True):
            h = np.asarray(h, dtype=np.int64)
            h = h[(h >= 0) & (h < len(self.item_factors))]
            self.user_factors[u] = self.fold_in(h) if len(h) else 0.0

    def partial_fit_items(
        self,
        n_items: int,
        texts: list[str] | None = None,
        item_users: dict[int, np.ndarray] | None = None,
    ) -> None:
        """Grow to `n_items`; items in `item_users` get factors folded in from the users who
        interacted with them, the others stay unscored (-inf) until they have interactions."""
        grow = n_items - len(self.item_factors)
        if grow > 0:
            pad = np.full((grow, self.item_factors.shape[1]), np.nan, np.float32)
            self.item_factors = np.vstack([self.item_factors, pad])
        for item, users in (item_users or {}).items():
            users = np.asarray(users, dtype=np.int64)
            users = users[(users >= 0) & (users < len(self.user_factors))]
            if len(users):
                self.item_factors[item] = self.item_fold_in(users)
        super().partial_fit_items(n_items, texts)

    def item_fold_in(self, users: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def state(self) -> dict[str, np.ndarray]:
        index = self._index.state(INDEX_PREFIX) if self._index is not None else {}
        return {"user_factors": self.user_factors, "item_factors": self.item_factors, **index}

    def set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.user_factors = arrays["user_factors"]
        self.item_factors = arrays["item_factors"]
        self._index = ItemIndex.from_state(arrays, INDEX_PREFIX)
        if self._index is None:  # saved before factor models indexed their items
            self._build_index()


def _start_rows(
    previous: np.ndarray,
    index: np.ndarray,
    n: int,
    rng: np.random.Generator,
    fresh: Callable[[np.random.Generator, int, int], np.ndarray],
) -> np.ndarray:
    """`n` rows of a warm fit's start: row i is `previous[index[i]]` where it had one (and a
    finite one: an item grown in serving without fold-in is NaN), else a fresh row."""
    index = np.asarray(index, dtype=np.int64)[:n]
    index = np.concatenate([index, np.full(n - len(index), -1, np.int64)])
    index[index >= len(previous)] = -1
    out = fresh(rng, n, previous.shape[1])
    known = index >= 0
    rows = previous[index[known]]
    ok = np.isfinite(rows).all(axis=1)
    out[np.flatnonzero(known)[ok]] = rows[ok]
    return np.ascontiguousarray(out, dtype=np.float32)


class ALS(_Factors):
    """Implicit ALS (Hu, Koren, Volinsky) with confidence 1 + alpha for observed items."""

    kind = "als"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {
            "factors": 64,
            "regularization": 0.1,
            "alpha": 2.0,
            "iterations": 15,
            "seed": 0,
            # From this many items a request probes an index over the item factors (0:
            # never); how many of its lists (docs/RETRIEVAL.md, views and item indexes)
            "index_from": 50_000,
            "index_probes": 48,
        }

    def _model(self, iterations: int):
        from implicit.als import AlternatingLeastSquares

        p = self.params
        return AlternatingLeastSquares(
            factors=p["factors"],
            regularization=p["regularization"],
            alpha=p["alpha"],
            iterations=iterations,
            random_state=p["seed"],
            use_gpu=False,
        )

    def fold_in(self, history: np.ndarray) -> np.ndarray:
        """The exact ALS user step: (YtY + alpha * Yh'Yh + reg I)^-1 (1 + alpha) Yh' 1."""
        y = self.item_factors.astype(np.float64)
        yh = y[np.unique(history)]
        a = self.params["alpha"]
        lhs = y.T @ y + a * yh.T @ yh + self.params["regularization"] * np.eye(y.shape[1])
        return np.linalg.solve(lhs, (1 + a) * yh.sum(0)).astype(np.float32)

    def item_fold_in(self, users: np.ndarray) -> np.ndarray:
        """The ALS item step, symmetric to `fold_in` with the user factors."""
        x = self.user_factors.astype(np.float64)
        xu = x[np.unique(users)]
        a = self.params["alpha"]
        lhs = x.T @ x + a * xu.T @ xu + self.params["regularization"] * np.eye(x.shape[1])
        return np.linalg.solve(lhs, (1 + a) * xu.sum(0)).astype(np.float32)


class BPR(_Factors):
    """Bayesian Personalised Ranking (implicit's CPU implementation, with item biases)."""

    kind = "bpr"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {
            "factors": 64,
            "learning_rate": 0.05,
            "regularization": 0.01,
            "iterations": 100,
            "seed": 0,
            "index_from": 50_000,  # as ALS's
            "index_probes": 192,
        }

    def _model(self, iterations: int):
        from implicit.bpr import BayesianPersonalizedRanking

        p = self.params
        return BayesianPersonalizedRanking(
            factors=p["factors"],
            learning_rate=p["learning_rate"],
            regularization=p["regularization"],
            iterations=iterations,
            random_state=p["seed"],
            use_gpu=False,
        )

    def _start_users(self, users: np.ndarray) -> np.ndarray:
        users[:, -1] = 1.0  # BPR's user factors end in the constant its item bias pairs with
        return users

    def fold_in(self, history: np.ndarray) -> np.ndarray:
        """BPR has no closed-form user step: fit a ridge user vector that scores the history
        items at 1 (the last item factor is the bias, paired with a fixed user 1)."""
        v = self.item_factors[np.unique(history)].astype(np.float64)
        x, bias = v[:, :-1], v[:, -1]
        lhs = x.T @ x + 0.1 * np.eye(x.shape[1])
        u = np.linalg.solve(lhs, x.T @ (1.0 - bias))
        return np.append(u, 1.0).astype(np.float32)

    def item_fold_in(self, users: np.ndarray) -> np.ndarray:
        """Ridge item vector (bias included: user factors end in a constant 1) that scores
        the item, for each of its users, as high as that user's top-scored items (BPR scores
        have no fixed scale, so the target is taken from the model itself)."""
        x = self.user_factors[np.unique(users)].astype(np.float64)
        known = self.item_factors[~np.isnan(self.item_factors).any(axis=1)]
        target = np.quantile(x @ known.T.astype(np.float64), 0.95, axis=1)
        lhs = x.T @ x + 0.1 * np.eye(x.shape[1])
        return np.linalg.solve(lhs, x.T @ target).astype(np.float32)


class ItemKNN(SparseRows, Retriever):
    """Item-kNN: the user's items vote with their `neighbours` most similar items
    (`similarity`: cosine or BM25-weighted)."""

    kind = "item_knn"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"similarity": "bm25", "neighbours": 100, "k1": 1.2, "b": 0.75}

    def fit(self, data: FitData) -> Self:
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender
        from implicit.utils import ParameterWarning

        p = self.params
        if p["similarity"] == "bm25":
            model = BM25Recommender(K=p["neighbours"], K1=p["k1"], B=p["b"])
        elif p["similarity"] == "cosine":
            model = CosineRecommender(K=p["neighbours"])
        else:
            raise ValueError(f"similarity must be 'bm25' or 'cosine', not {p['similarity']!r}")
        with warnings.catch_warnings():  # implicit's own bm25 step hands itself a COO matrix
            warnings.simplefilter("ignore", category=ParameterWarning)
            model.fit(data.matrix.to_scipy(), show_progress=False)
        self.similarity = sp.csr_matrix(model.similarity, dtype=np.float32)
        self._fitted(data)
        return self

    def rows(self, history: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        h = history[history < self.similarity.shape[0]]
        return self.similarity, h, np.ones(len(h), np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return csr_state(self.similarity)

    def set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.similarity = csr_from_state(arrays)
