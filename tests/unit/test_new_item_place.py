"""The shown list's place for the most engaged new item (`place_new_item`), and what the
offline protocol measures of it on every interaction after the cutoff."""

from __future__ import annotations

import numpy as np
import pytest

from training.candidates import CandidateConfig, CandidateGenerator
from training.evaluation.new_item_place_price import after_cutoff_cases, evaluate_place
from training.evaluation.new_items import cases_from
from training.new_item_place import place_new_item
from training.retrieval import MostPopular, Transitions

from .test_new_items import by_time, log_data


def test_the_most_engaged_new_candidate_takes_the_place_when_none_is_shown():
    order = np.array([4, 0, 1, 2, 3, 5, 6])  # candidate positions, as ranked
    events = np.array([0, 0, 0, 0, 0, 3, 7])  # candidates 5 and 6 are engaged new items
    placed = place_new_item(order, events, k=4, rank=3)
    assert placed.tolist() == [4, 0, 6, 1, 2, 3, 5]  # 6 (7 events) third, the rest follow
    assert place_new_item(order, events, k=4, rank=4).tolist() == [4, 0, 1, 6, 2, 3, 5]


def test_ties_go_to_the_earlier_candidate_not_the_earlier_shown():
    order = np.array([0, 1, 2, 6, 5])  # a re-ranker moved candidate 6 above 5
    events = np.array([0, 0, 0, 0, 0, 4, 4])
    assert place_new_item(order, events, k=3, rank=2).tolist() == [0, 5, 1, 2, 6]


@pytest.mark.parametrize(
    ("events", "k", "rank", "why"),
    [
        ([0, 0, 5, 0, 0], 3, 3, "an engaged new item is shown at the place already"),
        ([0, 5, 0, 0, 2], 3, 3, "one is shown above it"),
        ([0, 0, 0, 0, 0], 3, 3, "no candidate is an engaged new item"),
        ([0, 0, 0, 0, 9], 3, 0, "the place is off"),
        ([0, 0, 0, 0, 9], 2, 3, "the list asked for is shorter than the place"),
        ([0, 0, 0, 0, 9], 10, 10, "fewer candidates than the place"),
        (None, 3, 3, "live counts unknown"),
    ],
)
def test_the_order_is_kept(events, k, rank, why):
    order = np.arange(5)
    events = None if events is None else np.array(events, float)
    assert place_new_item(order, events, k, rank).tolist() == order.tolist(), why


def test_candidates_carry_the_live_events_of_new_items_only():
    """`Candidates.new_events`: a new item's live events from `new_item_min_events` on; an
    item with fitted interactions has none, whatever the counts say."""
    cases = cases_from(by_time(log_data()), 0.5)
    data = cases.train
    config = CandidateConfig(n=6, new_item_share=0.5, new_item_min_events=2)
    gen = CandidateGenerator({"transitions": Transitions().fit(data)}, MostPopular().fit(data))
    gen.config = config
    assert gen.generate(0, np.array([0, 1])).new_events is None  # counts unknown
    gen.live_counts = np.array([9.0, 0, 0, 0, 2, 1])  # item 0 is old; 5 below the minimum
    c = gen.generate(0, np.array([0, 1]))
    events = dict(zip(c.items.tolist(), c.new_events.tolist(), strict=True))
    assert events[4] == 2 and events.get(5, 0) == 0
    assert all(v == 0 for item, v in events.items() if item != 4)


def test_the_price_protocol_takes_every_interaction_after_the_cutoff():
    cases = cases_from(by_time(log_data()), 0.5)
    # (user, position, time): user 2's first interaction after the cutoff has no history
    assert after_cutoff_cases(cases, per_user=9) == [
        (0, 2, 8.0), (0, 3, 9.0), (0, 4, 10.0), (1, 3, 11.0), (2, 1, 12.0), (3, 3, 12.0)
    ]  # fmt: skip
    assert len(after_cutoff_cases(cases, per_user=1)) == 4  # one per user
    gen = CandidateGenerator(
        {"transitions": Transitions().fit(cases.train)},
        MostPopular().fit(cases.train),
        config=CandidateConfig(n=6, new_item_share=0.5, new_item_min_events=1),
    )
    report = evaluate_place(cases, gen, places=(0, 1), per_user=9, resamples=50)
    assert (report["cases"], report["users"], report["new_item_cases"]) == (6, 4, 4)
    none, first = report["places"]["0"], report["places"]["1"]
    assert "NDCG@10 vs none" in first and "NDCG@10 vs none" not in none
    # Place 1 changes one case: user 2's at 12, whose answer (item 0, an old item) ranked
    # first and moves to second behind item 5 (2 live events); every other case already
    # shows an engaged new item first, or has none. NDCG is averaged per user (4 users).
    assert none["NDCG@10"]["mean"] - first["NDCG@10"]["mean"] == pytest.approx(
        (1 - 1 / np.log2(3)) / 4
    )
    assert first["new-item cases Recall@10"]["mean"] == none["new-item cases Recall@10"]["mean"]
    assert gen.live_counts is None  # the generator is left as it was given
