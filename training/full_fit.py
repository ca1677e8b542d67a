"""When a cold fit's second pass (every source on all the data, after the held-out fit the
fusion learns from) starts warm from that held-out fit: one definition for the fit, the CLI
and the re-ranker's examples (plain Python: the CLI imports it at start)."""

from __future__ import annotations

from enum import StrEnum


class FullFit(StrEnum):
    """How a cold fit's second pass (every source on all the data, after the held-out fit
    the fusion learns from) starts: from scratch, or warm from the held-out fit's sources
    (`NEXT_SHARE` of a fit: the held-out fit has seen all but each user's last items)."""

    auto = "auto"  # scratch up to `WARM_FULL_FIT_INTERACTIONS`, warm beyond
    scratch = "scratch"
    warm = "warm"


#: Where `FullFit.auto` starts warm: from here the second pass is most of a fit's time (at
#: 20M interactions, SASRec's and BPR's second fits were 29 of its 67 minutes), and below
#: it (ML-100k, ML-1M) a fit is minutes and the published quality numbers stay as measured
#: from scratch (what warm costs: docs/BENCHMARKS.md, "A fit's second pass").
WARM_FULL_FIT_INTERACTIONS = 2_000_000


def full_fit_is_warm(full_fit: FullFit | str, n_interactions: int) -> bool:
    """Whether a cold fit's second pass over `n_interactions` starts from the held-out fit."""
    kind = FullFit(full_fit)
    if kind is FullFit.auto:
        return n_interactions >= WARM_FULL_FIT_INTERACTIONS
    return kind is FullFit.warm
