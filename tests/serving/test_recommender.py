"""The serving logic in-process (no Ray): read-your-writes, dislikes, cold start to
personalised, new items, explanations, re-ranking and the response."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from serving.config import LiveSettings
from serving.events import Event, StoredItem
from serving.recommender import RetrievalService
from serving.rerank_service import RerankService
from serving.responses import respond
from serving.sqlite_store import SQLiteEventStore
from training.publish import load_version


@pytest.fixture
def svc(published, tmp_path):
    _, models = published
    store = SQLiteEventStore(tmp_path / "events.db")
    mv = load_version(models)
    return RetrievalService(mv, store, LiveSettings(model_root=str(models))), store, mv


def click(store, user, item, type_="click", ts=None):
    store.append([Event(user, item, type_, ts or 2e9 + len(store.events_of(user)))])


def test_an_event_changes_the_next_request(svc):
    s, store, _ = svc
    before = s.retrieve("1")
    top = before.item_ids[0]
    als = s.stack.sources["ALS"]
    u = s.catalog.user_index["1"]
    factors = als.user_factors[u].copy()
    click(store, "1", top)
    after = s.retrieve("1")
    assert top not in after.item_ids  # now history: excluded
    assert s.catalog.item_ids[after.prompt_history[-1]] == top  # the re-ranker sees it
    assert after.user_version > before.user_version
    assert not np.allclose(als.user_factors[u], factors)  # CF vector refolded
    assert after.item_ids != before.item_ids


def test_erasing_a_user_puts_back_the_trained_vectors(svc):
    s, store, _ = svc
    u = s.catalog.user_index["4"]
    trained = {n: s.stack.sources[n].user_factors[u].copy() for n in ("ALS", "BPR")}
    before = s.retrieve("4").item_ids
    click(store, "4", before[0])
    click(store, "4", before[1], "purchase")
    s.retrieve("4")
    assert not np.allclose(s.stack.sources["ALS"].user_factors[u], trained["ALS"])
    receipt = store.delete_user("4")
    assert receipt["events"] == 2
    assert s.retrieve("4").item_ids == before  # as if the events never happened
    for n, v in trained.items():
        assert np.array_equal(s.stack.sources[n].user_factors[u], v), n


def test_a_dislike_removes_the_item_for_good(svc):
    s, store, _ = svc
    target = s.retrieve("2").item_ids[0]
    click(store, "2", target, "dislike")
    assert target not in s.retrieve("2").item_ids
    click(store, "2", target, "view")  # even a later view does not bring it back
    assert target not in s.retrieve("2").item_ids[:50]


def test_demote_near_moves_look_alikes_behind_the_rest():
    from serving.recommender import demote_near

    emb = np.array([[1, 0], [0.96, 0.28], [0, 1], [0.6, 0.8]], dtype=np.float32)
    order, moved = demote_near(np.array([1, 2, 3, 9]), emb, np.array([0]), 0.9)
    assert order.tolist() == [1, 2, 3, 0] and moved == 1  # item 1 (cos .96) goes last
    order, moved = demote_near(np.array([1, 2]), emb, np.array([], dtype=np.int64), 0.9)
    assert order.tolist() == [0, 1] and moved == 0


def test_a_dislike_demotes_look_alikes_for_a_while(published, tmp_path):
    import time

    _, models = published
    mv = load_version(models)
    store = SQLiteEventStore(tmp_path / "events.db")
    s = RetrievalService(mv, store, LiveSettings(model_root=str(models), dislike_window_s=3600))
    before = s.retrieve("3")
    emb = s.stack.sources["content"].embeddings
    top = before.items[0]
    sims = emb[before.items[1:20]] @ emb[top]
    twin = before.item_ids[int(np.argmax(sims)) + 1]  # the head candidate most like the top
    s.settings = s.settings.model_copy(update={"dislike_similarity": float(sims.max()) - 1e-4})
    store.append([Event("3", before.item_ids[0], "dislike", time.time())])
    after = s.retrieve("3")
    assert before.item_ids[0] not in after.item_ids
    moved = after.ignored["demoted_near_dislikes"]
    assert moved >= 1 and twin in after.item_ids[-moved:]  # behind every other candidate
    # An old dislike still hides the item itself, but no longer its look-alikes.
    store2 = SQLiteEventStore(tmp_path / "old.db")
    old = RetrievalService(mv, store2, s.settings)
    store2.append([Event("3", before.item_ids[0], "dislike", time.time() - 7200)])
    late = old.retrieve("3")
    assert before.item_ids[0] not in late.item_ids
    assert late.ignored["demoted_near_dislikes"] == 0


def test_a_new_user_goes_from_cold_start_to_personalised(svc):
    s, store, _ = svc
    r = s.retrieve("someone-new")
    assert r.path == "cold_start" and len(r.item_ids) == 50
    assert all(e["explanation"] for e in r.explanations)
    for item in ("1", "2", "3"):  # Toy Story, GoldenEye, Four Rooms
        click(store, "someone-new", item)
    r = s.retrieve("someone-new")
    assert r.path == "sparse"
    assert not {"1", "2", "3"} & set(r.item_ids)
    for item in ("4", "5", "7", "8"):
        click(store, "someone-new", item)
    assert s.retrieve("someone-new").path == "warm"


def test_explanations_name_an_item_from_the_users_history(svc):
    s, _, _ = svc
    r = s.retrieve("3")
    hist = {s.catalog.item_ids[i] for i in s.user_state("3").history}
    named = [e for e in r.explanations if e["because"] is not None]
    assert named and all(e["because"] in hist for e in named)
    assert all(e["explanation"].startswith("because you watched") for e in named)


def test_only_candidates_that_can_be_shown_are_explained(svc):
    s, _, _ = svc
    full = s.retrieve("3")
    head = s.rerank_k
    for shown, reranked, want in ((5, True, head), (5, False, 5), (30, True, 30)):
        r = s.retrieve("3", shown=shown, reranked=reranked)
        assert r.item_ids == full.item_ids
        assert r.explanations == full.explanations[:want]
    cold = s.retrieve("nobody-yet", shown=5)  # the cold-start list is never re-ranked
    assert len(cold.explanations) == 5


def test_the_named_history_item_is_the_top_contributor(svc):
    """Faithfulness: for every "because you watched X", X is in the user's history and,
    of the recent items, removing X lowers the candidate's source score the most."""
    from serving.recommender import EXPLAIN_RECENT, HISTORY_SOURCES

    s, _, _ = svc
    checked = 0
    for user in ("3", "7", "21"):
        r = s.retrieve(user)
        hist = s.user_state(user).history
        recent = list(range(len(hist)))[-EXPLAIN_RECENT:]
        for item, e in zip(r.items, r.explanations, strict=True):
            assert set(e["source_scores"]) <= set(e["sources"])
            if e["because"] is None:
                continue
            named = s.catalog.item_index[e["because"]]
            assert named in hist
            assert e["because_source"] in HISTORY_SOURCES and e["because_source"] in e["sources"]
            model = s.stack.sources[e["because_source"]]
            full = model.score(None, hist)[item]
            loss = {p: full - model.score(None, np.delete(hist, p))[item] for p in recent}
            best = max(loss.values())
            assert best > 0
            assert any(hist[p] == named and v == best for p, v in loss.items()), (user, item)
            checked += 1
    assert checked >= 10


