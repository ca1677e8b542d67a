"""A FitData built from arrays, for tests of models that read only interactions and
segments (no dataset artifact)."""

from __future__ import annotations

import numpy as np

from pipelines.global_steps import csr_from_pairs, user_offsets
from training.retrieval.data import FitData


def fit_data(users, items, codes, n_items, times=None, labels=None) -> FitData:
    """Interactions (user, item) in order, `times` per interaction (default: their
    order), segment `codes` per attribute and their readable `labels` (default: none)."""
    n_users = int(users.max()) + 1
    return FitData(
        n_users=n_users,
        n_items=n_items,
        matrix=csr_from_pairs(users, items, np.ones(len(items), np.float32), (n_users, n_items)),
        seq_indptr=user_offsets(users, n_users),
        seq_items=items.astype(np.int32),
        seq_times=np.asarray(np.arange(len(items)) if times is None else times, dtype=np.int64),
        item_text=[f"item {i}" for i in range(n_items)],
        item_categories=[[] for _ in range(n_items)],
        user_segments=codes,
        segment_labels=labels or {},
    )
