"""Content similarity: items close in text embedding space to the user's recent items."""

from __future__ import annotations

from typing import Any, Self

import numpy as np

from training.retrieval.base import Retriever
from training.retrieval.data import FitData
from training.retrieval.embeddings import TextEncoder
from training.retrieval.item_index import INDEX_PREFIX, ItemIndex
from training.retrieval.views import SourceView, empty_view, masked


class Content(Retriever):
    """Cosine similarity between item text embeddings and a recency-weighted profile of the
    user's last `recent` items. A new item is scorable as soon as its text is embedded."""

    kind = "content"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {
            "recent": 10,
            "recency_decay": 0.8,
            "model_path": None,
            # From this many items a request probes an index (`ItemIndex`) instead of
            # scoring every item (0: never); how many of its lists it probes.
            "index_from": 50_000,
            "index_probes": 48,
        }

    def __init__(self, encoder: TextEncoder | None = None, **params: Any):
        super().__init__(**params)
        self._encoder = encoder

    @property
    def encoder(self) -> TextEncoder:
        if self._encoder is None:
            self._encoder = TextEncoder(self.params["model_path"])
        return self._encoder

    _index: ItemIndex | None = None

    def fit(self, data: FitData) -> Self:
        return self.with_embeddings(self.encoder.encode(data.item_text), data)

    def with_embeddings(self, embeddings: np.ndarray, data: FitData) -> Self:
        """Fit from embeddings computed earlier (they depend on item text only)."""
        self.embeddings = embeddings.astype(np.float32)
        self._fitted(data)
        self._build_index()
        return self

    def _build_index(self) -> None:
        """The index over the embeddings, where the catalogue is large enough for one."""
        self._index = ItemIndex.over(self.embeddings, self.params["index_from"])

    def search(
        self, user: int | None, history: np.ndarray, banned: np.ndarray, depth: int
    ) -> SourceView | None:
        """The items of the index's lists nearest the user's profile, scored exactly, and
        the profile's score statistics over every item from the index's moments. Items added
        since the index was built are scored one by one. None (score every item) without
        an index, or where a request bans too many items for the moments to be corrected
        cheaply (a narrow category filter)."""
        if self._index is None:
            return None
        profile = self._profile(history)
        if profile is None:
            return empty_view()
        return self._index.view(
            self.embeddings,
            profile,
            banned,
            depth,
            self.params["index_probes"],
            lambda items: masked(self.score_items(user, history, items), items, banned),
        )

    def _profile(self, history: np.ndarray) -> np.ndarray | None:
        recent = np.asarray(history)[::-1][: self.params["recent"]]
        recent = recent[recent < len(self.embeddings)]
        if not len(recent):
            return None
        w = self.params["recency_decay"] ** np.arange(len(recent), dtype=np.float32)
        return w @ self.embeddings[recent]

    def score(self, user: int | None, history: np.ndarray) -> np.ndarray:
        profile = self._profile(history)
        if profile is None:
            return np.full(self.n_items, -np.inf, dtype=np.float32)
        return (self.embeddings @ profile).astype(np.float32)

    def score_rows(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        """Every user's profile, then one product with the item embeddings."""
        profiles = [self._profile(h) for h in histories]
        have = np.array([p is not None for p in profiles], dtype=bool)
        out = np.full((len(profiles), self.n_items), -np.inf, dtype=np.float32)
        if have.any():
            stacked = np.stack([p for p in profiles if p is not None]).astype(np.float32)
            out[have, : len(self.embeddings)] = stacked @ self.embeddings.T
        return out

    def score_items(self, user: int | None, history: np.ndarray, items: np.ndarray) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        out = np.full(len(items), -np.inf, dtype=np.float32)
        profile = self._profile(history)
        known = items < len(self.embeddings)
        if profile is not None:
            out[known] = self.embeddings[items[known]] @ profile
        return out

    def partial_fit_items(self, n_items: int, texts: list[str] | None = None) -> None:
        """Embed the texts of items `len(embeddings)..n_items-1` (given in that order)."""
        missing = n_items - len(self.embeddings)
        if missing > 0:
            if texts is None or len(texts) != missing:
                raise ValueError(f"content needs the texts of the {missing} new item(s)")
            self.embeddings = np.vstack([self.embeddings, self.encoder.encode(texts)])
        super().partial_fit_items(n_items, texts)

    def state(self) -> dict[str, np.ndarray]:
        index = self._index.state(INDEX_PREFIX) if self._index is not None else {}
        return {"embeddings": self.embeddings, **index}

    def set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.embeddings = arrays["embeddings"]
        self._index = ItemIndex.from_state(arrays, INDEX_PREFIX)
        if self._index is None:  # saved before content indexed its items
            self._build_index()
