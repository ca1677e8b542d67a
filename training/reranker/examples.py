"""Listwise examples for the re-ranker, from the dataset artifact and the retrieval stack.

Training: each user's last `holdout` training items are hidden from a stack fitted on the
rest; for each hidden position the candidates are that stack's top K-1 for the history so
far, plus the true next item with the features it really has (hard negatives, no leakage),
in a shuffled order so that the LM cannot learn positions.

Ranking rows (validation, test, serving): the stack's top K in fused order, no insertion;
a target outside them is a miss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from training.candidates import CandidateGenerator, Candidates
from training.reranker.features import candidate_features

#: how deep the fused list is read to find the true item's own features
INSERT_DEPTH = 200


@dataclass
class Row:
    """One prompt: history (most recent last, already cut to the template), K candidates,
    their features [K, F], and the index of the true item among them (-1: not there)."""

    user: int
    history: np.ndarray
    candidates: np.ndarray
    features: np.ndarray
    label: int

    def to_dict(self) -> dict:
        return {
            "user": self.user,
            "history": self.history.astype(np.int64).tolist(),
            "candidates": self.candidates.astype(np.int64).tolist(),
            "features": self.features.astype(np.float32).reshape(-1).tolist(),
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, d: dict, n_features: int) -> Row:
        cands = np.asarray(d["candidates"], dtype=np.int64)
        feats = np.asarray(d["features"], dtype=np.float32).reshape(len(cands), n_features)
        return cls(int(d["user"]), np.asarray(d["history"]), cands, feats, int(d["label"]))


def subset(c: Candidates, idx: np.ndarray) -> Candidates:
    return Candidates(
        items=c.items[idx],
        scores=c.scores[idx],
        path=c.path,
        source_ranks={s: r[idx] for s, r in c.source_ranks.items()},
        source_scores={s: v[idx] for s, v in c.source_scores.items()},
        explored=None if c.explored is None else c.explored[idx],
        ignored_history=c.ignored_history,
        segment=c.segment,
        new_events=None if c.new_events is None else c.new_events[idx],
    )


def ranking_row(
    gen: CandidateGenerator,
    user: int,
    history: np.ndarray,
    k: int,
    history_items: int,
    sources: list[str],
    log_pop: np.ndarray,
    target: int = -1,
    exclude: np.ndarray | None = None,
) -> Row:
    """The top-K candidates in fused order (evaluation and serving)."""
    c = gen.generate(user, history, n=k, exclude=exclude)
    hit = np.flatnonzero(c.items == target)
    return Row(
        user,
        np.asarray(history)[-history_items:],
        c.items,
        candidate_features(c, sources, log_pop),
        int(hit[0]) if len(hit) else -1,
    )


def training_rows(
    gen: CandidateGenerator,
    visible: list[np.ndarray],
    hidden: list[np.ndarray],
    k: int,
    history_items: int,
    sources: list[str],
    log_pop: np.ndarray,
    seed: int = 0,
    progress: bool = True,
    insert: bool = True,
) -> tuple[list[Row], int]:
    """Examples at every hidden position; returns (rows, positions skipped).

    With `insert`, a true item outside the top K replaces the K-th candidate (positions
    whose true item is not within the fused top `INSERT_DEPTH` are skipped); without it,
    only positions whose true item is already among the top K are kept, so the features
    of training lists look exactly like those of the lists ranked at request time."""
    rng = np.random.default_rng(seed)
    rows: list[Row] = []
    skipped = 0
    for u in tqdm(range(len(visible)), desc="training examples", disable=not progress):
        for j, target in enumerate(hidden[u]):
            history = np.concatenate([visible[u], hidden[u][:j]]).astype(np.int64)
            c = gen.generate(u, history, n=INSERT_DEPTH)
            at = np.flatnonzero(c.items == target)
            if not len(at) or (not insert and at[0] >= k):
                skipped += 1
                continue
            top = np.arange(min(k, len(c.items)))
            idx = top if at[0] < k else np.append(top[: k - 1], at[0])
            # The true item keeps its real fused position as a feature.
            feats = candidate_features(subset(c, idx), sources, log_pop, positions=idx)
            order = rng.permutation(len(idx))
            items = c.items[idx][order]
            rows.append(
                Row(
                    u,
                    history[-history_items:],
                    items,
                    feats[order],
                    int(np.flatnonzero(items == target)[0]),
                )
            )
    return rows, skipped