def test_popularity_explanations_name_the_segment_that_drove_them(svc):
    """A new user who states attributes gets popularity within them; each explanation names
    one of the user's own segments, and the one that lifts the item most."""
    s, store, _ = svc
    seg = s.stack.segment
    anonymous = s.retrieve("new-anonymous")
    assert anonymous.path == "cold_start"
    assert all("segment_popular" not in e["sources"] for e in anonymous.explanations)
    assert all(e["segment"] is None for e in anonymous.explanations)

    stated = {"age": 19, "gender": "F", "occupation": "student"}
    store.set_attributes("new-student", stated)
    r = s.retrieve("new-student")
    assert r.path == "cold_start" and r.item_ids != anonymous.item_ids
    codes = seg.encode(stated)
    named = [(i, e) for i, e in zip(r.items, r.explanations, strict=True) if e["segment"]]
    assert len(named) >= 10
    mine = {a: seg.labels[a][c] for a, c in codes.items()}
    assert mine == {"age": "18-24", "gender": "F", "occupation": "student"}
    for item, e in named:
        attr, value = e["segment"]["attribute"], e["segment"]["value"]
        assert mine[attr] == value and f"({attr}: {value})" in e["explanation"]
        lift = {a: seg.tables[a][c][item] - np.log(seg.overall[item]) for a, c in codes.items()}
        assert max(lift, key=lift.get) == attr and lift[attr] > 0
    with pytest.raises(ValueError, match="occupation: 'astronaut' is not one of"):
        seg.encode({"occupation": "astronaut"})
    with pytest.raises(ValueError, match="shoe_size: not a user attribute"):
        seg.encode({"shoe_size": 42})


