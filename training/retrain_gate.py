"""Whether a retrained candidate may replace the live version: a paired bootstrap over the
same held-out users, with thresholds the operator sets."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from training.evaluation.bootstrap import confidence_interval, paired_bootstrap


class GateSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tolerance: float = Field(
        0.0,
        ge=0,
        description="refuse when the whole confidence interval of (candidate - live) NDCG@10 "
        "lies below -tolerance: significantly worse by more than this",
    )
    max_drop: float = Field(
        0.02, ge=0, description="refuse when the mean NDCG@10 drops by more than this"
    )
    level: float = Field(0.95, gt=0.5, lt=1, description="confidence level of the interval")
    resamples: int = Field(2000, ge=100, le=100_000)
    eval_users: int | None = Field(
        None, ge=50, description="held-out users to compare on (a seeded sample) [default: all]"
    )


@dataclass(frozen=True)
class Decision:
    publish: bool
    reason: str
    cases: int
    live: dict[str, float]
    candidate: dict[str, float]
    difference: dict[str, float]

    def to_json(self) -> dict:
        return asdict(self)


def decide(live: np.ndarray, candidate: np.ndarray, s: GateSettings) -> Decision:
    """Publish unless the candidate is significantly worse (beyond `tolerance`) or its mean
    drops by more than `max_drop`."""
    if len(live) == 0:
        return Decision(
            False,
            "no held-out interaction is new to the live version (no new events): nothing to "
            "compare, the live version stays",
            0,
            {},
            {},
            {},
        )
    test = paired_bootstrap(candidate, live, resamples=s.resamples, level=s.level)
    ci_live = confidence_interval(live, s.resamples, s.level)
    ci_cand = confidence_interval(candidate, s.resamples, s.level)
    diff = {"mean": test.mean_difference, "low": test.low, "high": test.high}
    if test.high < -s.tolerance:
        ok, why = (
            False,
            f"candidate NDCG@10 is significantly worse: difference {test.mean_difference:+.4f} "
            f"[{test.low:+.4f}, {test.high:+.4f}] lies below -{s.tolerance:g}",
        )
    elif test.mean_difference < -s.max_drop:
        ok, why = (
            False,
            f"candidate NDCG@10 drops by {-test.mean_difference:.4f}, more than max_drop "
            f"{s.max_drop:g}",
        )
    else:
        ok, why = (
            True,
            f"candidate NDCG@10 difference {test.mean_difference:+.4f} "
            f"[{test.low:+.4f}, {test.high:+.4f}]: not significantly worse",
        )

    def ci(i) -> dict[str, float]:
        return {"ndcg@10": i.mean, "low": i.low, "high": i.high}

    return Decision(ok, why, len(live), ci(ci_live), ci(ci_cand), diff)
