"""A request fuses the union of the sources' top items (`SourceView`): the same candidates,
scores, ranks and features as fusing every source's scores over the whole catalogue."""

from __future__ import annotations

import numpy as np
import pytest

from training.candidates import CandidateConfig, CandidateGenerator
from training.retrieval.base import pad_to, top_n
from training.retrieval.fusion import LearnedFusion, fuse, source_ranks, top_list
from training.retrieval.views import SourceView, dense_view


@pytest.fixture(scope="module")
def parts(candidate_parts):
    data, sources, pop, _ = candidate_parts
    return data, sources, pop


def dense(gen: CandidateGenerator, user: int, hist: np.ndarray, names: list[str]):
    banned = np.zeros(gen.n_items, dtype=bool)
    banned[hist] = True
    scores = {
        s: np.where(banned, -np.inf, pad_to(gen.sources[s].score(user, hist), gen.n_items))
        for s in names
    }
    return banned, scores, {s: source_ranks(v, None, gen.config.depth) for s, v in scores.items()}


@pytest.fixture(scope="module")
def fused(parts):
    data, sources, pop = parts
    names = list(sources)
    users = np.arange(200)
    gen = CandidateGenerator(sources, pop, None, config=CandidateConfig(n=40, depth=30))
    rows = [dense(gen, int(u), data.history(int(u))[:-1], names) for u in users]
    fusion = LearnedFusion(names, depth=30, iterations=50)
    fusion.fit(
        {s: np.stack([r[2][s] for r in rows]) for s in names},
        {s: np.stack([r[1][s] for r in rows]) for s in names},
        np.log1p(pop.counts),
        np.array([data.history(int(u))[-1] for u in users]),
    )
    return CandidateGenerator(sources, pop, None, fusion, CandidateConfig(n=40, depth=30))


def test_warm_requests_equal_the_dense_fusion(fused, parts):
    data = parts[0]
    names = list(fused.sources)
    pop = np.log1p(fused.popularity.counts)
    for user in range(300, 340):
        hist = data.history(user)
        _, scores, ranks = dense(fused, user, hist, names)
        ref = fused.fusion.score(ranks, scores, pop)
        want = top_n(np.where(np.isfinite(ref), ref, -1e6 + pop / (pop.max() + 1)), 40, hist)
        c = fused.generate(user, hist)
        assert np.array_equal(c.items, want), user
        np.testing.assert_allclose(c.scores, ref[c.items], rtol=1e-5, atol=1e-6)
        for s in names:
            assert np.array_equal(c.source_ranks[s], ranks[s][c.items])
            assert np.array_equal(c.source_scores[s], scores[s][c.items])


def test_sparse_requests_equal_the_dense_rank_fusion(parts):
    data, sources, pop = parts
    config = CandidateConfig(n=40, depth=30, new_item_share=0)
    gen = CandidateGenerator(sources, pop, None, config=config)
    logpop = np.log1p(pop.counts)
    for user in range(40):
        hist = data.history(user)[-3:]
        banned, _, ranks = dense(gen, user, hist, ["transitions", "content"])
        ranks["popular"] = source_ranks(np.where(banned, -np.inf, logpop), None, 30)
        ref = fuse(ranks, {"transitions": 1.0, "content": 1.0, "popular": 1.0})
        ref[ref == 0] = -np.inf
        want = top_n(np.where(np.isfinite(ref), ref, -1e6), 40, hist)
        assert np.array_equal(gen.generate(user, hist).items, want), user


def test_a_view_ranks_only_its_top_items():
    scores = np.array([0.1, -np.inf, 0.9, 0.5, 0.5, -np.inf], dtype=np.float32)
    view = dense_view(scores, depth=3)
    assert view.top.tolist() == [2, 3, 4]
    assert view.ranks_at(np.array([4, 0, 2, 5])).tolist() == [3, 0, 1, 0]
    finite = scores[np.isfinite(scores)]
    assert view.mean == pytest.approx(finite.mean()) and view.std == pytest.approx(finite.std())
    assert SourceView(np.zeros(0, int), 0.0, 1.0, lambda i: i).ranks_at(np.array([1])) == [0]


def test_ties_at_the_cut_off_keep_the_lower_ids_whatever_the_array():
    """Popularity counts and co-occurrence sums tie often: the items a list keeps must not
    depend on whether the scores cover the catalogue or a source's own few items."""
    rng = np.random.default_rng(0)
    s = rng.integers(0, 4, 5_000).astype(np.float32)
    for depth in (1, 10, 100):
        kept = top_list(s, depth)
        assert kept.tolist() == top_n(s, depth).tolist()
        order = np.lexsort((np.arange(len(s)), -s))[:depth]
        assert kept.tolist() == order.tolist()
        some = np.flatnonzero(s >= s[kept[-1]])  # every item at or above the cut
        assert some[top_list(s[some], depth)].tolist() == kept.tolist()
    two = np.stack([s, s[::-1]])
    assert np.array_equal(source_ranks(two, None, 10)[0], source_ranks(s, None, 10))
