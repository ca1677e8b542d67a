"""The retriever contract, after `implicit`'s: fit, recommend, similar_items, incremental
updates, and save/load as plain arrays + JSON.

Every retriever scores all items densely (`score`), which keeps each model a few lines of
numpy and makes fusion and evaluation uniform. Items a model cannot score get -inf.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np

from pipelines.errors import ArtifactError, LlmrecError
from training.retrieval.data import FitData

if TYPE_CHECKING:
    from training.retrieval.views import SourceView

MAX_N = 10_000
FORMAT_VERSION = 1


class RetrievalError(LlmrecError):
    """A retrieval request that cannot be served as asked (e.g. n out of range)."""


@dataclass
class Recommendation:
    items: np.ndarray
    scores: np.ndarray
    #: history entries that were not known item ids, dropped before scoring
    ignored_history: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)


def check_n(n: int) -> int:
    if not isinstance(n, int | np.integer) or isinstance(n, bool):
        raise RetrievalError(f"n must be an integer, not {type(n).__name__}")
    if n < 1 or n > MAX_N:
        raise RetrievalError(f"n must be between 1 and {MAX_N}, got {n}")
    return int(n)


def clean_history(history: Any, n_items: int) -> tuple[np.ndarray, int]:
    """Known item ids of `history` in order, and how many entries were dropped."""
    h = np.asarray(history if history is not None else [], dtype=np.int64).reshape(-1)
    ok = (h >= 0) & (h < n_items)
    return h[ok].astype(np.int32), int((~ok).sum())


def pad_to(scores: np.ndarray, n_items: int, fill: float = -np.inf) -> np.ndarray:
    """Scores for `n_items` items: items a model has not been grown for get `fill`."""
    if len(scores) >= n_items:
        return scores
    return np.concatenate([scores, np.full(n_items - len(scores), fill, dtype=scores.dtype)])


def csr_row_sum(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    rows: np.ndarray,
    weights: np.ndarray,
    n_cols: int,
) -> np.ndarray:
    """sum_k weights[k] * row(rows[k]) of a CSR matrix, densely: one gather and one bincount
    (scipy's row indexing costs more than the arithmetic at these sizes)."""
    flat, w = _row_entries(indptr, data, rows, weights)
    if not len(flat):
        return np.zeros(n_cols, dtype=np.float32)
    return np.bincount(indices[flat], weights=w, minlength=n_cols).astype(np.float32)


def _row_entries(
    indptr: np.ndarray, data: np.ndarray, rows: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Positions in a CSR matrix's arrays of every entry of `rows`, row after row, and each
    entry's weighted value (float64)."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = indptr[rows]
    lengths = indptr[rows + 1] - starts
    flat = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    return flat, np.repeat(np.asarray(weights, dtype=np.float64), lengths) * data[flat]


def sparse_scores(m, rows: np.ndarray, weights: np.ndarray, n_items: int) -> np.ndarray:
    """Weighted sum of item-item CSR rows as scores; items no row reaches are -inf."""
    out = pad_to(csr_row_sum(m.indptr, m.indices, m.data, rows, weights, m.shape[1]), n_items, 0.0)
    out[out <= 0] = -np.inf
    return out


def sparse_scores_at(m, rows: np.ndarray, weights: np.ndarray, items: np.ndarray) -> np.ndarray:
    """`sparse_scores` at `items` only, from the chosen rows' entries alone: the cost follows
    the rows' lengths, not the catalogue (an explanation scores a handful of candidates for
    several histories). The same sums, in the same order, as the dense version."""
    uniq, back = np.unique(np.asarray(items, dtype=np.int64), return_inverse=True)
    flat, w = _row_entries(m.indptr, m.data, rows, weights)
    sums = np.zeros(len(uniq))
    if len(flat) and len(uniq):
        cols = m.indices[flat]
        at = np.minimum(np.searchsorted(uniq, cols), len(uniq) - 1)
        hit = uniq[at] == cols
        sums = np.bincount(at[hit], weights=w[hit], minlength=len(uniq))
    out = sums.astype(np.float32)[back]
    out[out <= 0] = -np.inf
    return out


class SparseRows:
    """For a retriever whose scores sum item-item CSR rows that the history picks: scored
    over the catalogue (`score`) or over those rows' entries alone (`score_items`)."""

    n_items: int

    def rows(self, history: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray]:
        """(CSR matrix, rows, weight of each row) of `history`."""
        raise NotImplementedError

    def score(self, user: int | None, history: np.ndarray) -> np.ndarray:
        return sparse_scores(*self.rows(history), self.n_items)

    def score_items(self, user: int | None, history: np.ndarray, items: np.ndarray) -> np.ndarray:
        return sparse_scores_at(*self.rows(history), items)

    def search(
        self, user: int | None, history: np.ndarray, banned: np.ndarray, depth: int
    ) -> SourceView:
        """The view of the items the history rows reach, the only scorable ones: exact, and
        ranked and summarised over those items instead of the catalogue. (One bincount over
        the columns still finds them: a sort of the rows' entries costs more at 200,000
        items, where a co-occurrence row holds thousands.)"""
        from training.retrieval.views import sparse_view

        m, rows, weights = self.rows(history)
        sums = csr_row_sum(m.indptr, m.indices, m.data, rows, weights, m.shape[1])
        sums = sums[: len(banned)]
        items = np.flatnonzero((sums > 0) & ~banned[: len(sums)])
        return sparse_view(items, sums[items], depth)


def csr_state(m) -> dict[str, np.ndarray]:
    """A scipy CSR matrix as plain arrays for `Retriever.state`."""
    return {"indptr": m.indptr, "indices": m.indices, "data": m.data, "shape": np.asarray(m.shape)}


def csr_from_state(arrays: dict[str, np.ndarray]):
    import scipy.sparse as sp

    shape = tuple(int(x) for x in arrays["shape"])
    return sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]), shape)


