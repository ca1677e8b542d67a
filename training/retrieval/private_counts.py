"""Counts released with differential privacy: what segment popularity and its explanations
are built from ("popular with users like you (occupation: writer)").

User-level privacy: each user's contribution is bounded first (at most `cap` distinct items,
their latest), so adding or removing one user changes every released count by at most 1 in
at most `cap` items of the overall histogram, `cap` items of one segment per attribute, and
1 in one segment's user count per attribute. All of them are released together as one
Gaussian mechanism over that vector, calibrated by the analytic Gaussian mechanism (Balle &
Wang, ICML 2018) for the stated (epsilon, delta): no composition bound is needed within a
release. Everything computed from the noisy counts afterwards (smoothing, the floor on
segment size, rankings, explanations) is post-processing and costs no budget.

Pure numpy and scipy; `SegmentPopular` calls it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm


def analytic_gaussian_sigma(epsilon: float, delta: float, l2_sensitivity: float) -> float:
    """The smallest noise scale sigma for which adding N(0, sigma^2) to a query of L2
    sensitivity `l2_sensitivity` is (epsilon, delta)-DP (Balle & Wang 2018, Theorem 8):
    Phi(D/(2s) - e*s/D) - exp(e) * Phi(-D/(2s) - e*s/D) <= delta, found by bisection."""
    if epsilon <= 0 or not 0 < delta < 1 or l2_sensitivity <= 0:
        raise ValueError(
            f"need epsilon > 0, 0 < delta < 1 and a positive sensitivity; got {epsilon}, "
            f"{delta}, {l2_sensitivity}"
        )

    def achieved(sigma: float) -> float:
        a = l2_sensitivity / (2 * sigma)
        b = epsilon * sigma / l2_sensitivity
        # exp(eps) * Phi(x) in log space: eps up to ~700 must not overflow.
        return float(norm.cdf(a - b) - math.exp(epsilon + norm.logcdf(-a - b)))

    lo, hi = 1e-6 * l2_sensitivity, l2_sensitivity
    while achieved(hi) > delta:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if achieved(mid) <= delta else (mid, hi)
    return hi


def distinct_per_user(
    users: np.ndarray, items: np.ndarray, cap: int, earliest: bool = False
) -> np.ndarray:
    """Mask over interactions (each user's in time order) keeping each user's latest (or,
    with `earliest`, first) `cap` distinct items: the contribution bound that makes the
    sensitivity finite."""
    n = len(items)
    keep = np.zeros(n, dtype=bool)
    if not n or cap <= 0:
        return keep
    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    rev = np.arange(n) if earliest else np.arange(n)[::-1]
    # The first occurrence in this order is the pair's first (or latest) interaction.
    _, first = np.unique(users[rev] * (int(items.max()) + 1) + items[rev], return_index=True)
    idx = rev[first]
    # Within each user, in that order: the first `cap` are kept.
    order = np.lexsort((idx if earliest else -idx, users[idx]))
    idx, u = idx[order], users[idx[order]]
    starts = np.r_[0, np.flatnonzero(np.diff(u)) + 1]
    rank = np.arange(len(idx)) - np.repeat(starts, np.diff(np.r_[starts, len(idx)]))
    keep[idx[rank < cap]] = True
    return keep


@dataclass(frozen=True)
class Release:
    """What one release of noisy counts spent and how it was made (kept with the model)."""

    epsilon: float
    delta: float
    sigma: float
    cap: int  # distinct items a user contributes at most
    attributes: int
    l2_sensitivity: float
    min_users: int  # segments with fewer (noisy) distinct users are not released
    unit: str = "user"

    def to_json(self) -> dict:
        return asdict(self)


def plan_release(
    epsilon: float, delta: float, cap: int, attributes: int, min_users: int
) -> Release:
    """The noise for one release: the overall histogram, one histogram and one user count
    per attribute, with each user's contribution bounded by `cap` items."""
    l2 = math.sqrt(cap * (1 + attributes) + attributes)
    sigma = analytic_gaussian_sigma(epsilon, delta, l2)
    return Release(epsilon, delta, sigma, cap, attributes, l2, min_users)


def histograms(
    users: np.ndarray,
    items: np.ndarray,
    segments: dict[str, np.ndarray],
    n_items: int,
    n_codes: dict[str, int],
) -> dict[str, np.ndarray]:
    """The counts a release is made of: `overall` (interactions per item), per attribute
    `<attr>` (segment x item interactions) and `<attr>__users` (distinct users per segment,
    from the attribute codes of every user, with or without interactions)."""
    out = {"overall": np.bincount(items, minlength=n_items).astype(np.float64)}
    for attr, codes in segments.items():
        c = codes[users]
        ok = c >= 0
        counts = np.zeros((n_codes[attr], n_items), dtype=np.float64)
        np.add.at(counts, (c[ok], items[ok]), 1.0)
        out[attr] = counts
        known = codes[codes >= 0]
        out[f"{attr}__users"] = np.bincount(known, minlength=n_codes[attr]).astype(np.float64)
    return out


def noisy(counts: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Counts plus N(0, sigma^2), clipped at 0 (post-processing)."""
    return np.maximum(counts + rng.normal(0.0, sigma, size=counts.shape), 0.0)
