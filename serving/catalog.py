"""External ids, titles and categories of items and users, and what each user did in the
dataset; grows with items added through the API."""

from __future__ import annotations

import numpy as np

from pipelines.artifact import Dataset
from pipelines.errors import ArtifactError
from pipelines.identity import key_check
from pipelines.item_text import render_item_text
from pipelines.schema import ITEM_CATEGORIES, ITEM_TEXT
from serving.events import EventStore, StoredItem


class Catalog:
    """`store`: where request ids are pseudonymised, for a dataset whose users are known by
    pseudonyms (its key must be the one the dataset was prepared with)."""

    def __init__(self, ds: Dataset, store: EventStore | None = None):
        items = ds.items
        self.item_ids: list[str] = [str(x) for x in items["item_id"].to_pylist()]
        self.titles: list[str] = [t or "" for t in items["title"].to_pylist()]
        self.categories: list[list[str]] = [c or [] for c in items[ITEM_CATEGORIES].to_pylist()]
        self.texts: list[str] = items[ITEM_TEXT].to_pylist()
        self.item_index = {x: i for i, x in enumerate(self.item_ids)}
        self.n_base_items = len(self.item_ids)
        self.user_index = {str(x): i for i, x in enumerate(ds.users["user_id"].to_pylist())}
        seq = ds.sequences
        self._indptr, self._items = seq.indptr, seq.items
        self._timestamps = np.asarray(seq.timestamps).astype(np.int64)
        self.added = 0  # items taken from the store so far
        self.pseudonymised = ds.manifest.identity is not None
        self._store = store
        if (
            self.pseudonymised
            and store is not None
            and key_check(store.key) != (ds.manifest.identity)
        ):
            raise ArtifactError(
                f"dataset {ds.manifest.version} holds users pseudonymised with another key than "
                "the event store's: serve it with the store (or $LLMREC_PSEUDONYM_KEY) it was "
                "prepared from"
            )
        #: the store's events up to this sequence number are in the dataset already
        self.events_through = int((ds.manifest.live or {}).get("through", 0))

    def rows_by_pseudonym(self, store: EventStore) -> dict[str, int]:
        """Dataset row of each user, keyed by the pseudonym logs and exports hold."""
        if self.pseudonymised:
            return dict(self.user_index)
        return {store.pseudonym(u): i for u, i in self.user_index.items()}

    def index_of(self, user_id: str) -> int | None:
        """The dataset row of the user a request names (None: not in the dataset)."""
        if self.pseudonymised:
            if self._store is None:
                return None
            user_id = self._store.pseudonym(user_id)
        return self.user_index.get(user_id)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def base_history(self, user: int | None) -> np.ndarray:
        if user is None:
            return np.zeros(0, dtype=np.int64)
        return self._items[self._indptr[user] : self._indptr[user + 1]].astype(np.int64)

    def users_by_activity(self) -> list[str]:
        """The dataset's user ids, the most recently active first (ties: the longer history,
        then dataset order); none for a pseudonymised dataset: a pseudonym is not an id a
        request names, so those users' lists are computed at their first request instead
        of precomputed."""
        if self.pseudonymised:
            return []
        ids = list(self.user_index)
        ends = self._indptr[1 : len(ids) + 1]
        lengths = ends - self._indptr[: len(ids)]
        last = np.where(
            lengths > 0, self._timestamps[np.maximum(ends - 1, 0)], np.iinfo(np.int64).min
        )
        return [ids[i] for i in np.lexsort((-lengths, -last.astype(np.float64)))]

    def add(self, items: list[StoredItem]) -> list[str]:
        """Append new items; returns their texts (in id order) for the models to embed."""
        texts = []
        for it in items:
            if it.item_id in self.item_index:
                continue
            self.item_index[it.item_id] = len(self.item_ids)
            self.item_ids.append(it.item_id)
            self.titles.append(it.title)
            self.categories.append(list(it.categories))
            texts.append(it.text or render_item_text(it.title, it.categories))
            self.texts.append(texts[-1])
        self.added += len(items)
        return texts

    def category_mask(self, category: str) -> np.ndarray:
        want = category.casefold()
        return np.array([any(c.casefold() == want for c in cats) for cats in self.categories])
