"""Popularity: overall, within a recent window, and within the user's segments."""

from __future__ import annotations

from typing import Any, Self

import numpy as np

from training.retrieval.base import Retriever, pad_to
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

    def score_rows(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        return np.tile(pad_to(self.score(None, np.zeros(0)), self.n_items), (len(users), 1))

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

    Each user's first `max_items_per_user` distinct items count (`earliest_items`; None:
    every interaction): a sign-up's first items look like other users' first items far more
    than like their later ones. With `epsilon` set (the default), the counts are released
    with user-level differential privacy (`private_counts`): the overall and per-segment
    histograms and each segment's user count get calibrated Gaussian noise for (`epsilon`,
    `delta`), noisy counts under `noise_floor` sigmas count as zero, and a segment whose
    noisy user count is below `min_users` is withheld (its users get the overall
    distribution, and no explanation names it). `fit_info` records the release.
    """

    kind = "segment_popular"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {
            "smoothing": 50.0,
            # User-level (epsilon, delta)-DP by default; None: no noise (docs/PRIVACY.md;
            # the utility cost is in docs/BENCHMARKS.md, Privacy).
            "epsilon": 8.0,
            "delta": 1e-5,
            "max_items_per_user": 20,
            "min_users": 20,
            "noise_floor": 2.0,
            "earliest_items": True,
            "seed": None,
        }

    def fit(self, data: FitData) -> Self:
        from training.retrieval.private_counts import (
            distinct_per_user,
            histograms,
            noisy,
            plan_release,
        )

        p = self.params
        users, items = data.seq_users(), data.seq_items
        segments = data.user_segments
        labels = {a: data.segment_labels.get(a) or [] for a in segments}
        n_codes = {
            a: max(int(c.max()) + 1 if len(c) else 0, len(labels[a])) for a, c in segments.items()
        }
        release, cap = None, p["max_items_per_user"]
        if p["epsilon"] is not None and cap is None:
            raise ValueError("epsilon needs max_items_per_user: the bound on one user's counts")
        if cap is not None:
            # Each user's first items: what a sign-up's first items look like (and, for the
            # private release, the bound on one user's influence).
            keep = distinct_per_user(users, items, cap, earliest=p["earliest_items"])
            users, items = users[keep], items[keep]
        if p["epsilon"] is not None:
            release = plan_release(
                p["epsilon"], p["delta"], p["max_items_per_user"], len(segments), p["min_users"]
            )
        counts = histograms(users, items, segments, data.n_items, n_codes)
        small = {a: np.zeros(n, dtype=bool) for a, n in n_codes.items()}
        if release is not None:
            rng = np.random.default_rng(p["seed"])
            counts = {k: noisy(v, release.sigma, rng) for k, v in counts.items()}
            # Post-processing (no budget): a noisy count within `noise_floor` sigmas of zero
            # is mostly noise; over thousands of unseen items those would outweigh a
            # segment's real interactions, so they count as zero.
            floor = p["noise_floor"] * release.sigma
            for k in counts:
                if not k.endswith("__users"):
                    counts[k][counts[k] < floor] = 0.0
            small = {a: counts[f"{a}__users"] < release.min_users for a in segments}
        overall = counts["overall"]
        self.overall = (overall / max(overall.sum(), 1.0)).astype(np.float32)
        beta = p["smoothing"]
        self.tables: dict[str, np.ndarray] = {}
        self.codes: dict[str, np.ndarray] = {}
        self.labels: dict[str, list[str]] = {}
        self.withheld = small
        for attr, codes in segments.items():
            table = counts[attr]
            table[small[attr]] = 0.0  # a withheld segment: the overall distribution instead
            probs = (table + beta * self.overall) / (table.sum(1, keepdims=True) + beta)
            # An item no counted user chose has probability 0: the same floor as the
            # overall scores (`score_codes`), so it ranks last instead of at -inf.
            self.tables[attr] = np.log(probs + 1e-12).astype(np.float32)
            self.codes[attr] = codes
            self.labels[attr] = labels[attr] or [str(k) for k in range(n_codes[attr])]
        if release is not None:
            withheld = {a: [self.labels[a][k] for k in np.flatnonzero(small[a])] for a in segments}
            self.fit_info = {"privacy": release.to_json(), "segments_withheld": withheld}
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
        # A segment withheld by the privacy floor is never named, whatever rounding says.
        lifts = np.stack(
            [
                self.tables[a][codes[a]][at] - base
                if not self.is_withheld(a, codes[a])
                else np.full(len(at), -np.inf)
                for a in attrs
            ]
        )
        best = lifts.argmax(axis=0)
        return [
            (attrs[b], self.labels[attrs[b]][codes[attrs[b]]])
            if known[j] and lifts[b, j] > 0
            else None
            for j, b in enumerate(best)
        ]

    @property
    def counts_first_items(self) -> bool:
        """Whether the counts are each user's first items (a bounded contribution, the
        privately released histogram by default) rather than every interaction."""
        return self.params.get("max_items_per_user") is not None

    def is_withheld(self, attr: str, code: int) -> bool:
        w = getattr(self, "withheld", {}).get(attr)
        return w is not None and 0 <= code < len(w) and bool(w[code])

    def state(self) -> dict[str, np.ndarray]:
        out = {"overall": self.overall}
        for attr in self.tables:
            out[f"table__{attr}"] = self.tables[attr]
            out[f"codes__{attr}"] = self.codes[attr]
            out[f"labels__{attr}"] = np.array(self.labels[attr], dtype=np.str_)
            out[f"withheld__{attr}"] = self.withheld[attr]
        return out

    def set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.overall = arrays["overall"]
        self.tables = {k[7:]: v for k, v in arrays.items() if k.startswith("table__")}
        self.codes = {k[7:]: v for k, v in arrays.items() if k.startswith("codes__")}
        self.withheld = {k[10:]: v for k, v in arrays.items() if k.startswith("withheld__")}
        self.labels = {
            a: [str(x) for x in arrays[f"labels__{a}"]]
            if f"labels__{a}" in arrays
            else [str(k) for k in range(len(t))]  # saved before labels were kept
            for a, t in self.tables.items()
        }
