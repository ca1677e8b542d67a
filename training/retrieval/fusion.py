"""Weighted reciprocal-rank fusion of several retrievers' scores into one candidate list."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from training.retrieval.base import top_n


def ranked_lists(scores: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's top `depth` items best first and their scores (rows x depth): ties go to the
    lower item id, at the depth cut-off too; unscorable (-inf, NaN) entries last. `scores`
    is 2-D, one row per user, and is not modified."""
    s = np.ascontiguousarray(scores)
    if not s.flags.writeable:  # torch wants a writable array
        s = s.copy()
    nan = np.isnan(s)
    if nan.any():  # never ranked, and never in the way of a ranked item
        s = np.where(nan, -np.inf, s)
    n_rows, n_items = s.shape
    d = min(depth, n_items)
    # torch's top-k: one pass per row, 5-30x numpy's argpartition on a fusion chunk (100
    # rows x 200,000 items: 18 against 110-540 ms, the most on a popularity source's ties).
    cand = (
        torch.topk(torch.from_numpy(s), d, dim=1, sorted=False).indices.numpy()
        if d < n_items
        else np.tile(np.arange(n_items), (n_rows, 1))
    )
    vals = np.take_along_axis(s, cand, axis=1)
    if d < n_items:
        _lower_ids_at_the_cut(s, cand, vals)
    order = np.lexsort((cand, -vals), axis=-1)  # best first, ties to the lower id; -inf last
    return np.take_along_axis(cand, order, axis=1), np.take_along_axis(vals, order, axis=1)


def _lower_ids_at_the_cut(s: np.ndarray, cand: np.ndarray, vals: np.ndarray) -> None:
    """Where more items tie at a row's cut-off score than the cut keeps, keep the lowest
    ids among them (in place): top-k picks among ties by position, so the same scores over
    the catalogue and over a source's own few items would keep different items."""
    for i in range(len(s)):
        kth = vals[i].min()
        if not np.isfinite(kth):
            continue
        at_cut = vals[i] == kth
        tied = np.flatnonzero(s[i] == kth)
        if len(tied) > at_cut.sum():
            cand[i, at_cut] = tied[: at_cut.sum()]


def top_list(scores: np.ndarray, depth: int) -> np.ndarray:
    """One source's ranked list for one user: its top `depth` items with a finite score,
    best first, as `source_ranks` ranks them."""
    cand, vals = ranked_lists(np.atleast_2d(scores), depth)
    return cand[0][np.isfinite(vals[0])]


def source_ranks(scores: np.ndarray, excluded: np.ndarray | None, depth: int) -> np.ndarray:
    """1-based rank of each item in one source's list (0 = not in its top `depth`).

    Works on one user (1-D scores) or many (2-D, one row per user). Unscorable (-inf) items
    are never ranked; ties go to the lower item id (`ranked_lists`).
    """
    s = np.atleast_2d(scores)
    if excluded is not None:
        s = s.copy()
        s[np.atleast_2d(excluded)] = -np.inf
    cand, vals = ranked_lists(s, depth)
    n_rows, n_items = s.shape
    d = cand.shape[1]
    place = np.where(np.isfinite(vals), np.arange(1, d + 1, dtype=np.int32), 0)
    ranks = np.zeros((n_rows, n_items), dtype=np.int32)
    # flat indices: put_along_axis's index arrays cost more than the writes
    flat = (cand + (np.arange(n_rows) * n_items)[:, None]).ravel()
    ranks.ravel()[flat] = place.astype(np.int32).ravel()
    return ranks[0] if np.ndim(scores) == 1 else ranks


def fuse(
    ranks: Mapping[str, np.ndarray], weights: Mapping[str, float], k: float = 60.0
) -> np.ndarray:
    """sum_s weight_s / (k + rank_s) over the sources that ranked the item."""
    out = None
    for name, r in ranks.items():
        w = weights.get(name, 0.0)
        if w == 0:
            continue
        part = np.where(r > 0, w / (k + r), 0.0)
        out = part if out is None else out + part
    if out is None:
        shape = next(iter(ranks.values())).shape
        return np.zeros(shape)
    return out


#: up to this many scores (sources x rows x items), `design` standardises every source in one
#: stacked array (a request at a small catalogue: per-source numpy calls cost more than
#: the arithmetic); beyond it one source at a time (no copy of all the scores).
STACKED_CELLS = 1_000_000


