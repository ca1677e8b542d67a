"""The new-item protocol's cases, training view, live counts and baselines, on a log small
enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.global_steps import csr_from_pairs, user_offsets
from training.evaluation.new_items import cases_from, evaluate
from training.retrieval.data import FitData

# (user, item, time); items 4 and 5 are first seen after the cutoff (time 7 at quantile 0.5).
LOG = [
    (0, 0, 1), (0, 1, 2), (0, 4, 8), (0, 2, 9), (0, 5, 10),
    (1, 1, 3), (1, 2, 4), (1, 3, 5), (1, 5, 11),
    (2, 4, 8), (2, 0, 12),  # no history before its first new item: a new user, not a case
    (3, 0, 5), (3, 3, 6), (3, 2, 7), (3, 4, 12),
]  # fmt: skip


def log_data() -> FitData:
    u, i, t = (np.array(c) for c in zip(*sorted(LOG), strict=True))
    return FitData(
        n_users=4,
        n_items=6,
        matrix=csr_from_pairs(u, i, np.ones(len(i), np.float32), (4, 6)),
        seq_indptr=user_offsets(u, 4),
        seq_items=i.astype(np.int32),
        seq_times=t.astype(np.int64),
        item_text=[f"item {k}" for k in range(6)],
        item_categories=[[] for _ in range(6)],
        user_segments={},
    )


def by_time(data: FitData) -> FitData:
    order = np.lexsort((data.seq_times, data.seq_users()))
    data.seq_items, data.seq_times = data.seq_items[order], data.seq_times[order]
    return data


@pytest.fixture
def cases():
    return cases_from(by_time(log_data()), 0.5)


def test_cases_are_each_users_first_new_item_with_the_history_before_it(cases):
    assert cases.cutoff == 7.0  # the median of the 15 times
    assert cases.new.tolist() == [False, False, False, False, True, True]
    assert cases.users.tolist() == [0, 1, 3]
    assert cases.targets.tolist() == [4, 5, 4]
    assert [h.tolist() for h in cases.histories] == [[0, 1], [1, 2, 3], [0, 3, 2]]


def test_training_sees_nothing_after_the_cutoff_and_no_new_item(cases):
    assert cases.train.seq_times.max() <= cases.cutoff
    assert not cases.new[cases.train.seq_items].any()
    assert cases.train.matrix.to_scipy()[:, [4, 5]].nnz == 0


def test_live_counts_are_new_items_after_the_cutoff_and_before_the_case(cases):
    # user 0's case at time 8: nothing before it; user 3's at 12: item 4 twice at 8, item 5
    # at 10 and 11 (its own interactions and everyone else's)
    assert cases.live_new_counts(0).tolist() == [0, 0, 0, 0, 0, 0]
    assert cases.live_new_counts(2).tolist() == [0, 0, 0, 0, 2, 2]


def test_an_oracle_is_perfect_and_the_baselines_rank_new_items_only(cases):
    targets = dict(zip(cases.users.tolist(), cases.targets.tolist(), strict=True))

    def oracle(user, history):
        s = np.zeros(6)
        s[targets[user]] = 1.0
        return s

    report = evaluate(
        cases, {"oracle": oracle}, {"oracle list": lambda u, h, live: [targets[u]]}, 200
    )
    for name in ("oracle", "oracle list"):
        assert report["models"][name]["Recall@10"]["mean"] == 1.0
        assert report["models"][name]["NDCG@10"]["mean"] == 1.0
    for name in ("popularity among new items", "random new item"):
        m = report["models"][name]
        assert m["Recall@10"]["mean"] == 1.0  # two new items, both in every top 10
        # the lists hold every item not in the history: 2 new of 4, of 3, of 3
        assert m["new_share@10"] == pytest.approx((2 / 4 + 2 / 3 + 2 / 3) / 3)
    assert report["cases"] == 3 and report["new_items"] == 2


def test_a_cutoff_outside_0_1_is_refused():
    with pytest.raises(ValueError, match="between 0 and 1"):
        cases_from(log_data(), 1.0)
