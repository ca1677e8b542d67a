"""One suite for every event store: SQLite and Redis (a real server) answer the same
inputs with the same answers, erasure receipts and retention counts included."""

from __future__ import annotations

import itertools
import multiprocessing as mp

from serving.events import Event, StoredItem, open_store
from serving.experiments import Impression


def ev(user="u", item="i", type_="click", ts=1.0, event_id=None, request_id=None, value=None):
    return Event(user, item, type_, ts, value, event_id, request_id)


def test_appends_duplicates_and_versions(store_url):
    s = open_store(store_url)
    assert s.append([ev(event_id="a"), ev(item="j", event_id="b", value=4.5)]) == (2, 0)
    # Repeated ids are skipped, in a later batch and within one.
    assert s.append([ev(event_id="a"), ev(item="k"), ev(item="x", event_id="c")]) == (2, 1)
    assert s.append([ev(item="y", event_id="d"), ev(item="z", event_id="d")]) == (1, 1)
    again = open_store(store_url)  # another handle (another process would do the same)
    got = again.events_of("u")
    assert [e.item_id for e in got] == ["i", "j", "k", "x", "y"]
    assert got[1].value == 4.5 and got[0].event_id == "a" and got[2].event_id is None
    v = again.version("u")
    assert v > 0 and again.version("nobody") == 0 and again.events_of("nobody") == []
    s.append([ev(item="l")])
    assert again.version("u") > v  # a new event always moves the user's version on
    assert s.append([]) == (0, 0)


def test_events_come_back_oldest_first_by_timestamp_then_arrival(store_url):
    s = open_store(store_url)
    s.append([ev(item="late", ts=5.0), ev(item="early", ts=1.0), ev(item="tie", ts=5.0)])
    assert [e.item_id for e in s.events_of("u")] == ["early", "late", "tie"]


def test_unicode_and_odd_ids_round_trip(store_url):
    s = open_store(store_url)
    user, item = "ユーザー 😀 {tag}:/'\"", "film – é/ü {x}"
    s.append([ev(user=user, item=item, event_id="é-1", request_id="r/1")])
    s.set_attributes(user, {"city": "Zürich"})
    s.cache_put(user, s.version(user), {"user_id": user, "items": ["ü"]})
    (e,) = s.events_of(user)
    assert (e.user_id, e.item_id, e.event_id, e.request_id) == (user, item, "é-1", "r/1")
    assert s.attributes(user) == {"city": "Zürich"}
    assert s.cache_get(user, s.version(user)) == {"items": ["ü"]}  # no raw id at rest
    assert s.events_by_pseudonym(s.pseudonym(user))[0].user_id == s.pseudonym(user)
    assert s.events_of("ユーザー") == []


def test_erasure_removes_everything_about_the_user_and_counts_it(store_url):
    s = open_store(store_url)
    s.append([ev(event_id="e1", request_id="r1"), ev(item="j"), ev(user="other")])
    s.cache_put("u", s.version("u"), {"items": []})
    s.set_attributes("u", {"age": 30})
    s.set_attributes("other", {"age": 40})
    s.log_impression(Impression("r1", "u", ["i"], "rerank", "v1", 1.0, "x", "a"))
    s.log_impression(Impression("r2", "other", ["i"], "rerank", "v1", 1.0, "x", "a"))
    before = s.stats()
    assert s.delete_user("u") == {
        "events": 2,
        "cached_lists": 1,
        "impressions": 1,
        "attributes": 1,
    }
    assert s.events_of("u") == [] and s.version("u") == 0 and s.attributes("u") == {}
    assert s.cache_get("u", 0) is None
    assert s.attributes("other") == {"age": 40} and len(s.events_of("other")) == 1
    after = s.stats()
    assert after["events"] == before["events"] - 2 and after["users"] == 1
    assert after["impressions"] == 1 and after["cached_lists"] == 0
    shown, attributed = s.experiment_log("x")
    assert [i.request_id for i in shown] == ["r2"] and attributed == []
    assert s.delete_user("u") == dict.fromkeys(before.keys() - {"users", "items_added"}, 0) | {
        "attributes": 0
    }
    # Its event ids are gone with it: the same id is a new event now.
    assert s.append([ev(event_id="e1")]) == (1, 0)


