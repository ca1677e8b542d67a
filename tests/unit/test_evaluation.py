"""Metrics, bootstrap and fusion as pure functions."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from training.evaluation.bootstrap import confidence_interval, paired_bootstrap
from training.evaluation.metrics import (
    coverage,
    metrics_from_ranks,
    popularity_tiebreak,
    ranked_top,
    target_rank,
)
from training.retrieval.fusion import LearnedFusion, _row_stats, fuse, source_ranks


def test_metrics_from_ranks():
    m = metrics_from_ranks(np.array([1, 3, 11, 60]))
    assert m["NDCG@10"].tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert m["Recall@5"].tolist() == [1, 1, 0, 0]
    assert m["Recall@50"].tolist() == [1, 1, 1, 0]
    assert m["MRR@10"].tolist() == pytest.approx([1.0, 1 / 3, 0.0, 0.0])


def test_target_rank_masks_history_and_breaks_ties_by_popularity():
    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.1])
    tiebreak = popularity_tiebreak(np.array([0, 10, 30, 20, 0]))  # item 2 most popular
    excluded = np.array([True, False, False, False, False])
    assert target_rank(scores, 2, excluded, tiebreak) == 1  # item 0 is history
    assert target_rank(scores, 3, excluded, tiebreak) == 2
    assert target_rank(scores, 1, excluded, tiebreak) == 3
    top = ranked_top(scores, excluded, tiebreak, 3)
    assert top.tolist() == [2, 3, 1]


def test_coverage():
    assert coverage([np.array([0, 1]), np.array([1, 2])], 10) == 0.3


def test_confidence_interval_covers_the_mean():
    v = np.random.default_rng(0).random(500)
    ci = confidence_interval(v, 500)
    assert ci.low < v.mean() < ci.high and ci.high - ci.low < 0.1


def test_paired_bootstrap_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(1)
    b = rng.random(800)
    assert paired_bootstrap(b + 0.05, b).significant()
    null = paired_bootstrap(b + rng.normal(0, 0.1, 800), b)
    assert not null.significant() or abs(null.mean_difference) < 0.01
    with pytest.raises(ValueError):
        paired_bootstrap(b[:3], b)


def test_the_fusion_standardises_each_row_over_its_finite_scores():
    """`_row_stats` on any stack of rows (sources x users x items in training) equals the
    plain masked mean and std; an all -inf row gets 0 and ~1e-9, never a NaN."""
    rng = np.random.default_rng(0)
    sc = (rng.normal(size=(3, 4, 500)) * 5 + 100).astype(np.float32)
    sc[rng.random(sc.shape) < 0.3] = -np.inf
    sc[1, 2] = -np.inf
    mean, std = _row_stats(sc)
    masked = np.where(np.isfinite(sc), sc, np.nan).astype(np.float64)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want_mean, want_std = np.nanmean(masked, -1), np.nanstd(masked, -1)
    ok = np.isfinite(want_mean)
    assert mean.shape == std.shape == (3, 4, 1)
    np.testing.assert_allclose(mean[..., 0][ok], want_mean[ok], rtol=1e-12)
    np.testing.assert_allclose(std[..., 0][ok], want_std[ok] + 1e-9, rtol=1e-9)
    assert mean[1, 2, 0] == 0.0 and 0 < std[1, 2, 0] < 1e-8
    m1, s1 = _row_stats(sc[0, 0])
    assert m1.shape == (1,) and np.isclose(s1[0], std[0, 0, 0])


def test_source_ranks_and_rrf():
    s = np.array([[0.1, 0.9, -np.inf, 0.5]])
    r = source_ranks(s, None, depth=2)
    assert r.tolist() == [[0, 1, 0, 2]]
    fused = fuse({"a": r, "b": np.array([[1, 0, 0, 0]])}, {"a": 1.0, "b": 1.0}, k=1)
    assert fused[0, 1] == pytest.approx(0.5) and fused[0, 0] == pytest.approx(0.5)
    # Ties go to the lower id, -inf and excluded items are never ranked, rows independent;
    # a depth beyond the catalogue ranks every finite item.
    s = np.array([[2.0, 3.0, 2.0, -np.inf, 3.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    excluded = np.array([[False] * 5, [False, True, False, False, False]])
    r = source_ranks(s, excluded, depth=3)
    assert r[0, [1, 4]].tolist() == [1, 2] and sorted(r[0, [0, 2]]) == [0, 3]  # one tie fits
    assert r[1, 1] == 0 and sorted(r[1]) == [0, 0, 1, 2, 3]
    assert source_ranks(s, None, depth=9).tolist() == [[3, 1, 4, 0, 2], [1, 2, 3, 4, 5]]
    assert source_ranks(s[0], None, depth=2).tolist() == [0, 1, 0, 0, 2]
    # float32 scores are ranked in their own width (faster), as their float64 copies are.
    rng = np.random.default_rng(0)
    wide = rng.standard_normal((3, 5000)).astype(np.float32)
    wide[:, ::7] = -np.inf
    assert (source_ranks(wide, None, 100) == source_ranks(wide.astype(np.float64), None, 100)).all()


def test_learned_fusion_learns_which_source_to_trust(tmp_path):
    rng = np.random.default_rng(2)
    users, items = 300, 80
    targets = rng.integers(0, items, users)
    good = rng.random((users, items))
    good[np.arange(users), targets] += 0.6  # this source usually ranks the target high
    noise = rng.random((users, items))
    ranks = {"good": source_ranks(good, None, 30), "noise": source_ranks(noise, None, 30)}
    scores = {"good": good, "noise": noise}
    pop = np.zeros(items)
    f = LearnedFusion(["good", "noise"], depth=30).fit(ranks, scores, pop, targets)
    fused = f.score(ranks, scores, pop)
    hit = np.mean(np.argsort(-fused, axis=1)[:, :5] == targets[:, None]) * 5
    alone = np.mean(np.argsort(-noise, axis=1)[:, :5] == targets[:, None]) * 5
    assert hit > 0.5 > alone
    again = LearnedFusion.from_json(f.to_json())
    assert np.array_equal(again.score(ranks, scores, pop), fused)