def test_a_new_item_is_similar_and_recommendable_at_once(svc):
    s, store, _ = svc
    store.add_item(StoredItem("ts5", "Toy Story 5 (2026)", "", ["Animation", "Children's"]))
    sim = s.similar("1", 10)
    assert "ts5" in [x["item_id"] for x in sim]
    # No count ranks similar items: this stack's SASRec and content do.
    assert {src for x in sim for src in x["sources"]} == {"SASRec", "content"}
    click(store, "fan", "1")  # a new user who watched Toy Story
    r = s.retrieve("fan")
    assert "ts5" in r.item_ids
    e = r.explanations[r.item_ids.index("ts5")]
    assert e["explanation"].startswith("new item similar to")
    assert s.similar("no-such-item", 5) is None


def test_new_items_others_engage_with_take_the_new_item_slots(svc, monkeypatch):
    """The new-item slots go to the most engaged new items (live counts from the store, read
    every few seconds), from `new_item_min_events` events on; content fills the rest."""
    import serving.recommender as recommender

    s, store, _ = svc
    for i in range(12):
        store.add_item(StoredItem(f"new-{i}", f"Documentary {i} (2026)", "", ["Documentary"]))
    before = s.retrieve("1")
    offered = [x for x in before.item_ids if x.startswith("new-")]
    assert offered  # the slots exist: the content source's best new items
    hit = next(f"new-{i}" for i in range(12) if f"new-{i}" not in offered)
    for fan in ("a", "b"):
        click(store, fan, hit)
    monkeypatch.setattr(recommender, "NEW_ITEM_COUNTS_EVERY_S", 0.0)
    assert hit not in s.retrieve("1").item_ids  # 2 events: below the 3 that count
    click(store, "c", hit)
    after = s.retrieve("1")
    assert hit in after.item_ids
    assert after.item_ids.index(hit) == min(
        after.item_ids.index(x) for x in after.item_ids if x.startswith("new-")
    )
    # It is in the head the re-ranker reorders (its own new-item slots), where the LM can
    # judge it; a request that is not re-ranked keeps the slots at the list's end.
    assert after.item_ids.index(hit) < s.rerank_k < len(after.item_ids)
    plain = s.retrieve("1", reranked=False).item_ids
    assert plain.index(hit) >= s.rerank_k and sorted(plain) == sorted(after.item_ids)
    store.delete_user("c")  # erased: its click no longer counts
    assert hit not in s.retrieve("1").item_ids


def test_events_for_unknown_items_are_stored_and_counted(svc):
    s, store, _ = svc
    click(store, "4", "not-yet-in-catalogue")
    r = s.retrieve("4", exclude=["also-unknown"])
    assert r.ignored == {
        "unknown_item_events": 1,
        "unknown_excludes": 1,
        "demoted_near_dislikes": 0,
    }
    assert len(store.events_of("4")) == 1