def _row_stats(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each row's finite scores (keepdims; 0 and 1e-9 for an empty row).

    Summed in float64 from the scores as they are: no float64 copy of the scores is made
    (a fusion chunk at 200,000 items is 100 users x 200,000 scores a source). A source that
    scores every item takes no masked pass; otherwise the unscored entries are zeroed by
    selects and a product, not by masked reductions or masked stores (the mask of a
    transitions source is irregular: 0.11 instead of 0.16-0.19 s a chunk)."""
    finite = np.isfinite(scores)
    if finite.all():
        count = scores.shape[-1]
        mean = scores.sum(axis=-1, dtype=np.float64, keepdims=True) / count
        centred = scores - mean.astype(scores.dtype)
    else:
        count = np.maximum(np.count_nonzero(finite, axis=-1)[..., None], 1)
        centred = np.where(finite, scores, scores.dtype.type(0))
        mean = centred.sum(axis=-1, dtype=np.float64, keepdims=True) / count
        centred -= mean.astype(centred.dtype)
        centred *= finite
    var = np.einsum("...i,...i->...", centred, centred, dtype=np.float64)[..., None] / count
    return mean, np.sqrt(var) + 1e-9


class LearnedFusion:
    """A logistic regression over what each source says of an item (a "simple learned
    combination"): trained on the validation target of every user, it scores the union of
    the sources' top-`depth` lists; everything else is not a candidate.

    Features per source: 1/(5 + rank), log(rank) (log(2 * depth) when unranked) and the raw
    score standardised over all the user's recommendable items; plus the item's log
    popularity and how many sources ranked it. Positives are re-weighted to balance the classes.
    """

    def __init__(
        self,
        sources: list[str],
        depth: int = 100,
        l2: float = 1e-3,
        iterations: int = 400,
        learning_rate: float = 0.5,
    ):
        self.sources = list(sources)
        self.depth = depth
        self.l2 = l2
        self.iterations = iterations
        self.learning_rate = learning_rate
        self.mean = self.std = self.weights = None
        self.bias = 0.0

    def design(
        self,
        ranks: Mapping[str, np.ndarray],
        scores: Mapping[str, np.ndarray],
        log_popularity: np.ndarray,
        cand: np.ndarray,
    ) -> np.ndarray:
        """Feature rows for the candidate entries only (`cand` is a boolean mask).

        `scores` must hold -inf where an item may not be recommended (the history): the
        standardisation runs over each row's finite scores.
        """
        idx = np.nonzero(cand)
        row = (*idx[:-1], np.zeros_like(idx[-1]))  # the row statistic of each entry
        # Source axis first: each feature of every source is computed in one call.
        r = np.stack([ranks[n][idx] for n in self.sources])
        sv = np.stack([scores[n][idx] for n in self.sources])
        first = scores[self.sources[0]]
        if first.size * len(self.sources) <= STACKED_CELLS:
            mean, std = _row_stats(np.stack([scores[n] for n in self.sources]))
        else:  # a fusion chunk or a large catalogue: no stacked copy, each source's fast path
            stats = [_row_stats(scores[n]) for n in self.sources]
            mean, std = np.stack([m for m, _ in stats]), np.stack([d for _, d in stats])
        return self.features(
            r, sv, mean[(slice(None), *row)], std[(slice(None), *row)], log_popularity[idx[-1]]
        )

    def features(
        self,
        r: np.ndarray,
        sv: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
        log_popularity: np.ndarray,
    ) -> np.ndarray:
        """Feature rows of some entries (user, item) from what each source says of them:
        `r`, `sv` are sources x entries (rank, 0 = unranked; raw score, -inf = unscorable),
        `mean`, `std` the statistics of each entry's user's scores per source (broadcast
        against `sv`), `log_popularity` per entry. What `design` computes from dense arrays
        and a request computes from each source's top items (`score_entries`)."""
        r = np.asarray(r, dtype=np.float64)
        sv = np.asarray(sv, dtype=np.float64)
        finite = np.isfinite(sv)
        ranked = r > 0
        z = (np.where(finite, sv, 0.0) - mean) / std
        per_source = np.stack(
            [
                np.where(ranked, 1.0 / (5.0 + r), 0.0),
                np.log(np.where(ranked, r, 2.0 * self.depth)),
                np.where(finite, z, -3.0),
            ],
            axis=-1,
        )  # sources x entries x 3
        per_source = per_source.transpose(1, 0, 2).reshape(r.shape[-1], -1)
        extra = np.stack([log_popularity, ranked.sum(axis=0)], axis=-1)
        return np.concatenate([per_source, extra], axis=-1)

    @staticmethod
    def candidates(ranks: Mapping[str, np.ndarray]) -> np.ndarray:
        mask = None
        for r in ranks.values():
            mask = (r > 0) if mask is None else (mask | (r > 0))
        assert mask is not None
        return mask

    def fit(
        self,
        ranks: Mapping[str, np.ndarray],
        scores: Mapping[str, np.ndarray],
        log_popularity: np.ndarray,
        targets: np.ndarray,
    ) -> LearnedFusion:
        """`ranks`, `scores`: users x items per source; `targets`: one item per user."""
        return self.fit_rows(*self.training_rows(ranks, scores, log_popularity, targets))

    def training_rows(
        self,
        ranks: Mapping[str, np.ndarray],
        scores: Mapping[str, np.ndarray],
        log_popularity: np.ndarray,
        targets: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Feature rows and labels of some users' candidates: computed a chunk of users at a
        time and concatenated, they train the same fusion as one call over all the users."""
        cand = self.candidates(ranks)
        target = np.zeros(cand.shape, dtype=bool)
        target[np.arange(len(targets)), targets] = True
        return self.design(ranks, scores, log_popularity, cand), target[cand].astype(np.float64)

    def fit_rows(self, x: np.ndarray, y: np.ndarray) -> LearnedFusion:
        """Fit on feature rows and labels from `training_rows`."""
        self.mean, self.std = x.mean(0), x.std(0) + 1e-9
        # The standardised rows in float32: each step is two passes over them, memory-bound
        # at millions of rows (4M rows x 26: 0.27 s a step in float64, 0.20 in float32);
        # the weights and the loss's sums stay float64.
        x = ((x - self.mean) / self.std).astype(np.float32)
        pos = max(y.sum(), 1.0)
        sample_w = np.where(y == 1, (len(y) - pos) / pos, 1.0)
        sample_w /= sample_w.mean()
        w, b = np.zeros(x.shape[1]), 0.0
        for _ in range(self.iterations):
            p = 1.0 / (1.0 + np.exp(-(x @ w.astype(np.float32) + b)))
            g = (p - y) * sample_w
            w -= self.learning_rate * (x.T @ g.astype(np.float32) / len(y) + self.l2 * w)
            b -= self.learning_rate * g.mean()
        self.weights, self.bias = w, float(b)
        return self

    def score(
        self,
        ranks: Mapping[str, np.ndarray],
        scores: Mapping[str, np.ndarray],
        log_popularity: np.ndarray,
    ) -> np.ndarray:
        """Fused scores (same shape as a rank array); -inf outside the candidate union."""
        if self.weights is None:
            raise ValueError("LearnedFusion.score before fit")
        cand = self.candidates(ranks)
        out = np.full(cand.shape, -np.inf)
        out[cand] = self._logits(self.design(ranks, scores, log_popularity, cand))
        return out

    def _logits(self, x: np.ndarray) -> np.ndarray:
        """The fitted logistic regression's logit of each feature row."""
        return (x - self.mean) / self.std @ self.weights + self.bias

    def score_entries(
        self,
        r: np.ndarray,
        sv: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
        log_popularity: np.ndarray,
    ) -> np.ndarray:
        """Fused scores of some entries from their `features` (arguments as there): one
        request's candidate union, without an array over the catalogue."""
        if self.weights is None:
            raise ValueError("LearnedFusion.score_entries before fit")
        return self._logits(self.features(r, sv, mean, std, log_popularity))

    def to_json(self) -> dict:
        return {
            "sources": self.sources,
            "depth": self.depth,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "weights": self.weights.tolist(),
            "bias": self.bias,
        }

    @classmethod
    def from_json(cls, d: dict) -> LearnedFusion:
        f = cls(d["sources"], d["depth"])
        f.mean, f.std = np.asarray(d["mean"]), np.asarray(d["std"])
        f.weights, f.bias = np.asarray(d["weights"]), float(d["bias"])
        return f


#: The item-to-item sources `/items/{id}/similar` ranks by, where the stack has them
#: (`RetrievalStack.similar_models`): the private "also watched" release, SASRec's next
#: items after the one item (a model, no count), content similarity (item text, public).
SIMILAR_SOURCES = ("also watched", "SASRec", "content")  # by kind, whatever their names
LEGACY_SIMILAR_SOURCES = ("transitions", "item-kNN BM25", "content")


def similar_ranking(
    scores: Mapping[str, np.ndarray], item: int, k: int, depth: int = 100
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Items like `item` from each source's one-item scores: (top `k` items, their fused
    score, each source's ranks). An item's score is its best reciprocal rank in any source,
    so an item only one source can place (a new item: content) competes on equal terms;
    agreement between sources breaks ties."""
    ranks = {}
    for name, s in scores.items():
        s = s.copy()
        s[item] = -np.inf
        ranks[name] = source_ranks(s, None, depth)
    parts = [fuse({s: r}, {s: 1.0}) for s, r in ranks.items()]
    fused = np.max(parts, axis=0) + 1e-3 * np.sum(parts, axis=0)
    fused[item] = 0
    top = top_n(np.where(fused > 0, fused, -np.inf), k)
    return top, fused, ranks
