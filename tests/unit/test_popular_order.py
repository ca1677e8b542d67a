"""The last-resort popularity answer: sorted once per version, each answer the first `k`
items not excluded, the same list a sort of the whole catalogue per request gave."""

from __future__ import annotations

import numpy as np

from serving.responses import PopularOrder


def naive(counts: np.ndarray, k: int, banned: set[int]) -> list[int]:
    order = np.argsort(-counts, kind="stable")
    return [int(i) for i in order if int(i) not in banned][:k]


def test_the_first_k_not_excluded_match_a_full_sort_ties_included():
    rng = np.random.default_rng(0)
    for n in (1, 7, 300):
        counts = rng.integers(0, 5, n).astype(np.float64)  # many ties: lower id first
        popular = PopularOrder(counts)
        for k in (1, 5, 10, 400):
            banned = set(rng.choice(n, min(n, rng.integers(0, 30)), replace=False).tolist())
            assert popular.top(k, banned) == naive(counts, k, banned), (n, k)
    # Everything excluded, or all but one: what is left.
    popular = PopularOrder(np.array([3.0, 1.0, 2.0]))
    assert popular.top(10, {0, 1, 2}) == [] and popular.top(10, {0, 2}) == [1]
