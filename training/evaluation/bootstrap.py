"""Bootstrap over users: confidence intervals and the paired test "A beats B"."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.mean:.4f} [{self.low:.4f}, {self.high:.4f}]"


def _indices(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def confidence_interval(
    values: np.ndarray, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> Interval:
    """Percentile bootstrap of the mean of per-user values."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    means = v[_indices(len(v), resamples, seed)].mean(axis=1)
    a = (1 - level) / 2
    return Interval(float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a)))


@dataclass(frozen=True)
class PairedTest:
    mean_difference: float
    low: float
    high: float
    p_value: float  # one-sided: share of resamples where A does not beat B

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> PairedTest:
    """Does A beat B? Resample users, keeping each user's pair of values together."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError("paired bootstrap needs one value per user for both models")
    d = a - b
    means = d[_indices(len(d), resamples, seed)].mean(axis=1)
    lo = (1 - level) / 2
    p = float((np.count_nonzero(means <= 0) + 1) / (resamples + 1))
    return PairedTest(
        float(d.mean()), float(np.quantile(means, lo)), float(np.quantile(means, 1 - lo)), p
    )
