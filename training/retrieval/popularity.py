"""Popularity: overall, within a recent window, and within the user's segments."""

from __future__ import annotations

from typing import Any, Self

import numpy as np

from training.retrieval.base import Retriever
from training.retrieval.data import FitData


class MostPopular(Retriever):
    """Items by how often they were interacted with, optionally only in the last
    `window_days` before the newest interaction (recent popularity)."""

    kind = "most_popular"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"window_days": None}

    def fit(self, data: FitData) -> Self:
        items, times = data.seq_items, data.seq_times
        if self.params["window_days"] is not None and len(times):
            items = items[times >= times.max() - self.params["window_days"] * 86400]
        self.counts = np.bincount(items, minlength=data.n_items).astype(np.float32)
        self._fitted(data)
        return self

    def score(self, user: int | None, history: np.ndarray) -> np.ndarray:
        return np.log1p(self.counts)

    def partial_fit_items(self, n_items: int, texts: list[str] | None = None) -> None:
        if n_items > len(self.counts):
            self.counts = np.concatenate(
                [self.counts, np.zeros(n_items - len(self.counts), np.float32)]
            )
        super().partial_fit_items(n_items, texts)

    def record(self, items: np.ndarray) -> None:
        """Count new interactions (nearline updates)."""
        np.add.at(self.counts, items, 1.0)

    def state(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts}

    def set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.counts = arrays["counts"]


class SegmentPopular(Retriever):
    """Popularity among users who share the user's attributes (age band, gender, occupation).

    Score = mean over attributes of log P(item | attribute value), each smoothed towards the
    overall distribution with `smoothing` pseudo-interactions. Users without attributes (new
    or unknown) get overall popularity.
    """

    kind = "segment_popular"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"smoothing": 50.0}

    def fit(self, data: FitData) -> Self:
        users = data.seq_users()
        items = data.seq_items
        overall = np.bincount(items, minlength=data.n_items).astype(np.float64)
        self.overall = (overall / max(overall.sum(), 1.0)).astype(np.float32)
        beta = self.params["smoothing"]
        self.tables: dict[str, np.ndarray] = {}
        self.codes: dict[str, np.ndarray] = {}
        for attr, codes in data.user_segments.items():
            n_codes = int(codes.max()) + 1 if len(codes) else 0
            c = codes[users]
            ok = c >= 0
            counts = np.zeros((n_codes, data.n_items), dtype=np.float64)
            np.add.at(counts, (c[ok], items[ok]), 1.0)
            probs = (counts + beta * self.overall) / (counts.sum(1, keepdims=True) + beta)
            self.tables[attr] = np.log(probs).astype(np.float32)
            self.codes[attr] = codes
        self._fitted(data)
        return self

    def score(self, user: int | None, history: np.ndarray) -> np.ndarray:
        parts = []
        if user is not None:
            for attr, table in self.tables.items():
                codes = self.codes[attr]
                if 0 <= user < len(codes) and codes[user] >= 0:
                    parts.append(table[codes[user]])
        if not parts:
            return np.log(self.overall + 1e-12).astype(np.float32)
        return np.mean(parts, axis=0).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        out = {"overall": self.overall}
        for attr in self.tables:
            out[f"table__{attr}"] = self.tables[attr]
            out[f"codes__{attr}"] = self.codes[attr]
        return out

    def set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.overall = arrays["overall"]
        self.tables = {k[7:]: v for k, v in arrays.items() if k.startswith("table__")}
        self.codes = {k[7:]: v for k, v in arrays.items() if k.startswith("codes__")}