def test_category_filter_and_exclusions(svc):
    s, _, _ = svc
    r = s.retrieve("5", exclude=["50"], category="Horror")
    assert "50" not in r.item_ids
    assert all("Horror" in s.catalog.categories[s.catalog.item_index[i]] for i in r.item_ids)


def test_reranked_response_orders_the_head_by_the_rerankers_scores(svc):
    s, store, mv = svc
    rr = RerankService(mv, store, LiveSettings())
    r = s.retrieve("6")
    scores = rr.score([(r.prompt_history, r.items, r.features)])[0]
    assert scores.shape == (rr.k,) and np.isfinite(scores).all()
    out = respond(r, 10, scores, "req", None, {"total": 0.01}, "v")
    assert out["stage"] == "rerank" and len(out["items"]) == 10
    got = [x["score"] for x in out["items"]]
    assert got == sorted(got, reverse=True)
    fallback = respond(r, 10, None, "req", "rerank_timeout", {}, None)
    assert fallback["stage"] == "retrieval" and fallback["fallback"] == "rerank_timeout"
    assert [x["item_id"] for x in fallback["items"]] == r.item_ids[:10]


def test_the_precompute_takes_the_most_recently_active_users_first(svc):
    cat = svc[0].catalog
    order = cat.users_by_activity()
    assert sorted(order) == sorted(cat.user_index)
    last = [int(cat._timestamps[cat._indptr[cat.user_index[u] + 1] - 1]) for u in order]
    assert last == sorted(last, reverse=True) and last[0] > last[-1]
    for a, b in itertools.pairwise(order):  # ties: the longer history first
        ia, ib = cat.user_index[a], cat.user_index[b]
        if cat._timestamps[cat._indptr[ia + 1] - 1] == cat._timestamps[cat._indptr[ib + 1] - 1]:
            assert len(cat.base_history(ia)) >= len(cat.base_history(ib))


def test_the_prompt_shows_the_history_length_the_reranker_was_trained_with(svc):
    """The test re-ranker's template shows 12 history items (not the default 10)."""
    s, _, _ = svc
    assert s.history_items == 12
    assert len(s.retrieve("1").prompt_history) == 12


def test_the_most_engaged_new_item_takes_the_shown_lists_place(svc, monkeypatch):
    """No model ranks a new item before the next refit, so the shown list keeps one place
    (`shown_new_item_rank`, 10) for the most engaged one, re-ranked or not; off at 0, and
    not in a list shorter than the place."""
    import serving.recommender as recommender
    from serving.recommender import refresh_retrieval

    s, store, _ = svc
    monkeypatch.setattr(recommender, "NEW_ITEM_COUNTS_EVERY_S", 0.0)
    for i in range(12):
        store.add_item(StoredItem(f"new-{i}", f"Documentary {i} (2026)", "", ["Documentary"]))
    hit = "new-7"
    for fan in ("a", "b", "c"):
        click(store, fan, hit)
    for reranked in (True, False):
        r = s.retrieve("1", shown=10, reranked=reranked)
        at = r.item_ids.index(hit)
        assert at >= 10  # ranked beyond the shown list by retrieval
        head = -np.arange(s.rerank_k, dtype=np.float32) if reranked else None  # keeps its order
        out = respond(r, 10, head, "req", None, {}, None)
        shown = [x["item_id"] for x in out["items"]]
        assert shown == [*r.item_ids[:9], hit]
        assert out["items"][9]["stage"] == "new_item" and out["items"][9]["explanation"]
        assert {x["stage"] for x in out["items"][:9]} == {"rerank" if reranked else "retrieval"}
        short = respond(r, 5, head, "req", None, {}, None)
        assert [x["item_id"] for x in short["items"]] == r.item_ids[:5]
    refresh_retrieval(s, LiveSettings(model_root=s.settings.model_root, shown_new_item_rank=0))
    r = s.retrieve("1", shown=10)
    out = respond(r, 10, -np.arange(s.rerank_k, dtype=np.float32), "req", None, {}, None)
    assert [x["item_id"] for x in out["items"]] == r.item_ids[:10]
    assert not any(x["item_id"].startswith("new-") for x in out["items"])
