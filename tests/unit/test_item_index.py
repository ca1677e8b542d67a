"""The content source's item index: probed lists find the exact top items, the moments give
the exact mean and spread, and a request through it fuses like one over every item."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from training.retrieval import ALS, Content
from training.retrieval.fusion import _row_stats, top_list
from training.retrieval.item_index import ItemIndex, list_count


def clustered(n: int, d: int = 24, centres: int = 40, seed: int = 0) -> np.ndarray:
    """Unit vectors around a few centres, as text embeddings of a catalogue cluster."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d))
    v = c[rng.integers(0, centres, n)] + 0.4 * rng.normal(size=(n, d))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered(3_000)


def test_every_item_is_in_exactly_one_list(vectors):
    index = ItemIndex.build(vectors)
    assert len(index.centroids) == list_count(3_000) == 219
    assert sorted(index.order.tolist()) == list(range(3_000))
    assert index.bounds[0] == 0 and index.bounds[-1] == 3_000
    # probing every list returns every item
    assert len(index.probe(vectors[0], 10_000)) == 3_000


def test_probed_lists_hold_the_exact_top_items(vectors):
    index = ItemIndex.build(vectors)
    recall = []
    for q in vectors[:50]:
        exact = top_list(vectors @ q, 50)
        cand = index.probe(q, 24)
        found = cand[top_list(vectors[cand] @ q, 50)]
        recall.append(len(np.intersect1d(exact, found)) / 50)
        assert len(cand) < len(vectors) / 3  # a fraction of the catalogue is scored
    assert np.mean(recall) >= 0.9


def test_moments_give_the_exact_mean_and_spread(vectors):
    index = ItemIndex.build(vectors)
    q = vectors[7] + 0.5 * vectors[8]
    total, squares = index.moments(q)
    s = (vectors @ q).astype(np.float64)
    assert total == pytest.approx(s.sum(), rel=1e-6)
    assert squares == pytest.approx(s @ s, rel=1e-6)


def fitted(vectors: np.ndarray, index_from: int) -> Content:
    data = SimpleNamespace(n_items=len(vectors), dataset_version="test")  # what a fit reads
    return Content(recent=3, index_from=index_from, index_probes=24).with_embeddings(vectors, data)


def test_content_search_matches_its_dense_scores(vectors):
    indexed = fitted(vectors, index_from=1_000)
    assert indexed.search(None, np.array([1]), np.zeros(3_000, bool), 10) is not None
    assert (
        fitted(vectors, index_from=0).search(None, np.array([1]), np.zeros(3_000, bool), 10) is None
    )
    hist = np.array([5, 17, 230])
    banned = np.zeros(3_000, dtype=bool)
    banned[hist] = True
    view = indexed.search(None, hist, banned, 50)
    dense = np.where(banned, -np.inf, indexed.score(None, hist))
    mean, std = _row_stats(dense)
    assert view.mean == pytest.approx(mean[0], rel=1e-4)
    assert view.std == pytest.approx(std[0], rel=1e-4)
    assert not set(view.top) & set(hist)
    assert len(np.intersect1d(view.top, top_list(dense, 50))) >= 45
    some = np.array([0, 5, 99, 2_999])
    np.testing.assert_allclose(view.at(some), dense[some], rtol=1e-5, atol=1e-6)


def test_items_added_after_the_index_are_searched_too(vectors):
    c = fitted(vectors[:2_500], index_from=1_000)
    c.embeddings = np.vstack([c.embeddings, vectors[2_500:]])  # as `partial_fit_items` grows it
    c.n_items = 3_000
    q = 2_900
    view = c.search(None, np.array([q]), np.eye(3_000, dtype=bool)[q], 20)
    assert view.top[0] in set(
        top_list(np.where(np.arange(3_000) == q, -np.inf, vectors @ vectors[q]), 3)
    )
    dense = np.where(np.arange(3_000) == q, -np.inf, c.score(None, np.array([q])))
    assert view.mean == pytest.approx(_row_stats(dense)[0][0], rel=1e-4)


def test_a_narrow_filter_scores_every_item(vectors):
    c = fitted(vectors, index_from=1_000)
    banned = np.ones(3_000, dtype=bool)
    banned[:100] = False
    assert c.search(None, np.array([1]), banned, 10) is None


def test_the_index_is_saved_with_the_model(vectors, tmp_path):
    c = fitted(vectors, index_from=1_000)
    c.save(tmp_path / "content")
    again = Content.load(tmp_path / "content")
    assert np.array_equal(again._index.order, c._index.order)
    banned = np.zeros(3_000, dtype=bool)
    a = c.search(None, np.array([3]), banned, 10)
    b = again.search(None, np.array([3]), banned, 10)
    assert np.array_equal(a.top, b.top)


def factors(index_from: int, n_items: int = 3_000) -> ALS:
    """An ALS model with given factors (what a fit leaves), indexed from `index_from`."""
    rng = np.random.default_rng(1)
    model = ALS(factors=16, index_from=index_from, index_probes=40)
    model.n_items = n_items
    model.set_state(
        {
            "user_factors": rng.normal(size=(50, 16)).astype(np.float32),
            "item_factors": (
                clustered(n_items, d=16, seed=2) * rng.uniform(0.5, 2, (n_items, 1))
            ).astype(np.float32),
        }
    )
    return model


def test_factor_models_search_their_item_index():
    model = factors(index_from=1_000)
    assert model._index is not None and factors(index_from=0)._index is None
    hist = np.array([3, 4])
    banned = np.zeros(3_000, dtype=bool)
    banned[hist] = True
    recall = []
    for user in range(20):
        view = model.search(user, hist, banned, 50)
        dense = np.where(banned, -np.inf, model.score(user, hist))
        mean, std = _row_stats(dense)
        assert view.mean == pytest.approx(mean[0], rel=1e-4, abs=1e-6)
        assert view.std == pytest.approx(std[0], rel=1e-4)
        recall.append(len(np.intersect1d(view.top, top_list(dense, 50))) / 50)
        some = np.array([0, 3, 2_999])
        np.testing.assert_allclose(view.at(some), dense[some], rtol=1e-5, atol=1e-6)
    assert np.mean(recall) >= 0.8
    # an unknown user is folded in from the history
    assert model.search(None, hist, banned, 10) is not None


def test_items_grown_without_factors_are_unscorable_in_the_index():
    model = factors(index_from=1_000)
    model.partial_fit_items(3_010)  # ten new items, no interactions: NaN rows
    banned = np.zeros(3_010, dtype=bool)
    view = model.search(0, np.array([1]), banned, 3_010)
    assert not set(view.top) & set(range(3_000, 3_010))
    dense = model.score(0, np.array([1]))
    assert view.mean == pytest.approx(_row_stats(dense)[0][0], rel=1e-4, abs=1e-6)


def test_a_catalogue_smaller_than_its_list_count_still_indexes():
    tiny = clustered(6, d=4)
    index = ItemIndex.build(tiny)
    assert len(index.centroids) <= 6 and sorted(index.order.tolist()) == list(range(6))
