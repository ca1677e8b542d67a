"""One conformance suite, run against every retriever (after implicit's shared test mixin)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipelines.artifact import load_dataset, write_dataset
from pipelines.errors import ArtifactError
from pipelines.prepare import PrepareConfig, run_local
from pipelines.schema import Split
from pipelines.sources import load_source
from training.retrieval import (
    ALS,
    BPR,
    RETRIEVERS,
    Content,
    FitData,
    ItemKNN,
    MostPopular,
    PrivateCoVisits,
    RetrievalError,
    Retriever,
    SegmentPopular,
    SelfAttentive,
    Transitions,
)
from training.retrieval.base import MAX_N
from training.retrieval.fusion import _row_stats, top_list

FACTORIES = {
    "most_popular": lambda: MostPopular(),
    "recent_popular": lambda: MostPopular(window_days=30),
    "segment_popular": lambda: SegmentPopular(),
    "transitions": lambda: Transitions(),
    "als": lambda: ALS(factors=8, iterations=5),
    "bpr": lambda: BPR(factors=8, iterations=20),
    "item_knn_bm25": lambda: ItemKNN(similarity="bm25"),
    "item_knn_cosine": lambda: ItemKNN(similarity="cosine"),
    "content": lambda: Content(),
    "transitions_both_ways": lambda: Transitions(window=5, both_ways=True),
    "sasrec": lambda: SelfAttentive(dim=16, max_len=20, epochs=3),
    # The release without noise: noise on this small log would withhold every pair.
    "private_covisits": lambda: PrivateCoVisits(epsilon=None),
}
HISTORY_BASED = {
    "transitions",
    "item_knn_bm25",
    "item_knn_cosine",
    "content",
    "sasrec",
    "private_covisits",
}
POPULARITY = {"most_popular", "recent_popular", "segment_popular"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> FitData:
    root = tmp_path_factory.mktemp("syn")
    src = load_source("synthetic", synthetic_interactions=6_000, cache=root)
    write_dataset(run_local(src, PrepareConfig()), str(root / "ds"))
    return FitData.from_dataset(load_dataset(str(root / "ds")), Split.TRAIN)


@pytest.fixture(scope="module", params=list(FACTORIES))
def fitted(request, data) -> tuple[str, Retriever]:
    return request.param, FACTORIES[request.param]().fit(data)


def test_every_kind_is_registered():
    assert {f().kind for f in FACTORIES.values()} == set(RETRIEVERS)


def test_recommend_excludes_history_and_exclusions(fitted, data):
    _, model = fitted
    user = 3
    history = data.history(user)
    exclude = np.array([0, 1, 2])
    rec = model.recommend(user, history, n=10, exclude=exclude)
    assert 0 < len(rec) <= 10
    assert not set(rec.items) & set(history) and not set(rec.items) & {0, 1, 2}
    assert np.all(np.diff(rec.scores) <= 1e-6), "best first"
    assert np.isfinite(rec.scores).all()


def test_unknown_user_and_empty_history_never_raise(fitted, data):
    name, model = fitted
    history = data.history(5)
    for user in (None, 10**9):
        rec = model.recommend(user, history, n=5)
        assert len(rec) > 0  # every model can use a history
    empty = model.recommend(None, [], n=5)
    if name in POPULARITY:
        assert len(empty) == 5
    else:  # nothing to go on: an empty list, for the cold-start path to fill
        assert len(empty) == 0


def test_unknown_items_in_history_are_ignored_and_counted(fitted, data):
    _, model = fitted
    history = [*data.history(4), -1, data.n_items + 7]
    rec = model.recommend(4, history, n=5)
    assert rec.ignored_history == 2
    same = model.recommend(4, data.history(4), n=5)
    assert np.array_equal(rec.items, same.items)


@pytest.mark.parametrize("n", [0, -3, MAX_N + 1, 2.5, True])
def test_bad_n_is_a_clear_error(fitted, data, n):
    _, model = fitted
    with pytest.raises(RetrievalError, match="n must be"):
        model.recommend(1, data.history(1), n=n)


def test_similar_items_excludes_the_item(fitted):
    _, model = fitted
    rec = model.similar_items(7, n=5)
    assert 7 not in rec.items
    with pytest.raises(RetrievalError, match="unknown item"):
        model.similar_items(model.n_items + 1)


def test_save_load_round_trip(fitted, data, tmp_path):
    name, model = fitted
    model.save(tmp_path / name)
    loaded = Retriever.load(tmp_path / name, expected_dataset_version=data.dataset_version)
    assert type(loaded) is type(model) and loaded.params == model.params
    for user in (0, 11):
        a = model.recommend(user, data.history(user), n=10)
        b = loaded.recommend(user, data.history(user), n=10)
        assert np.array_equal(a.items, b.items) and np.allclose(a.scores, b.scores)
    with pytest.raises(ArtifactError, match="fitted on dataset version"):
        Retriever.load(tmp_path / name, expected_dataset_version="another")
    other = Transitions if not isinstance(model, Transitions) else ALS
    with pytest.raises(ArtifactError, match="retriever, not a"):
        other.load(tmp_path / name)


def test_incremental_update_changes_the_result(fitted, data):
    name, model = fitted
    user = 6
    history = data.history(user)
    if name in POPULARITY:
        if isinstance(model, MostPopular):
            target = int(model.recommend(None, [], n=60).items[-1])
            model.record(np.full(10_000, target))
            assert model.recommend(None, [], n=1).items[0] == target
        return
    before = model.score(user, history).copy()
    new_item = int(model.recommend(user, history, n=1).items[0])  # the user takes it
    longer = np.append(history, new_item)
    model.partial_fit_users(np.array([user]), [longer])  # CF refolds; others read history
    after = model.score(user, longer)
    assert not np.allclose(before, after, equal_nan=True)
    assert new_item not in model.recommend(user, longer, n=20).items


def test_cf_fold_in_tracks_the_fitted_user_vector(data):
    # The exact ALS user step from the fitted history lands close to the trained vector.
    als = ALS(factors=8, iterations=15).fit(data)
    u = 2
    folded = als.fold_in(data.history(u))
    cos = (
        folded @ als.user_factors[u] / np.linalg.norm(folded) / np.linalg.norm(als.user_factors[u])
    )
    assert cos > 0.95


@pytest.mark.parametrize(
    "factory", [lambda: ALS(factors=8, iterations=10), lambda: BPR(factors=8, iterations=50)]
)
def test_cf_folds_in_a_new_item_from_its_users(data, factory):
    model = factory().fit(data)
    new, unseen = data.n_items, data.n_items + 1
    # The new item is taken by the users of item 3: it should rank like item 3 for them.
    users = np.flatnonzero(data.matrix.to_scipy()[:, 3].toarray().ravel())
    model.partial_fit_items(data.n_items + 2, item_users={new: users})
    percentile = []
    for u in users:
        scores = model.score(int(u), data.history(int(u)))
        assert np.isfinite(scores[new]) and scores[unseen] == -np.inf
        percentile.append((scores > scores[new]).mean())
    assert np.mean(percentile) < 0.2  # random placement would be 0.5
    u = int(users[0])
    assert unseen not in model.recommend(u, data.history(u), n=data.n_items).items


def test_new_item_is_retrievable_through_content(data):
    model = Content().fit(data)
    text = data.item_text[10]  # a new item described exactly like item 10
    model.partial_fit_items(data.n_items + 1, [text])
    similar = model.similar_items(10, n=3)
    assert similar.items[0] == data.n_items
    rec = model.recommend(None, [10], n=5)
    assert data.n_items in rec.items


def test_unknown_parameter_is_refused():
    with pytest.raises(RetrievalError, match="unknown parameter"):
        Transitions(windw=3)


def _cyclic_walks(data: FitData, n_items: int = 30, users: int = 40, length: int = 30) -> FitData:
    """Every user walks item i -> i + 1 (mod n_items) from a random start."""
    rng = np.random.default_rng(0)
    starts = rng.integers(0, n_items, users)
    seqs = [(s + np.arange(length)) % n_items for s in starts]
    return replace(
        data,
        n_users=users,
        n_items=n_items,
        seq_items=np.concatenate(seqs).astype(np.int32),
        seq_indptr=np.arange(users + 1, dtype=np.int64) * length,
    )


def test_sasrec_learns_the_next_item_of_a_sequence(data):
    walks = _cyclic_walks(data)
    model = SelfAttentive(dim=16, max_len=10, epochs=40, batch_size=16, seed=1).fit(walks)
    hits = [
        model.recommend(None, [(last - 2) % 30, (last - 1) % 30, last], n=1).items[0]
        == (last + 1) % 30
        for last in range(30)
    ]
    assert np.mean(hits) > 0.9  # chance is 1/27
    again = SelfAttentive(dim=16, max_len=10, epochs=40, batch_size=16, seed=1).fit(walks)
    assert np.array_equal(model.score(None, [3, 4]), again.score(None, [3, 4])), "seeded"


def test_sasrec_with_a_sampled_softmax_learns_the_next_item_too(data):
    walks = _cyclic_walks(data, n_items=60)
    p = {"dim": 16, "max_len": 10, "epochs": 40, "batch_size": 16, "seed": 1}
    model = SelfAttentive(**p, loss="sampled", negatives=8).fit(walks)
    info = {"loss": "sampled", "items": 60, "negatives": 8, "item_updates": "sparse"}
    assert model.fit_info == info

    def hits(m):
        return np.mean(
            [
                m.recommend(None, [(last - 2) % 60, (last - 1) % 60, last], n=1).items[0]
                == (last + 1) % 60
                for last in range(60)
            ]
        )

    assert hits(model) > 0.8  # chance is 1/57
    # Every item row updated each batch (a dense Adam step over the table) learns it too.
    dense = SelfAttentive(**p, loss="sampled", negatives=8, item_updates="dense").fit(walks)
    assert dense.fit_info["item_updates"] == "dense" and hits(dense) > 0.8
    # A warm fit's schedule decays both optimizers' rates (the table's and the rest's).
    warm = SelfAttentive(**p, loss="sampled", negatives=8)
    warm = warm.warm_fit(walks, model, np.arange(60), share=0.05)
    assert warm.fit_info["warm_epochs"] == 2 and hits(warm) > 0.8
    with pytest.raises(RetrievalError, match="needs the sampled loss"):
        SelfAttentive(**p, loss="full", item_updates="sparse").fit(walks)
    with pytest.raises(RetrievalError, match="item_updates must be"):
        SelfAttentive(item_updates="lazy").sparse_updates(True)


def test_sasrec_starts_warm_from_a_previous_fit_with_items_renumbered(data):
    p = {"dim": 16, "max_len": 10, "epochs": 40, "batch_size": 16, "seed": 1}
    old = _cyclic_walks(data)
    previous = SelfAttentive(**p).fit(old)
    # The next data set numbers two new items first: old item i is item i + 2 now.
    new = replace(old, n_items=32, seq_items=old.seq_items + 2)
    item_map = np.concatenate([[-1, -1], np.arange(30)])

    def hits(model):
        return np.mean(
            [
                model.recommend(None, [(last - 1) % 30 + 2, last + 2], n=1).items[0]
                == (last + 1) % 30 + 2
                for last in range(30)
            ]
        )

    warm = SelfAttentive(**p).warm_fit(new, previous, item_map, share=0.05)
    cold = SelfAttentive(**{**p, "epochs": 2}).fit(new)
    assert warm.fit_info["warm_epochs"] == 2 and warm.n_items == 32
    assert hits(warm) > 0.9 and hits(cold) < 0.5
    other = SelfAttentive(**{**p, "dim": 8}).warm_fit(new, previous, item_map, share=0.05)
    assert "warm_epochs" not in other.fit_info  # another shape: a full fit


def test_a_cosine_warm_fit_decays_its_learning_rate_to_zero_and_still_learns(data):
    from training.retrieval.sequential import _warm_schedule

    p = {"dim": 16, "max_len": 10, "epochs": 40, "batch_size": 16, "seed": 1}
    old = _cyclic_walks(data)
    previous = SelfAttentive(**p).fit(old)
    item_map = np.arange(30)
    constant = SelfAttentive(**p, warm_schedule="constant", warm_learning_rate=None)
    constant = constant.warm_fit(old, previous, item_map, share=0.05)
    cosine = SelfAttentive(**p).warm_fit(old, previous, item_map, 0.05)  # the default
    assert cosine.params["warm_schedule"] == "cosine"
    assert not np.allclose(constant.arrays["items.weight"], cosine.arrays["items.weight"])
    hits = [
        cosine.recommend(None, [(i - 1) % 30, i], n=1).items[0] == (i + 1) % 30 for i in range(30)
    ]
    assert np.mean(hits) > 0.9
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=4e-3)
    schedule = _warm_schedule(opt, "cosine", 10)
    for _ in range(10):
        opt.step()
        schedule.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert _warm_schedule(opt, "constant", 10) is None
    with pytest.raises(RetrievalError, match="warm_schedule must be"):
        _warm_schedule(opt, "step", 10)


def test_sasrec_chooses_the_sampled_softmax_beyond_a_catalogue_size():
    auto = SelfAttentive(full_softmax_items=1000)
    assert auto.loss_kind(1000) == "full" and auto.loss_kind(1001) == "sampled"
    assert SelfAttentive(loss="full").loss_kind(10**6) == "full"
    with pytest.raises(RetrievalError, match="loss must be"):
        SelfAttentive(loss="bce").loss_kind(10)


def test_sasrec_reports_each_epoch_to_a_callback(data):
    seen = []
    model = SelfAttentive(dim=16, max_len=10, epochs=3, batch_size=16)
    model.fit(data, on_epoch=lambda e, m: seen.append((e, m.score(None, data.history(1)).copy())))
    assert [e for e, _ in seen] == [1, 2, 3]
    np.testing.assert_array_equal(seen[-1][1], model.score(None, data.history(1)))
    assert not np.array_equal(seen[0][1], seen[-1][1])


def test_sasrec_leaves_items_added_after_training_unscored(data):
    model = FACTORIES["sasrec"]().fit(data)
    model.partial_fit_items(data.n_items + 2)
    scores = model.score(None, data.history(1))
    assert len(scores) == data.n_items + 2 and np.all(scores[-2:] == -np.inf)
    assert np.isfinite(scores[: data.n_items]).all()
    assert np.array_equal(model.score(None, [data.n_items + 1, 5]), model.score(None, [5]))


def test_sasrec_numpy_inference_matches_the_trained_torch_network(data):
    import torch

    from training.retrieval.sequential import _Network

    model = SelfAttentive(dim=16, max_len=20, epochs=2, heads=2, layers=2).fit(data)
    net = _Network(model.trained_items, model.params)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in model.state().items()})
    net.eval()
    for user in (0, 3, 9):
        seq = data.history(user)[-20:].astype(np.int64) + 1
        with torch.inference_mode():
            expected = net.logits(net(torch.from_numpy(seq)[None])[0, -1]).numpy()
        assert np.allclose(model.score(user, data.history(user)), expected, atol=1e-4)


def test_sasrec_without_sequences_is_a_clear_error(data):
    single = replace(
        data,
        seq_items=np.arange(data.n_users, dtype=np.int32) % data.n_items,
        seq_indptr=np.arange(data.n_users + 1, dtype=np.int64),
    )
    with pytest.raises(RetrievalError, match="two interactions or more"):
        SelfAttentive(epochs=1).fit(single)


def test_sasrec_windows_cover_every_transition_and_overlap_by_the_stride(data):
    from training.retrieval.sequential import training_windows

    def transitions(windows):
        return [(a, b) for w in windows for a, b in itertools.pairwise(w) if b > 0]

    user_transitions = sum(max(len(data.history(u)) - 1, 0) for u in range(data.n_users))
    once = training_windows(data, 10)
    assert once.shape[1] == 11 and len(transitions(once)) == user_transitions
    overlapping = training_windows(data, 10, stride=5)
    assert len(overlapping) > len(once)
    assert set(transitions(overlapping)) == set(transitions(once))
    assert np.array_equal(
        overlapping[0][overlapping[0] > 0], data.history(0)[-11:].astype(np.int64) + 1
    )


def test_the_fusion_trained_a_chunk_of_users_at_a_time_is_the_same_fusion(data, monkeypatch):
    import training.stack as stack

    inner, hidden = data.holdout_last(1)
    users = np.flatnonzero([len(h) > 0 for h in hidden])
    targets = np.array([hidden[u][0] for u in users], dtype=np.int64)
    sources = {"transitions": Transitions().fit(inner), "bpr": FACTORIES["bpr"]().fit(inner)}
    whole = stack.fit_fusion(sources, inner, targets, users)
    assert np.abs(whole.weights).max() > 0.01  # it learned something to compare
    monkeypatch.setattr(stack, "FUSION_CELLS", 7 * inner.n_items)  # 7 users per chunk
    chunked = stack.fit_fusion(sources, inner, targets, users)
    # Equal up to float32 rounding: a chunk's factor scores are one matrix product, whose
    # summation order depends on how many users it holds (a weight near zero then differs
    # by a few 1e-8 in absolute terms; a different fusion differs by 1e-4 and more).
    np.testing.assert_allclose(chunked.weights, whole.weights, rtol=1e-6, atol=1e-7)
    # Beyond max_users the fusion learns from a seeded sample: bounded, and repeatable.
    a = stack.fit_fusion(sources, inner, targets, users, max_users=20)
    b = stack.fit_fusion(sources, inner, targets, users, max_users=20)
    assert np.array_equal(a.weights, b.weights)
    assert not np.allclose(a.weights, whole.weights, rtol=1e-3)


def test_score_items_is_score_at_those_items(fitted, data):
    _, model = fitted
    some = np.array([0, 5, data.n_items - 1, 3, data.n_items + 2])  # the last: unknown
    for history in (data.history(2), data.history(2)[:0]):
        full = model.score(2, history)
        # Items the history reaches (the best-scored, one of them twice) and ones it may not.
        best = np.argsort(-np.where(np.isfinite(full), full, -1e30))[:6]
        items = np.concatenate([some, best, best[:1]])
        want = np.array([full[i] if i < len(full) else -np.inf for i in items], np.float32)
        np.testing.assert_allclose(model.score_items(2, history, items), want, rtol=1e-5)


def test_score_rows_is_score_of_each_user(fitted, data):
    _, model = fitted
    users = np.array([0, 3, 2, 7])
    histories = [data.history(0), data.history(3)[:0], data.history(2), data.history(7)[:2]]
    rows = model.score_rows(users, histories)
    assert rows.shape == (4, model.n_items) and rows.dtype == np.float32
    for row, user, history in zip(rows, users, histories, strict=True):
        want = model.score(int(user), history)
        assert np.array_equal(np.isfinite(row), np.isfinite(want))
        finite = np.isfinite(want)  # equal up to float32 rounding (a product of many users)
        np.testing.assert_allclose(row[finite], want[finite], rtol=1e-5, atol=1e-6)


def test_a_warm_fit_shorter_than_an_epoch_trains_its_share_of_the_batches():
    from training.retrieval.sequential import _schedule

    p = {"warm_min_batches": 2000}
    assert _schedule(40 * 0.05, 600, True, p) == (2, 1200)  # whole epochs: as before
    assert _schedule(0.4, 600, True, p) == (1, 600)  # an epoch under the minimum: all of it
    assert _schedule(0.05, 31_000, True, p) == (1, 2000)  # 1,550 batches: the minimum
    assert _schedule(0.2, 31_000, True, p) == (1, 6200)
    assert _schedule(0.05, 31_000, False, p) == (1, 31_000)  # a cold fit: whole epochs


def test_sasrec_warm_fit_of_a_share_of_an_epoch_stops_after_those_batches(data):
    p = {"dim": 16, "max_len": 5, "epochs": 1, "batch_size": 4, "seed": 1}
    walks = _cyclic_walks(data)  # 40 users x 30 items, windows of 6: 240 windows, 60 batches
    previous = SelfAttentive(**p).fit(walks)
    warm = SelfAttentive(**p, warm_min_batches=10).warm_fit(walks, previous, np.arange(30), 0.25)
    assert warm.fit_info["warm_epochs"] == 1 and warm.fit_info["warm_batches"] == 15
    # It trained (from the previous weights): they moved, and not as far as a cold fit's.
    moved = np.abs(warm.arrays["items.weight"] - previous.arrays["items.weight"]).mean()
    assert moved > 0


@pytest.mark.parametrize("kind", ["als", "bpr"])
def test_factor_models_start_warm_only_where_the_users_are_mapped(kind, data):
    inner, _ = data.holdout_last(1)
    klass, params = {"als": ALS, "bpr": BPR}[kind], {"factors": 8, "iterations": 20}
    previous = klass(**params).fit(inner)
    users, items = np.arange(data.n_users), np.arange(data.n_items)
    warm = klass(**params).warm_fit(data, previous, items, 0.05, users)
    assert warm.fit_info == {"warm_iterations": 1}
    assert warm.user_factors.shape == previous.user_factors.shape

    def agreement(a, b):  # mean cosine of the item factors of items both fitted
        x, y = a.item_factors, b.item_factors
        return np.mean(
            (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1) + 1e-9)
        )

    # One iteration from the held-out factors stays near them; from scratch it would not.
    one = klass(**{**params, "iterations": 1}).fit(data)
    assert agreement(warm, previous) > 0.9 > agreement(one, previous)
    # Without a user map (a retrain's new dataset), a refit from scratch.
    refit = klass(**params).warm_fit(data, previous, items, 0.05)
    assert refit.fit_info is None
    if kind == "bpr":
        assert np.all(warm.user_factors[:, -1] == 1.0)  # the bias's constant kept


def test_a_warm_start_takes_known_finite_rows_and_starts_the_rest_fresh():
    from training.retrieval.cf import _start_rows

    previous = np.arange(12, dtype=np.float32).reshape(4, 3)
    previous[2] = np.nan  # an item grown in serving, never folded in

    def fresh(rng, rows, width):
        return np.full((rows, width), -1.0, np.float32)

    out = _start_rows(previous, np.array([3, -1, 2, 0, 9]), 6, np.random.default_rng(0), fresh)
    assert out.shape == (6, 3)
    np.testing.assert_array_equal(out[0], previous[3])
    np.testing.assert_array_equal(out[3], previous[0])
    assert (out[[1, 2, 4, 5]] == -1).all()  # new, NaN, out of range, past the map


@pytest.mark.parametrize(
    "factory",
    [
        lambda: ALS(factors=16, iterations=3, index_from=2, index_probes=30),
        lambda: BPR(factors=16, iterations=5, index_from=2, index_probes=30),
        lambda: SelfAttentive(dim=16, max_len=20, epochs=1, index_from=2, index_probes=30),
    ],
    ids=["als", "bpr", "sasrec"],
)
def test_indexed_models_search_like_their_dense_scores(data, factory, tmp_path):
    """From `index_from` items a model's request view comes from its item index: the same
    statistics as its dense scores, most of the same top items, and saved with the model."""
    model = factory().fit(data)
    recall = []
    for user in range(0, data.n_users, 6):
        hist = data.history(user)
        banned = np.zeros(data.n_items, dtype=bool)
        banned[hist[-5:]] = True  # more than 5% of the items banned: no index
        view = model.search(user, hist, banned, 50)
        dense = np.where(banned, -np.inf, model.score(user, hist))
        mean, std = _row_stats(dense)
        assert view.mean == pytest.approx(mean[0], rel=1e-3, abs=1e-5)
        assert view.std == pytest.approx(std[0], rel=1e-3)
        recall.append(len(np.intersect1d(view.top, top_list(dense, 50))) / 50)
        np.testing.assert_allclose(view.at(view.top), dense[view.top], rtol=1e-4, atol=1e-5)
    assert np.mean(recall) >= 0.8
    model.save(tmp_path / "m")
    again = Retriever.load(tmp_path / "m")
    assert again._index is not None
    hist = data.history(3)
    banned = np.zeros(data.n_items, dtype=bool)
    assert np.array_equal(
        again.search(3, hist, banned, 20).top, model.search(3, hist, banned, 20).top
    )