def test_cache_serves_only_its_version_and_never_goes_back(store_url):
    s = open_store(store_url)
    s.cache_put("u", 2, {"v": 2, "user_id": "u"})
    assert s.cache_get("u", 2) == {"v": 2} and s.cache_get("u", 3) is None
    s.cache_put("u", 1, {"v": 1})  # a slow, older computation finishing late
    assert s.cache_get("u", 2) == {"v": 2}
    s.cache_put("u", 3, {"v": 3})
    assert s.cache_get("u", 3) == {"v": 3} and s.stats()["cached_lists"] == 1
    # What the request path reads: the user's version and the entry only if it is current.
    assert s.current_cache("u") == (0, None)
    s.append([ev(user="w")])
    v = s.version("w")
    s.cache_put("w", v, {"v": "now"})
    assert s.current_cache("w") == (v, {"v": "now"}) and s.current_cache("x") == (0, None)
    s.append([ev(user="w", item="j")])
    assert s.current_cache("w") == (s.version("w"), None)  # a newer event: stale


def test_items_added_in_order_once(store_url):
    s = open_store(store_url)
    assert s.add_item(StoredItem("x", "X", "", ["a"]))
    assert not s.add_item(StoredItem("x", "X2", "", []))
    s.add_item(StoredItem("y", "Y", "text", []))
    assert s.items() == [StoredItem("x", "X", "", ["a"]), StoredItem("y", "Y", "text", [])]
    assert [i.item_id for i in s.items(after=1)] == ["y"] and s.items(after=2) == []
    assert s.stats()["items_added"] == 2


def test_attributes_are_replaced_not_merged(store_url):
    s = open_store(store_url)
    s.set_attributes("u", {"age": 30, "city": "Oslo"})
    s.set_attributes("u", {"age": 31})
    assert s.attributes("u") == {"age": 31} and s.attributes("nobody") == {}


def test_retention_removes_only_old_raw_events(store_url):
    s = open_store(store_url)
    s.append([ev(item="old", ts=100.0, event_id="o"), ev(item="new", ts=300.0)])
    s.append([ev(user="gone", item="old", ts=50.0, request_id="r1")])
    s.log_impression(Impression("r1", "gone", ["a"], "rerank", "v1", 100.0))
    s.log_impression(Impression("r2", "u", ["a"], "rerank", "v1", 300.0))
    v = s.version("u")
    assert s.purge_before(200.0) == {"events": 2, "impressions": 1}
    assert [e.item_id for e in s.events_of("u")] == ["new"] and s.version("u") == v
    assert s.version("gone") == 0 and s.events_of("gone") == []
    assert s.stats() | {"items_added": 0} == {
        "events": 1,
        "users": 1,
        "items_added": 0,
        "cached_lists": 0,
        "impressions": 1,
    }
    assert s.append([ev(item="again", ts=400.0, event_id="o")]) == (1, 0)  # its id went with it
    assert s.purge_before(200.0) == {"events": 0, "impressions": 0}


def test_the_experiment_log_attributes_events_to_impressions(store_url):
    s = open_store(store_url)
    s.log_impression(Impression("r1", "u", ["a", "b"], "rerank", "v1", 1.0, "x", "control"))
    s.log_impression(Impression("r2", "w", ["c"], "retrieval", "v1", 2.0, "x", "treatment"))
    s.log_impression(Impression("r3", "u", ["d"], "rerank", "v1", 3.0, "y", "a"))
    s.log_impression(Impression("r1", "u", ["z"], "rerank", "v2", 9.0, "x", "control"))  # once
    s.append([ev(item="a", request_id="r1"), ev(user="w", item="c", request_id="r2")])
    s.append([ev(item="d", request_id="r3"), ev(item="q"), ev(item="b", request_id="r1")])
    shown, events = s.experiment_log("x")
    assert [(i.request_id, i.items, i.variant) for i in shown] == [
        ("r1", ["a", "b"], "control"),
        ("r2", ["c"], "treatment"),
    ]
    assert shown[0].user_id == s.pseudonym("u")  # as stored: pseudonyms
    assert [(e.item_id, e.request_id) for e in events] == [("a", "r1"), ("c", "r2"), ("b", "r1")]
    assert events[0].user_id == s.pseudonym("u")
    everything, all_events = s.experiment_log(None)
    assert len(everything) == 3 and len(all_events) == 4
    assert s.stats()["impressions"] == 3


