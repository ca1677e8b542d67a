"""The "also watched" release of `/items/{id}/similar`: bounded pairs, Gaussian noise and a
threshold that keeps a pair only one user has from being released."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from tests.fit_data import fit_data
from training.retrieval import PrivateCoVisits
from training.retrieval.fusion import similar_ranking
from training.retrieval.private_counts import distinct_per_user
from training.retrieval.private_covisits import pair_counts, release_plan


def _log(n_users: int = 60, n_items: int = 30, per_user: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    items = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    return users, items


def test_pair_counts_count_distinct_users_per_unordered_pair():
    users = np.array([0, 0, 0, 1, 1, 2])
    items = np.array([3, 1, 2, 1, 3, 2])
    m = pair_counts(users, items, 4).toarray()
    assert m[1, 3] == 2 and m[1, 2] == 1 and m[2, 3] == 1
    assert m.sum() == 4 and np.array_equal(m, np.triu(m, 1))  # upper triangle only


def test_one_user_moves_the_bounded_counts_by_at_most_the_sensitivity():
    users, items = _log()
    cap = 5
    plan = release_plan(8.0, 1e-5, cap)
    keep = distinct_per_user(users, items, cap, earliest=True)
    full = pair_counts(users[keep], items[keep], 30).toarray()
    for u in range(60):
        others = users != u
        k = distinct_per_user(users[others], items[others], cap, earliest=True)
        without = pair_counts(users[others][k], items[others][k], 30).toarray()
        diff = full - without
        assert diff.min() >= 0 and diff.max() <= 1
        # Exactly the user's bounded pairs: the L2 sensitivity the noise was calibrated for.
        assert np.sqrt((diff**2).sum()) == pytest.approx(plan["l2_sensitivity"])


def test_the_threshold_releases_a_single_users_pairs_with_probability_at_most_half_delta():
    delta, cap = 1e-5, 20
    plan = release_plan(8.0, delta, cap)
    pairs = cap * (cap - 1) // 2
    p_one = norm.sf((plan["threshold"] - 1) / plan["sigma"])
    assert plan["pairs_per_user"] == pairs
    assert pairs * p_one == pytest.approx(delta / 2, rel=1e-6)
    # Stronger privacy, more noise and a higher bar.
    tight = release_plan(1.0, delta, cap)
    assert tight["sigma"] > plan["sigma"] and tight["threshold"] > plan["threshold"]


def test_rare_pairs_are_withheld_and_frequent_ones_released():
    # 200 users share items 0 and 1; one user alone watched items 7 and 8 together.
    users = np.r_[np.repeat(np.arange(200), 2), [200, 200]]
    items = np.r_[np.tile([0, 1], 200), [7, 8]]
    data = fit_data(users, items, {}, n_items=10)
    model = PrivateCoVisits().fit(data)
    assert model.fit_info["pairs_released"] == 1
    assert np.isfinite(model.score(None, np.array([0]))[1])
    assert not np.isfinite(model.score(None, np.array([7]))[8])
    exact = PrivateCoVisits(epsilon=None).fit(data)
    assert exact.fit_info["epsilon"] is None and exact.fit_info["pairs_released"] == 2
    assert exact.score(None, np.array([7]))[8] == 1.0


def test_similar_ranking_takes_each_items_best_rank_and_drops_the_item_itself():
    a = np.array([9.0, 5.0, 4.0, -np.inf, 1.0])
    b = np.array([0.0, -np.inf, -np.inf, 3.0, 2.0])
    top, fused, ranks = similar_ranking({"a": a, "b": b}, item=0, k=4)
    assert 0 not in top and fused[0] == 0
    # Item 1 (a's first) and item 3 (b's first) tie on best rank; 4, ranked by both, beats 2.
    assert set(top[:2]) == {1, 3} and list(top[2:]) == [4, 2]
    assert ranks["a"][0] == 0  # the item itself is unranked


def test_pair_counts_are_the_same_built_a_chunk_at_a_time(monkeypatch):
    from training.retrieval import private_covisits

    users, items = _log(n_users=40, per_user=6)
    whole = pair_counts(users, items, 30).toarray()
    monkeypatch.setattr(private_covisits, "CHUNK_PAIRS", 7)
    assert np.array_equal(pair_counts(users, items, 30).toarray(), whole)
    assert whole.sum() == 40 * 15
