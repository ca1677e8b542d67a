"""What one retrieval knows and returns: the user's state (dataset history plus stored
events), the retrieved candidates with their features and explanations, and the demotion of
look-alikes of disliked items. Plain data and numpy; `serving.recommender` fills them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class UserState:
    user_id: str
    index: int | None  # row in the dataset, None for a user the models never saw
    history: np.ndarray  # item indices, oldest first (dataset + positive events)
    dislikes: np.ndarray
    version: int  # newest stored event's sequence number (0: none)
    unknown_items: int  # events naming items not in the catalogue (stored, not used yet)
    recent_dislikes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    segment: dict[str, int] | None = None  # codes of stated attributes (None: dataset's own)
    store_down: bool = False  # the store did not answer: the dataset's history only


@dataclass
class Retrieved:
    user_id: str
    path: str
    items: np.ndarray  # item indices, fused order
    item_ids: list[str]
    titles: list[str]
    scores: np.ndarray
    features: np.ndarray
    prompt_history: np.ndarray
    explanations: list[dict[str, Any]]
    user_version: int
    model_version: str
    seconds: float
    ignored: dict[str, int] = field(default_factory=dict)
    history_len: int = 0  # items in the user's history (routing by history length)
    store_down: bool = False  # retrieved without the user's stored events
    # The version's routing table for this history length (`training.reranker.routing`):
    # its stage, why, and the feature layer's scores of the head when that stage ranks.
    route: str = "lm"
    route_reason: str | None = None
    route_scores: np.ndarray | None = None
    # Per candidate, an engaged new item's live events (`Candidates.new_events`), and the
    # shown list's place for the most engaged one (`CandidateConfig.shown_new_item_rank`).
    new_events: np.ndarray | None = None
    new_item_rank: int = 0


def demote_near(
    items: np.ndarray, embeddings: np.ndarray, disliked: np.ndarray, threshold: float
) -> tuple[np.ndarray, int]:
    """ "Not interested" reaches look-alikes: candidates whose text embedding is at least
    `threshold` cosine-similar to a recently disliked item move behind every other candidate
    (each group keeps its order). Returns (new order, how many moved)."""
    known = disliked[disliked < len(embeddings)]
    if not len(known) or not len(items):
        return np.arange(len(items)), 0
    inside = items < len(embeddings)
    sims = np.full(len(items), -1.0, dtype=np.float32)
    sims[inside] = (embeddings[items[inside]] @ embeddings[known].T).max(axis=1)
    near = sims >= threshold
    return np.concatenate([np.flatnonzero(~near), np.flatnonzero(near)]), int(near.sum())
