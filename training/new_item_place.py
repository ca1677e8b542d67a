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


def most_engaged(new_events: np.ndarray | None) -> int | None:
    """The candidate the new-item place takes: the most live events (`Candidates.new_events`),
    ties to the earlier candidate (the generator's new-item order); None when none has any."""
    if new_events is None or not len(new_events):
        return None
    best = int(np.argmax(new_events))
    return best if new_events[best] > 0 else None


def place_new_item(
    order: np.ndarray, new_events: np.ndarray | None, k: int, rank: int
) -> np.ndarray:
    """The shown order of a list of `k` with its new-item place: `order` (every candidate's
    position, best first) with the most engaged new candidate (`most_engaged`) moved up to
    `rank` (1 = first) when no engaged new item is shown at or above it. Unchanged when
    `rank` is 0 or beyond `k`, or no candidate is an engaged new item: a list the user asked
    to be short keeps its best items, and a new item nobody has engaged with is left to the
    cold-start exploration.

    Why: the fused list and a re-ranker learn from items with interactions, so a new item
    reaches the shown list only after the next refit, however many people engage with it
    now; one place of the list keeps the newest engagement visible (its price for every
    user: docs/BENCHMARKS.md, New items)."""
    order = np.asarray(order)
    best = most_engaged(new_events)
    if best is None or rank < 1 or k < rank or (np.asarray(new_events)[order[:rank]] > 0).any():
        return order
    at = np.flatnonzero(order == best)
    if not len(at):
        return order
    rest = np.delete(order, at[0])
    return np.concatenate([rest[: rank - 1], [best], rest[rank - 1 :]]).astype(order.dtype)


def shown_items(items: np.ndarray, new_events: np.ndarray | None, k: int, rank: int) -> np.ndarray:
    """Candidates `items` in their own order, as a list of `k` shows them: with the new-item
    place (`place_new_item`; `new_events`: `Candidates.new_events`). What the offline
    protocols score as the shown list when no re-ranker reorders it."""
    items = np.asarray(items)
    return items[place_new_item(np.arange(len(items)), new_events, k, rank)]
