"""An inverted-file index over item vectors: a request scores the items of the few clusters
nearest its query instead of the whole catalogue (k-means lists, as faiss's IVF does), plus
the moments that give the mean and spread of the query's scores over every item exactly.

At 200,000 items of 384 dimensions an exact product reads 300 MB per request (about 21 ms
of one core here); probing 48 of 1,777 lists reads under 3% of it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from training.retrieval.fusion import top_list
from training.retrieval.views import SourceView

#: prefix of the index's arrays in a retriever's saved state
INDEX_PREFIX = "index_"
#: k-means iterations on the training sample, and that sample's size per list
ITERATIONS = 10
SAMPLE_PER_LIST = 40
#: a request that bans more than this share of the items (a narrow category filter) scores
#: every item: correcting the moments for what it bans would cost as much
MAX_BANNED_SHARE = 0.05


def list_count(n_items: int) -> int:
    """Lists for `n_items` vectors: 4 sqrt(n), the low end of faiss's advice."""
    return max(1, round(4 * float(np.sqrt(n_items))))


def _assign(vectors: np.ndarray, centroids: np.ndarray, chunk: int = 16_384) -> np.ndarray:
    """The nearest centroid (L2) of each vector, a chunk at a time (no n x lists matrix)."""
    half_norms = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
    out = np.empty(len(vectors), dtype=np.int32)
    for start in range(0, len(vectors), chunk):
        block = vectors[start : start + chunk]
        out[start : start + chunk] = np.argmax(block @ centroids.T - half_norms, axis=1)
    return out


def kmeans(vectors: np.ndarray, lists: int, seed: int = 0) -> np.ndarray:
    """Centroids of `lists` clusters, trained on a sample of the vectors (Lloyd's steps)."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    n = len(vectors)
    sample = vectors[rng.choice(n, min(n, lists * SAMPLE_PER_LIST), replace=False)]
    centroids = sample[rng.choice(len(sample), lists, replace=False)].copy()
    for _ in range(ITERATIONS):
        near = _assign(sample, centroids)
        members = sp.csr_matrix(
            (np.ones(len(near), np.float32), (near, np.arange(len(near)))), (lists, len(near))
        )
        counts = np.bincount(near, minlength=lists)
        empty = counts == 0  # reseeded from random sample points
        centroids = np.asarray(members @ sample / np.maximum(counts, 1)[:, None], np.float32)
        centroids[empty] = sample[rng.choice(len(sample), int(empty.sum()), replace=False)]
    return centroids


@dataclass
class ItemIndex:
    centroids: np.ndarray  # lists x d, float32
    #: item ids grouped by list; list c holds order[bounds[c]:bounds[c + 1]]
    order: np.ndarray
    bounds: np.ndarray
    #: sum of the indexed vectors and of their outer products (float64): the moments
    total: np.ndarray
    second: np.ndarray

    @property
    def n_indexed(self) -> int:
        return len(self.order)

    @classmethod
    def over(cls, vectors: np.ndarray, index_from: int, seed: int = 0) -> ItemIndex | None:
        """The index a model keeps over `vectors`: from `index_from` rows (0: never), where
        every row is finite; None otherwise."""
        if not index_from or len(vectors) < index_from or not np.isfinite(vectors).all():
            return None
        return cls.build(vectors, seed)

    @classmethod
    def build(cls, vectors: np.ndarray, seed: int = 0) -> ItemIndex:
        """k-means lists of the vectors; a query probes the lists whose centroids score
        highest against it. (Lifting the vectors so that L2 neighbours are the largest
        products, after Bachrach et al. 2014, measured no better at 200,000 items and made
        ALS's lists lopsided: docs/BENCHMARKS.md, "Item indexes".)"""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        centroids = kmeans(vectors, min(list_count(len(vectors)), len(vectors)), seed)
        near = _assign(vectors, centroids)
        order = np.argsort(near, kind="stable").astype(np.int32)
        bounds = np.searchsorted(near[order], np.arange(len(centroids) + 1)).astype(np.int64)
        return cls(
            centroids,
            order,
            bounds,
            vectors.sum(axis=0, dtype=np.float64),
            vectors.T.astype(np.float64) @ vectors.astype(np.float64),
        )

    def probe(self, query: np.ndarray, probes: int) -> np.ndarray:
        """Item ids of the `probes` lists whose centroids score highest against `query`."""
        near = self.centroids @ query
        probes = min(probes, len(near))
        chosen = np.argpartition(-near, probes - 1)[:probes] if probes < len(near) else None
        chosen = np.arange(len(near)) if chosen is None else chosen
        return np.concatenate([self.order[self.bounds[c] : self.bounds[c + 1]] for c in chosen])

    def moments(self, query: np.ndarray) -> tuple[float, float]:
        """Sum of `query`'s scores over the indexed items, and of their squares: exact."""
        q = np.asarray(query, dtype=np.float64)
        return float(self.total @ q), float(q @ self.second @ q)

    def view(
        self,
        vectors: np.ndarray,
        query: np.ndarray,
        banned: np.ndarray,
        depth: int,
        probes: int,
        scores_at: Callable[[np.ndarray], np.ndarray],
    ) -> SourceView | None:
        """A request's view of the scores `vectors @ query`: the items of the probed lists
        and of the rows added since the build (`vectors` beyond the indexed ones, scored
        one by one) ranked exactly, the mean and spread of every finite score over the
        items not `banned` from the moments; None where too many items are banned.
        Non-finite scores (rows of items without factors yet) are unscorable."""
        n = len(vectors)
        if len(banned) < n:  # rows beyond the request's catalogue are not recommendable
            banned = np.concatenate([banned, np.ones(n - len(banned), dtype=bool)])
        banned = np.asarray(banned[:n], dtype=bool)
        out = np.flatnonzero(banned)
        if len(out) > MAX_BANNED_SHARE * n:
            return None
        tail = np.arange(self.n_indexed, n)
        total, squares = self.moments(query)
        count = float(self.n_indexed)
        for extra, sign in ((tail, 1.0), (out, -1.0)):
            s = (vectors[extra] @ query).astype(np.float64)
            s = s[np.isfinite(s)]
            total, squares = total + sign * s.sum(), squares + sign * (s @ s)
            count += sign * len(s)
        count = max(count, 1.0)
        mean = total / count
        std = float(np.sqrt(max(squares / count - mean * mean, 0.0))) + 1e-9
        cand = np.concatenate([self.probe(query, probes), tail])
        scores = vectors[cand] @ query
        scores = np.where(banned[cand] | ~np.isfinite(scores), -np.inf, scores)
        return SourceView(cand[top_list(scores, depth)].astype(np.int64), mean, std, scores_at)

    def state(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            f"{prefix}centroids": self.centroids,
            f"{prefix}order": self.order,
            f"{prefix}bounds": self.bounds,
            f"{prefix}total": self.total,
            f"{prefix}second": self.second,
        }

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], prefix: str) -> ItemIndex | None:
        if f"{prefix}centroids" not in arrays:
            return None
        return cls(*(arrays[f"{prefix}{k}"] for k in cls.__dataclass_fields__))