def test_both_stores_give_the_same_answers(tmp_path, redis_url):
    """The same workload on each store: every answer, receipt and count equal."""

    def run(url: str) -> list:
        s = open_store(url)
        out: list = []
        for i in range(30):
            user = f"user-{i % 4}"
            out.append(s.append([ev(user, f"it{i}", "view", float(i % 7), f"id{i % 25}")]))
            out.append(s.version(user))
            if i % 5 == 0:
                s.cache_put(user, s.version(user), {"items": [i]})
                s.log_impression(Impression(f"r{i}", user, [f"it{i}"], "rerank", "v", float(i)))
        out.append([(e.item_id, e.timestamp) for e in s.events_of("user-1")])
        out += [s.cache_get(f"user-{j}", s.version(f"user-{j}")) for j in range(4)]
        out.append(s.stats())
        out.append(s.delete_user("user-2"))
        out.append(s.purge_before(3.0))
        out.append(s.stats())
        return out

    assert run(f"sqlite://{tmp_path / 'e.db'}") == run(redis_url)


def _writer(url: str, who: int, n: int, queue) -> None:
    s = open_store(url)
    seen = []
    for i in range(n):
        # Each writer's own ids, and ids both writers send (only one of each is stored).
        s.append([Event("same", f"w{who}-{i}", "click", float(i), None, f"w{who}-{i}")])
        s.append([Event("same", f"both-{i}", "click", float(i), None, f"both-{i}")])
        seen.append(s.version("same"))
    queue.put(seen)


def test_concurrent_writers_lose_nothing_and_duplicate_nothing(store_url):
    open_store(store_url)  # created (and its pseudonym key) before the writers race
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(store_url, w, 60, queue)) for w in (0, 1)]
    for p in procs:
        p.start()
    observed = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    events = open_store(store_url).events_of("same")
    ids = [e.event_id for e in events]
    assert len(ids) == len(set(ids)) == 180  # 60 + 60 own, 60 shared stored once
    for seen in observed:  # every writer saw the user's version only move forward
        assert all(a < b for a, b in itertools.pairwise(seen))


def test_export_reads_every_event_up_to_the_high_water_mark_in_pages(store_url):
    s = open_store(store_url)
    assert s.high_water() == 0 and list(s.export_events(0)) == []
    users = [f"user {i}" for i in range(7)]
    s.append([ev(user=u, item=f"i{j}", ts=float(j)) for u in users for j in range(3)])
    mark = s.high_water()
    s.append([ev(user="late", item="x")])  # after the mark: not exported
    pages = list(s.export_events(mark, page=4))
    got = [e for p in pages for e in p]
    assert len(pages) >= 2 and all(len(p) for p in pages)
    assert len(got) == 21 and len({e.seq for e in got}) == 21
    assert all(0 < e.seq <= mark for e in got)
    # Under pseudonyms only: the raw ids never leave the store.
    assert {e.user_id for e in got} == {s.pseudonym(u) for u in users}
    assert s.high_water() == mark + 1
    # Read back per user, events carry the same sequence numbers.
    assert {e.seq for e in s.events_of("user 0")} <= {e.seq for e in got}


def test_erasure_is_listed_by_pseudonym_and_the_mark_never_goes_back(store_url):
    s = open_store(store_url)
    s.append([ev(user="gone", item="a"), ev(user="kept", item="b")])
    mark = s.high_water()
    assert s.erasures() == {}
    s.delete_user("gone")
    erased = s.erasures()
    assert list(erased) == [s.pseudonym("gone")] and erased[s.pseudonym("gone")] > 1e9
    assert s.high_water() == mark  # erasing does not hand a sequence number back
    assert [e.user_id for p in s.export_events(mark) for e in p] == [s.pseudonym("kept")]


def test_item_counts_follow_appends_erasure_and_retention(store_url):
    s = open_store(store_url)
    s.append(
        [
            ev(user="a", item="new", ts=1.0, event_id="1"),
            ev(user="a", item="new", ts=1.0, event_id="1"),  # a repeat: counted once
            ev(user="b", item="new", type_="rating", ts=5.0, value=4.0),
            ev(user="c", item="new", type_="dislike", ts=5.0),  # not engagement
            ev(user="c", item="other", type_="view", ts=5.0),
        ]
    )
    assert s.item_counts(["new", "other", "never"]) == {"new": 2, "other": 1}
    assert s.item_counts([]) == {}
    s.delete_user("b")
    assert s.item_counts(["new", "other"]) == {"new": 1, "other": 1}
    s.delete_user("c")  # a dislike erased does not lower the counts
    assert s.item_counts(["new", "other"]) == {"new": 1}
    s.append([ev(user="d", item="new", ts=10.0)])
    s.purge_before(2.0)  # a's event goes, d's stays
    assert open_store(store_url).item_counts(["new"]) == {"new": 1}
