"""What retrieval knows about each candidate, as the re-ranker's feature vector.

One definition, used to build training examples, in evaluation and when serving, so the
hybrid layer always sees the features it was trained on (their names are saved with it).
"""

from __future__ import annotations

import numpy as np

from training.candidates import Candidates

DEPTH = 100


def feature_names(sources: list[str]) -> list[str]:
    names = []
    for s in sources:
        names += [f"{s}:rr", f"{s}:log_rank", f"{s}:z"]
    return [*names, "log_popularity", "agreement", "position", "fused_z"]


def candidate_features(
    cand: Candidates,
    sources: list[str],
    log_popularity: np.ndarray,
    positions: np.ndarray | None = None,
) -> np.ndarray:
    """float32 [len(cand.items), n_features] in `feature_names(sources)` order.

    Per source: 1/(5 + rank), log(rank) / log(2 * depth) (1 when the source did not rank
    the item), and its score standardised over the candidates it scored (-3 when it did not).
    Then the item's log popularity scaled to [0, 1], the share of sources that ranked it, its
    position in the fused list as 1/(1 + position), and the fused score standardised.
    `positions` are the candidates' places in the fused list when they are not 0..n-1.
    """
    n = len(cand.items)
    cols = []
    agree = np.zeros(n)
    norm = np.log(2.0 * DEPTH)
    for s in sources:
        r = cand.source_ranks.get(s, np.zeros(n)).astype(np.float64)
        ranked = r > 0
        agree += ranked
        cols.append(np.where(ranked, 1.0 / (5.0 + r), 0.0))
        cols.append(np.where(ranked, np.log(np.maximum(r, 1.0)) / norm, 1.0))
        cols.append(_z(cand.source_scores.get(s, np.full(n, -np.inf))))
    pos = np.arange(n) if positions is None else np.asarray(positions, dtype=np.float64)
    # Popularity backfill carries scores near -1e6: not a fused score.
    fused = np.where(cand.scores > -1e5, cand.scores, -np.inf)
    pop = log_popularity[cand.items] / max(float(log_popularity.max()), 1e-9)
    cols += [pop, agree / max(len(sources), 1), 1.0 / (1.0 + pos), _z(fused)]
    return np.stack(cols, axis=-1).astype(np.float32)


def _z(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    if finite.sum() < 2:
        return np.where(finite, 0.0, -3.0)
    mu, sd = v[finite].mean(), v[finite].std() + 1e-9
    return np.where(finite, np.clip((np.where(finite, v, 0.0) - mu) / sd, -3.0, 3.0), -3.0)
