"""The shown list's place for a new item: the one rule serving's responses and the offline
protocols apply to a ranked list (plain numpy; light enough for the settings to import)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

#: the place measured and shipped (docs/BENCHMARKS.md, New items): the last of a list of 10
DEFAULT_RANK = 10
#: the shown list's new-item place (`place_new_item`); serving's live settings take the
#: same field (`LiveSettings.shown_new_item_rank`)
ShownNewItemRank = Annotated[
    int,
    Field(
        ge=0,
        le=1000,
        description="warm and sparse: the place (1 = first) in the shown list that the most "
        "engaged new item candidate takes when no new item ranks at or above it; 0: none. "
        "Only a new item with live events (`new_item_min_events`) takes it, and only in a "
        "list at least this long (measured in docs/BENCHMARKS.md, New items)",
    ),
]


def place_new_item(
    order: np.ndarray, new_events: np.ndarray | None, k: int, rank: int
) -> np.ndarray:
    """The shown order of a list of `k` with its new-item place: `order` (candidate
    positions, best first) with the most engaged new candidate (`Candidates.new_events`;
    ties: the earlier candidate) moved up to `rank` (1 = first) when no engaged new item is
    shown at or above it. Unchanged when `rank` is 0 or beyond `k`, or no candidate is an
    engaged new item: a list the user asked to be short keeps its best items, and a new
    item nobody has engaged with is left to the cold-start exploration.

    Why: the fused list and a re-ranker learn from items with interactions, so a new item
    reaches the shown list only after the next refit, however many people engage with it
    now; one place of the list keeps the newest engagement visible (its price for every
    user: docs/BENCHMARKS.md, New items)."""
    order = np.asarray(order)
    if new_events is None or rank < 1 or k < rank or not len(order):
        return order
    events = np.asarray(new_events)[order]
    if (events[:rank] > 0).any():
        return order
    tail = np.arange(rank - 1, len(order))
    if not len(tail) or events[tail].max() <= 0:
        return order
    # the most events; ties to the earlier candidate (the generator's new-item order)
    best = tail[np.lexsort((order[tail], -events[tail]))[0]]
    return np.concatenate(
        [order[: rank - 1], order[best : best + 1], np.delete(order, best)[rank - 1 :]]
    )
