"""Popularity: overall, within a recent window, and within the user's segments."""

from __future__ import annotations

from typing import Any, Self

import numpy as np

from training.retrieval.base import Retriever
from training.retrieval.data import FitData, segment_code


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
        self.labels: dict[str, list[str]] = {}
        for attr, codes in data.user_segments.items():
            labels = data.segment_labels.get(attr) or []
            n_codes = max(int(codes.max()) + 1 if len(codes) else 0, len(labels))
            c = codes[users]
            ok = c >= 0
            counts = np.zeros((n_codes, data.n_items), dtype=np.float64)
            np.add.at(counts, (c[ok], items[ok]), 1.0)
            probs = (counts + beta * self.overall) / (counts.sum(1, keepdims=True) + beta)
            self.tables[attr] = np.log(probs).astype(np.float32)
            self.codes[attr] = codes
            self.labels[attr] = labels or [str(k) for k in range(n_codes)]
        self._fitted(data)
        return self

    def user_codes(self, user: int | None) -> dict[str, int]:
        """The known segments of a user the model was fitted with."""
        if user is None:
            return {}
        return {
            attr: int(codes[user])
            for attr, codes in self.codes.items()
            if 0 <= user < len(codes) and codes[user] >= 0
        }

    def encode(self, attributes: dict[str, Any], strict: bool = True) -> dict[str, int]:
        """Segment codes from stated attributes (`{"age": 31, "occupation": "writer"}`).
        strict: a ValueError naming the attribute to fix; else unknown ones are skipped."""
        out = {}
        for attr, value in attributes.items():
            if attr not in self.tables:
                if strict:
                    raise ValueError(
                        f"{attr}: not a user attribute here; known: {sorted(self.tables)}"
                    )
                continue
            try:
                code = segment_code(attr, value, self.labels[attr])
            except ValueError:
                if strict:
                    raise
                continue
            if code < 0 and strict:
                raise ValueError(f"{attr}: {value!r} is not one of {self.labels[attr]}")
            if code >= 0:
                out[attr] = code
        return out

    def score_codes(self, codes: dict[str, int]) -> np.ndarray:
        parts = [self.tables[a][c] for a, c in codes.items() if a in self.tables]
        if not parts:
            return np.log(self.overall + 1e-12).astype(np.float32)
        return np.mean(parts, axis=0).astype(np.float32)

    def score(self, user: int | None, history: np.ndarray) -> np.ndarray:
        return self.score_codes(self.user_codes(user))

    def top_segment(self, codes: dict[str, int], items: np.ndarray) -> list[tuple[str, str] | None]:
        """Per item, the user's segment that lifts it most above overall popularity (the
        segment an explanation names), as (attribute, readable value); None: no segment
        lifts it."""
        attrs = [a for a in codes if a in self.tables]
        items = np.asarray(items)
        known = items < len(self.overall)  # items added after the fit have no counts
        if not attrs or not len(items):
            return [None] * len(items)
        at = np.where(known, items, 0)
        base = np.log(self.overall[at] + 1e-12)
        lifts = np.stack([self.tables[a][codes[a]][at] - base for a in attrs])
        best = lifts.argmax(axis=0)
        return [
            (attrs[b], self.labels[attrs[b]][codes[attrs[b]]])
            if known[j] and lifts[b, j] > 0
            else None
            for j, b in enumerate(best)
        ]

    def state(self) -> dict[str, np.ndarray]:
        out = {"overall": self.overall}
        for attr in self.tables:
            out[f"table__{attr}"] = self.tables[attr]
            out[f"codes__{attr}"] = self.codes[attr]
            out[f"labels__{attr}"] = np.array(self.labels[attr], dtype=np.str_)
        return out

    def set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.overall = arrays["overall"]
        self.tables = {k[7:]: v for k, v in arrays.items() if k.startswith("table__")}
        self.codes = {k[7:]: v for k, v in arrays.items() if k.startswith("codes__")}
        self.labels = {
            a: [str(x) for x in arrays[f"labels__{a}"]]
            if f"labels__{a}" in arrays
            else [str(k) for k in range(len(t))]  # saved before labels were kept
            for a, t in self.tables.items()
        }
