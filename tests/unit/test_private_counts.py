"""Differentially private segment popularity: the noise calibration, the contribution bound,
a user's presence moving the released counts by at most the sensitivity the noise is
calibrated for, and the floor on segment size."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from tests.fit_data import fit_data
from training.retrieval.popularity import SegmentPopular
from training.retrieval.private_counts import (
    analytic_gaussian_sigma,
    distinct_per_user,
    histograms,
    plan_release,
)

LABELS = {"gender": ["F", "M"], "occupation": ["student", "writer"]}


def achieved_delta(eps: float, sigma: float, sens: float) -> float:
    """Balle & Wang (2018), Theorem 8, written out independently of the module."""
    a, b = sens / (2 * sigma), eps * sigma / sens
    return norm.cdf(a - b) - math.exp(eps) * norm.cdf(-a - b)


@pytest.mark.parametrize("eps", [0.5, 1.0, 4.0, 8.0])
@pytest.mark.parametrize("sens", [1.0, 9.1])
def test_the_noise_is_the_smallest_that_meets_delta(eps, sens):
    delta = 1e-5
    sigma = analytic_gaussian_sigma(eps, delta, sens)
    assert achieved_delta(eps, sigma, sens) <= delta * (1 + 1e-6)
    assert achieved_delta(eps, 0.99 * sigma, sens) > delta
    # Linear in the sensitivity, and below the classic bound where that one holds (eps < 1).
    assert analytic_gaussian_sigma(eps, delta, 2 * sens) == pytest.approx(2 * sigma, rel=1e-6)
    if eps < 1:
        assert sigma < math.sqrt(2 * math.log(1.25 / delta)) * sens / eps


def test_bad_budgets_are_refused():
    with pytest.raises(ValueError, match="epsilon"):
        analytic_gaussian_sigma(0, 1e-5, 1)
    with pytest.raises(ValueError, match="delta"):
        analytic_gaussian_sigma(1, 1.5, 1)


def test_each_user_keeps_their_latest_or_first_distinct_items():
    users = np.array([0, 0, 0, 0, 1, 1, 0])
    items = np.array([5, 6, 5, 7, 5, 8, 9])  # user 0 saw 5 twice; the last row is newest
    keep = distinct_per_user(users, items, cap=2)
    assert keep.tolist() == [False, False, False, True, True, True, True]
    kept0 = sorted(items[keep & (users == 0)].tolist())
    assert kept0 == [7, 9]  # 9 (newest), then 7; the earlier 5s and 6 are dropped
    assert distinct_per_user(users, items, cap=0).sum() == 0
    assert distinct_per_user(users, items, cap=10).sum() == 6  # every distinct pair once
    first = distinct_per_user(users, items, cap=2, earliest=True)
    assert first.tolist() == [True, True, False, False, True, True, False]  # 5 and 6 first


def toy(n_users: int = 60, n_items: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), rng.integers(1, 40, n_users))
    items = rng.integers(0, n_items, len(users))
    codes = {
        "gender": rng.integers(0, 2, n_users),
        "occupation": np.r_[np.zeros(n_users - 3, dtype=np.int64), np.ones(3, dtype=np.int64)],
    }
    return users, items, codes, n_items


def released(users, items, codes, n_items, cap) -> np.ndarray:
    keep = distinct_per_user(users, items, cap)
    n_codes = {a: int(c.max()) + 1 for a, c in codes.items()}
    h = histograms(users[keep], items[keep], codes, n_items, n_codes)
    return np.concatenate([v.ravel() for _, v in sorted(h.items())])


def test_one_users_presence_moves_the_release_by_at_most_the_sensitivity():
    """The membership question: with a user's rows removed and the user absent from the
    segment tables, the exact counts the noise is added to change by at most the L2
    sensitivity the noise was calibrated for, and by exactly that much for a user with at
    least `cap` items (the bound is tight)."""
    users, items, codes, n_items = toy()
    cap = 10
    release = plan_release(1.0, 1e-5, cap, len(codes), 20)
    full = released(users, items, codes, n_items, cap)
    worst = 0.0
    for u in range(users.max() + 1):
        rows = users != u
        # Without the user: their rows gone, their segment membership gone.
        without = {a: np.where(np.arange(len(c)) == u, -1, c) for a, c in codes.items()}
        rest = released(users[rows], items[rows], without, n_items, cap)
        worst = max(worst, float(np.linalg.norm(full - rest)))
    assert worst <= release.l2_sensitivity + 1e-9
    assert worst == pytest.approx(release.l2_sensitivity)


def test_a_segment_below_the_floor_is_never_released_or_named():
    users, items, codes, n_items = toy()
    data = fit_data(users, items, codes, n_items, labels=LABELS)
    model = SegmentPopular(epsilon=1.0, min_users=20, seed=0).fit(data)
    info = model.fit_info
    assert info["privacy"]["epsilon"] == 1.0 and info["privacy"]["unit"] == "user"
    assert "writer" in info["segments_withheld"]["occupation"]  # 3 users
    writer = {"occupation": 1}
    assert np.allclose(model.tables["occupation"][1], np.log(model.overall + 1e-12))
    assert all(x is None for x in model.top_segment(writer, np.arange(n_items)))
    assert model.is_withheld("occupation", 1) and not model.is_withheld("occupation", 0)


def test_the_withheld_segments_survive_a_save(tmp_path):
    users, items, codes, n_items = toy()
    data = fit_data(users, items, codes, n_items, labels=LABELS)
    model = SegmentPopular(epsilon=1.0, min_users=20, seed=0).fit(data)
    model.save(tmp_path / "segment")
    back = SegmentPopular.load(tmp_path / "segment")
    assert back.is_withheld("occupation", 1)
    assert all(x is None for x in back.top_segment({"occupation": 1}, np.arange(n_items)))


def test_exact_counts_name_the_small_segment():
    users, items, codes, n_items = toy()
    data = fit_data(users, items, codes, n_items, labels=LABELS)
    writer = {"occupation": 1}
    # The same data without noise names the small segment somewhere.
    exact = SegmentPopular(epsilon=None, max_items_per_user=None).fit(data)
    assert exact.fit_info is None
    assert any(x is not None for x in exact.top_segment(writer, np.arange(n_items)))
