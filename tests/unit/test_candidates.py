"""Candidate generation per request, on real ML-100k: routing, filters, tags, new items."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from training.candidates import CandidateConfig, CandidateGenerator
from training.retrieval import MostPopular, SegmentPopular
from training.retrieval.base import RetrievalError


@pytest.fixture
def parts(candidate_parts):
    return candidate_parts


@pytest.fixture
def gen(parts):
    _, sources, pop, seg = parts
    return CandidateGenerator(sources, pop, seg, config=CandidateConfig(n=30))


def test_warm_user_gets_fused_tagged_candidates(gen, parts):
    data = parts[0]
    hist = data.history(0)
    c = gen.generate(0, hist)
    assert c.path == "warm" and len(c.items) == 30
    assert not set(c.items) & set(hist)
    assert set(c.source_ranks) == {"transitions", "als", "content"}
    assert all(c.sources_of(k) for k in range(10)), "top candidates name their sources"
    k = 0
    for s in c.sources_of(k):
        assert c.source_ranks[s][k] > 0 and np.isfinite(c.source_scores[s][k])


def test_sparse_user_uses_transitions_and_content(gen, parts):
    hist = parts[0].history(1)[-3:]
    c = gen.generate(None, hist)
    assert c.path == "sparse" and set(c.source_ranks) == {"transitions", "content"}
    assert len(c.items) == 30


def test_popularity_in_the_sparse_fusion_pulls_popular_items_up(parts):
    data, sources, pop, seg = parts
    hist = data.history(1)[-1:]
    plain = CandidateGenerator(
        sources, pop, seg, config=CandidateConfig(n=30, sparse_popularity=0.0)
    )
    mixed = CandidateGenerator(sources, pop, seg, config=CandidateConfig(n=30))
    a, b = plain.generate(None, hist), mixed.generate(None, hist)
    assert a.path == b.path == "sparse" and len(b.items) == 30
    assert not set(b.items) & set(hist)
    assert set(b.source_ranks) == {"transitions", "content"}  # popularity names no source
    counts = pop.counts
    assert counts[b.items[:10]].mean() > counts[a.items[:10]].mean()
    warm = data.history(0)
    assert np.array_equal(plain.generate(0, warm).items, mixed.generate(0, warm).items)


def test_the_sparse_prior_can_count_each_users_first_items(parts):
    data, sources, pop, seg = parts
    hist = data.history(1)[-1:]
    every = CandidateGenerator(sources, pop, seg, config=CandidateConfig(n=30))
    config = CandidateConfig(n=30, sparse_popularity_counts="first_items")
    first = CandidateGenerator(sources, pop, seg, config=config)
    a, b = every.generate(None, hist), first.generate(None, hist)
    assert a.path == b.path == "sparse" and not set(b.items) & set(hist)
    # With the prior dominating the fusion, each list's head follows its own counts (at the
    # default weight the margin is within ties of the text scores).
    heavy = {"n": 30, "sparse_popularity": 50.0}
    by_every = CandidateGenerator(sources, pop, seg, config=CandidateConfig(**heavy))
    config_first = CandidateConfig(**heavy, sparse_popularity_counts="first_items")
    by_first = CandidateGenerator(sources, pop, seg, config=config_first)
    a, b = by_every.generate(None, hist), by_first.generate(None, hist)
    overall = seg.overall
    assert overall[b.items[:10]].mean() > overall[a.items[:10]].mean()
    assert pop.counts[a.items[:10]].mean() > pop.counts[b.items[:10]].mean()
    # without a segment model bounding contributions, the option falls back to every one
    plain = CandidateGenerator(sources, pop, None, config=config).generate(None, hist)
    assert np.array_equal(
        plain.items, CandidateGenerator(sources, pop, None).generate(None, hist, n=30).items
    )


@pytest.mark.parametrize("user", [None, 10**9, 5])
def test_no_history_takes_the_cold_start_path(gen, user):
    c = gen.generate(user, [])
    assert c.path == "cold_start" and len(c.items) == 30
    assert c.explored.sum() == 3  # 10% exploration
    assert len(set(c.items)) == 30
    again = gen.generate(user, [])
    assert np.array_equal(c.items, again.items), "deterministic per user"


def test_a_user_with_no_attribute_gets_first_items_popularity(parts):
    """No stated attribute: the segment model's overall histogram (each user's first items,
    the private release) when it bounds contributions; plain popularity when it does not."""
    data, sources, pop, _ = parts
    bounded = SegmentPopular(epsilon=None).fit(data)
    unbounded = SegmentPopular(epsilon=None, max_items_per_user=None).fit(data)
    config = CandidateConfig(n=30, exploration_share=0.0)
    first = CandidateGenerator(sources, pop, bounded, config=config).generate(None, [])
    every = CandidateGenerator(sources, pop, unbounded, config=config).generate(None, [])
    assert first.path == every.path == "cold_start" and set(first.source_ranks) == {"popular"}
    assert np.array_equal(first.items, np.argsort(-bounded.overall, kind="stable")[:30])
    assert np.array_equal(every.items, np.argsort(-pop.counts, kind="stable")[:30])
    assert not np.array_equal(first.items[:10], every.items[:10])


def test_segment_popularity_differs_between_segments(gen, parts):
    _, _, _, seg = parts
    codes = seg.codes["gender"]
    f, m = int(np.flatnonzero(codes == 0)[0]), int(np.flatnonzero(codes == 1)[0])
    assert not np.array_equal(gen.generate(f, []).items[:10], gen.generate(m, []).items[:10])


def test_exclusions_filters_and_unknown_items(gen, parts):
    hist = parts[0].history(2)
    first = gen.generate(2, hist)
    exclude = first.items[:5]
    allowed = np.ones(gen.n_items, dtype=bool)
    allowed[first.items[5:10]] = False
    c = gen.generate(2, [*hist, -4, 10**7], exclude=exclude, allowed=allowed)
    assert not set(c.items) & set(first.items[:10])
    assert c.ignored_history == 2
    with pytest.raises(RetrievalError):
        gen.generate(2, hist, n=0)


def test_a_new_item_is_reachable_at_once(parts):
    data, sources, _, _ = parts
    content = copy.deepcopy(sources["content"])  # grown below: the fixture's stays as fitted
    new = data.n_items
    content.partial_fit_items(new + 1, [data.item_text[50]])
    popularity = MostPopular().fit(data)
    popularity.partial_fit_items(new + 1)
    gen = CandidateGenerator(
        {"transitions": sources["transitions"], "content": content},
        popularity,
        None,
        config=CandidateConfig(n=20),
    )
    assert new in gen.generate(None, [50]).items  # sparse user who just watched its twin
    # Cold-start users: the unseen item gets exploration slots, with no history at all.
    shown = [new in (c := gen.generate(u, [])).items[c.explored] for u in range(200)]
    assert 0 < sum(shown) < 200


def with_unseen(pop, n: int):
    """A copy of the fitted popularity in which the `n` least popular items were never
    interacted with (as items added since the fit), and those items."""
    popularity = copy.deepcopy(pop)
    unseen = np.argsort(popularity.counts)[:n]
    popularity.counts = popularity.counts.copy()
    popularity.counts[unseen] = 0
    return popularity, unseen


def test_warm_lists_keep_slots_for_new_items_chosen_by_content(parts):
    """The fusion learned on warm items ranks an item nobody has interacted with far down;
    the last `new_item_share` of the slots go to such items, the content source's best."""
    data, sources, pop, seg = parts
    popularity, unseen = with_unseen(pop, 40)
    hist = data.history(0)
    fresh = set(unseen) - set(hist)
    kept = CandidateGenerator(sources, popularity, seg, config=CandidateConfig(n=30))
    plain = CandidateGenerator(
        sources, popularity, seg, config=CandidateConfig(n=30, new_item_share=0)
    )
    with_new, without = kept.generate(0, hist), plain.generate(0, hist)
    assert len(with_new.items) == 30 and not set(with_new.items) & set(hist)
    assert with_new.items[:27].tolist() == without.items[:27].tolist()  # the head is kept
    tail = with_new.items[27:]
    assert set(tail) <= fresh  # 3 slots (10% of 30), each an unseen item
    content = sources["content"].score(0, hist)
    best = sorted(fresh - set(without.items[:27]), key=lambda i: (-content[i], i))[:3]
    assert tail.tolist() == best
    assert len(set(with_new.items)) == 30


