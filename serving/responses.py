"""The `/recommend` response as every answer path builds it (the shape of
`serving.api_models.Recommendation`): the re-ranked or retrieval order, the popularity
answer of last resort, and the fallback answer given when retrieval was not in time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from training.new_item_place import place_new_item

if TYPE_CHECKING:
    from serving.catalog import Catalog
    from serving.recommender import Retrieved


#: stages whose list is the full pipeline's answer (what the nearline cache keeps)
RANKED = ("rerank", "features")


def respond(
    r: Retrieved,
    k: int,
    scores: np.ndarray | None,
    request_id: str,
    fallback: str | None,
    timings: dict[str, float],
    reranker_version: str | None,
    routed: str | None = None,
    ranked_by: str = "rerank",
) -> dict[str, Any]:
    """The JSON response (`serving.api_models.Recommendation`): the head as `scores` order
    it (the re-ranker's, or its feature layer's: `ranked_by`), then fused order."""
    n = len(r.items)
    order = np.arange(n)
    stage_of = ["retrieval"] * n
    final = r.scores.astype(np.float64).copy()
    if scores is not None and len(scores):
        head = len(scores)
        rank = np.lexsort((np.arange(head), -scores))
        order = np.concatenate([rank, np.arange(head, n)])
        final[:head] = scores
        for j in range(head):
            stage_of[j] = ranked_by
    if r.path == "cold_start":
        stage_of = ["cold_start"] * n
    else:
        placed, at = place_new_item(order, r.new_events, k, r.new_item_rank), r.new_item_rank - 1
        if 0 <= at < len(placed) and placed[at] != order[at]:
            stage_of[placed[at]] = "new_item"
        order = placed
    reranked = scores is not None and len(scores) > 0
    items = []
    for j in order[:k]:
        e = r.explanations[j]
        items.append(
            {
                "item_id": r.item_ids[j],
                "title": r.titles[j],
                "score": float(final[j]) if np.isfinite(final[j]) else None,
                "sources": e["sources"],
                "source_scores": e.get("source_scores", {}),
                "scores": {
                    "retrieval": float(r.scores[j]) if np.isfinite(r.scores[j]) else None,
                    "rerank": float(scores[j]) if reranked and j < len(scores) else None,
                },
                "stage": stage_of[j],
                "explanation": e["explanation"],
                "because": e["because"],
                "because_source": e.get("because_source"),
                "segment": e.get("segment"),
            }
        )
    stage = (
        "cold_start"
        if r.path == "cold_start"
        else (ranked_by if scores is not None else "retrieval")
    )
    return {
        "user_id": r.user_id,
        "request_id": request_id,
        "stage": stage,
        "path": r.path,
        # Without the store the answer misses the user's recent events: flagged as such.
        "fallback": fallback or ("store_unavailable" if r.store_down else None),
        "routed": routed,
        "items": items,
        "versions": {"model": r.model_version, "reranker": reranker_version},
        "user_version": r.user_version,
        "timings_ms": {s: round(v * 1000, 2) for s, v in timings.items()},
        "ignored": r.ignored,
        "cached": False,
        "experiment": None,
    }


class PopularOrder:
    """The fallback's popularity counts with the items sorted by them once, when a version
    loads: an answer then takes the first `k` not excluded, instead of sorting the catalogue
    and walking it in Python on the event loop (at 200,000 items that cost tens of ms per
    fallback, which lagged the loop and sent yet more requests to the fallback)."""

    def __init__(self, counts: np.ndarray):
        self.counts = np.asarray(counts)
        self.order = np.argsort(-self.counts, kind="stable")  # ties to the lower id

    def top(self, k: int, banned: set[int]) -> list[int]:
        """The `k` most popular items not in `banned`: among the first k + len(banned)."""
        head = self.order[: k + len(banned)].tolist()
        return [i for i in head if i not in banned][:k]


def popularity_answer(
    popular: PopularOrder, catalog: Catalog, k: int, exclude: list[str]
) -> list[dict[str, Any]]:
    """The most popular items (the last-resort answer: no history, no model, no hop)."""
    banned = {catalog.item_index[x] for x in exclude if x in catalog.item_index}
    counts = popular.counts
    return [
        {
            "item_id": catalog.item_ids[i],
            "title": catalog.titles[i],
            "score": float(np.log1p(counts[i])),
            "sources": ["popular"],
            "source_scores": {"popular": float(counts[i])},
            "scores": {"retrieval": float(np.log1p(counts[i])), "rerank": None},
            "stage": "cold_start",
            "explanation": "popular overall",
            "because": None,
            "because_source": None,
            "segment": None,
        }
        for i in popular.top(k, banned)
    ]


def fallback_answer(
    user_id: str,
    request_id: str,
    reason: str,
    items: list[dict[str, Any]],
    model: str,
    timings: dict[str, float],
) -> dict[str, Any]:
    """The popularity answer given when retrieval did not answer in time."""
    return {
        "user_id": user_id,
        "request_id": request_id,
        "stage": "cold_start",
        "path": "fallback",
        "fallback": reason,
        "routed": None,
        "items": items,
        "versions": {"model": model, "reranker": None},
        "user_version": None,
        "timings_ms": {n: round(v * 1000, 2) for n, v in timings.items()},
        "ignored": {},
        "cached": False,
        "experiment": None,
    }