def top_n(scores: np.ndarray, n: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of the n best finite scores, best first; ties go to the lower item id."""
    s = scores.astype(np.float64, copy=True)
    if exclude is not None and len(exclude):
        s[exclude] = -np.inf
    finite = np.flatnonzero(np.isfinite(s))
    if len(finite) == 0:
        return np.zeros(0, dtype=np.int32)
    n = min(n, len(finite))
    cand = finite
    if n < len(finite):
        # Of items tied at the cut-off the lower ids make it, whatever else the array holds
        # (a partition alone picks among them by position: a request's candidate union and
        # the whole catalogue would then keep different items).
        neg = -s[finite]
        kth = np.partition(neg, n - 1)[n - 1]
        better = finite[neg < kth]
        cand = np.concatenate([better, finite[neg == kth][: n - len(better)]])
    order = np.lexsort((cand, -s[cand]))
    return cand[order].astype(np.int32)


class Retriever(ABC):
    """Base class: subclasses implement `fit`, `score`, and their array state."""

    kind: ClassVar[str]
    #: how the last fit trained, where the model chose (SASRec's softmax); None: nothing to say
    fit_info: dict[str, Any] | None = None

    def __init__(self, **params: Any):
        self.params = self.default_params() | params
        unknown = set(params) - set(self.default_params())
        if unknown:
            raise RetrievalError(f"{self.kind}: unknown parameter(s) {sorted(unknown)}")
        self.n_items = 0
        self.dataset_version = ""

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {}

    # -- fitting ---------------------------------------------------------------------------
    @abstractmethod
    def fit(self, data: FitData) -> Self:
        """Learn from `data`; returns self."""

    def warm_fit(
        self,
        data: FitData,
        previous: Retriever,
        item_map: np.ndarray,
        share: float,
        user_map: np.ndarray | None = None,
    ) -> Self:
        """Learn from `data` starting from `previous` (the same kind, fitted on older data),
        spending about `share` of a full fit where the model can start warm. `item_map[i]`
        is item i's index in `previous` (-1: new); `user_map[u]` user u's (None: unknown,
        so models with per-user state refit). Models that fit in seconds refit."""
        return self.fit(data)

    def _fitted(self, data: FitData) -> None:
        self.n_items = data.n_items
        self.dataset_version = data.dataset_version

    def partial_fit_users(self, users: np.ndarray, histories: list[np.ndarray]) -> None:
        """Refresh per-user state after their histories changed (no-op when stateless)."""
        return None

    def partial_fit_items(self, n_items: int, texts: list[str] | None = None) -> None:
        """Grow to `n_items` items; new items get no score until a model can place them."""
        self.n_items = max(self.n_items, n_items)

    # -- scoring ---------------------------------------------------------------------------
    @abstractmethod
    def score(self, user: int | None, history: np.ndarray) -> np.ndarray:
        """float32 scores for every item (-inf where the model has nothing to say).

        `user` may be None or unknown: history-based models then use `history` alone.
        """

    def score_rows(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        """`score` of several users at once: one float32 row per user, over `n_items`.

        What a fit scores a chunk of users with (the fusion's training rows). Models whose
        score is a product with an item matrix override it with one matrix product; the
        rows equal `score`'s up to float32 rounding."""
        out = np.empty((len(users), self.n_items), dtype=np.float32)
        for i, (user, history) in enumerate(zip(users, histories, strict=True)):
            out[i] = pad_to(self.score(int(user), history), self.n_items)
        return out

    def score_items(self, user: int | None, history: np.ndarray, items: np.ndarray) -> np.ndarray:
        """`score(user, history)` at `items` only (-inf for items beyond the model). Models
        whose full score is a dense pass over the catalogue compute just these rows: what
        an explanation needs for a handful of candidates at any catalogue size."""
        items = np.asarray(items, dtype=np.int64)
        return pad_to(self.score(user, history), int(items.max(initial=-1)) + 1)[items]

    def search(
        self, user: int | None, history: np.ndarray, banned: np.ndarray, depth: int
    ) -> SourceView | None:
        """This source's `SourceView` for a request from an index over the items, without
        scoring the whole catalogue (`banned`: items that may not be recommended); None
        where the source has no index, and the request scores every item (`score`)."""
        return None

    def recommend(
        self,
        user: int | None,
        history: Any,
        n: int = 10,
        exclude: Any = None,
        filter_history: bool = True,
    ) -> Recommendation:
        """The n best items for a user, without their history and `exclude` (item ids)."""
        n = check_n(n)
        hist, ignored = clean_history(history, self.n_items)
        scores = self.score(user, hist)
        drop = [hist] if filter_history else []
        if exclude is not None:
            drop.append(clean_history(exclude, self.n_items)[0])
        excl = np.concatenate(drop) if drop else None
        items = top_n(scores, n, excl)
        return Recommendation(items, scores[items].astype(np.float32), ignored)

    def similar_items(self, item: int, n: int = 10) -> Recommendation:
        """Items most similar to `item` (itself excluded): its one-item-history scores."""
        n = check_n(n)
        if not 0 <= item < self.n_items:
            raise RetrievalError(f"unknown item {item}: ids run from 0 to {self.n_items - 1}")
        scores = self.score(None, np.array([item], dtype=np.int32))
        items = top_n(scores, n, np.array([item]))
        return Recommendation(items, scores[items].astype(np.float32))

    # -- persistence -----------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """Arrays that, with the params, restore the fitted model."""
        return {}

    def set_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Inverse of `state`."""
        return None

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "arrays.npz", **self.state())
        meta = {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "params": self.params,
            "n_items": self.n_items,
            "dataset_version": self.dataset_version,
        }
        (folder / "retriever.json").write_text(json.dumps(meta, indent=2, sort_keys=True))

    @classmethod
    def load(cls, folder: str | Path, expected_dataset_version: str | None = None) -> Retriever:
        from training.retrieval import RETRIEVERS

        folder = Path(folder)
        meta_path = folder / "retriever.json"
        if not meta_path.exists():
            raise ArtifactError(f"no retriever at '{folder}' (retriever.json missing)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"retriever at '{folder}' has format {meta.get('format_version')}, this llmrec "
                f"reads {FORMAT_VERSION}; refit it"
            )
        kind = meta.get("kind")
        klass = RETRIEVERS.get(kind)
        if klass is None or (cls is not Retriever and klass is not cls):
            raise ArtifactError(f"'{folder}' holds a '{kind}' retriever, not a {cls.kind}")
        if expected_dataset_version and meta["dataset_version"] != expected_dataset_version:
            raise ArtifactError(
                f"retriever at '{folder}' was fitted on dataset version "
                f"{meta['dataset_version']}, not {expected_dataset_version}; refit it"
            )
        model = klass(**meta["params"])
        model.n_items = meta["n_items"]
        model.dataset_version = meta["dataset_version"]
        with np.load(folder / "arrays.npz", allow_pickle=False) as z:
            model.set_state({k: z[k] for k in z.files})
        return model