def test_new_item_slots_take_the_most_engaged_new_items_first(parts):
    """Live counts of new items (events stored since the model's data) order the new-item
    slots; content similarity breaks ties and fills the slots no engaged item takes."""
    data, sources, pop, seg = parts
    popularity, unseen = with_unseen(pop, 40)
    hist = data.history(0)
    config = CandidateConfig(n=30, new_item_min_events=1)
    gen = CandidateGenerator(sources, popularity, seg, config=config)
    by_content = gen.generate(0, hist).items[27:]
    content = sources["content"].score(0, hist)
    head = set(gen.generate(0, hist).items[:27])
    pool = [int(i) for i in unseen if i not in set(hist) | head]
    worst = sorted(pool, key=lambda i: (content[i], -i))[:2]  # content ranks them last
    live = np.zeros(gen.n_items)
    live[worst[0]], live[worst[1]] = 5, 2
    gen.live_counts = live
    tail = gen.generate(0, hist).items[27:]
    assert tail[:2].tolist() == [worst[0], worst[1]]
    assert tail[2] == by_content[0]  # the best by content fills the last slot
    live[worst[1]] = 2  # below `new_item_min_events` (3): as if none
    live[worst[0]] = 5
    gen.config = CandidateConfig(n=30, new_item_min_events=3)
    tail = gen.generate(0, hist).items[27:]
    assert tail[0] == worst[0] and worst[1] not in tail
    gen.live_counts = np.zeros(gen.n_items)  # nothing engaged: the content order
    assert gen.generate(0, hist).items[27:].tolist() == by_content.tolist()
    live[hist[0]] = 100  # an item of the user's own history is never offered again
    gen.live_counts = live
    assert hist[0] not in gen.generate(0, hist).items


def test_a_reranked_head_ends_with_new_item_slots_of_its_own(parts):
    """With `head` (what a re-ranker reorders) the head is the list of that length, new-item
    slots included, and the rest of the same candidates follow: a new item can reach the
    re-ranked list, and the request still gets its n distinct candidates."""
    data, sources, pop, seg = parts
    popularity, _ = with_unseen(pop, 40)
    hist = data.history(0)
    gen = CandidateGenerator(sources, popularity, seg, config=CandidateConfig(n=30))
    whole = gen.generate(0, hist).items
    short = gen.generate(0, hist, n=10).items
    headed = gen.generate(0, hist, head=10).items
    assert headed[:10].tolist() == short.tolist()
    assert gen.unseen()[headed[9]]  # round(0.1 * 10) = 1 slot of its own
    assert sorted(headed.tolist()) == sorted(whole.tolist()) and len(set(headed)) == 30
    assert headed[10:].tolist() == [i for i in whole if i not in set(short)]
    assert gen.generate(0, hist, head=30).items.tolist() == whole.tolist()
