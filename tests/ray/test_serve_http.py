"""The Serve graph over real HTTP on a local Ray cluster, deployed from the CPU profile."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from serving.api_models import recommendation_keys
from serving.deploy import run_profile
from serving.sqlite_store import SQLiteEventStore
from tests.http_client import KeyedClient, all_scopes_key

pytestmark = pytest.mark.ray
#: every call below carries the module's API key (the server fixture makes it)
http = KeyedClient()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def handle_loop():
    """One event loop, running for the whole module, for the Serve handles the tests call
    replicas through: the tests run Serve's router on the caller's loop, as the replicas
    do, and Serve keeps each handle bound to the loop it was made on."""
    import asyncio

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="handles", daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture(scope="module")
def server(ray_cluster, published, tmp_path_factory, handle_loop):
    from ray import serve

    _, models = published
    db = tmp_path_factory.mktemp("serve") / "events.db"
    keys = db.parent / "api-keys.json"
    http.key = all_scopes_key(keys)
    port = _free_port()
    # No precompute: these tests watch requests compute their lists (one test turns it on).
    args = {
        "model_root": str(models),
        "store": f"sqlite://{db}",
        "api_keys": str(keys),
        "deadline_ms": 3000,
        "warm": False,
    }

    def deploy(wait: bool = True, **live):
        run_profile("cpu", args, user_config=live or None, port=port)
        if wait:
            wait_ready(f"http://127.0.0.1:{port}")

    deploy()
    yield f"http://127.0.0.1:{port}", db, deploy
    serve.shutdown()


def wait_ready(base: str, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            if http.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError("the graph never became ready")


def rec(base, user, **params):
    r = http.get(f"{base}/recommend/{user}", params=params, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert_contract(out)
    return out


def assert_contract(out: dict) -> None:
    """Every answer path fills the one response model, every field of it."""
    keys, item_keys = recommendation_keys()
    assert set(out) == keys, out
    assert all(set(item) == item_keys for item in out["items"]), out["items"]


def rec_at_once(base, users, k: int) -> list[dict]:
    """One request per user, all in flight together."""
    outs: list[dict] = []
    threads = [
        threading.Thread(target=lambda u=u: outs.append(rec(base, str(u), k=k))) for u in users
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outs


def post_events(base, events):
    r = http.post(f"{base}/events", json=events, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def call(loop, deployment: str, method: str, *args):
    """A method of one replica of `deployment`, through a Serve handle made on `loop`."""
    import asyncio

    from ray import serve

    async def go():
        handle = serve.get_deployment_handle(deployment, app_name="llmrec")
        return await getattr(handle, method).remote(*args)

    return asyncio.run_coroutine_threadsafe(go(), loop).result(timeout=60)


def wait_cached(base, user, k: int) -> dict:
    """The user's list once the nearline step has re-ranked and cached it."""
    end = time.time() + 10
    while not (out := rec(base, user, k=k))["cached"] and time.time() < end:
        time.sleep(0.1)
    return out


def impressions_of(db, user: str) -> int:
    import sqlite3

    who = SQLiteEventStore(db).pseudonym(user)  # ids are pseudonymised at rest
    with sqlite3.connect(db) as c:
        return c.execute("SELECT COUNT(*) FROM impressions WHERE user_id = ?", (who,)).fetchone()[0]


def wait_for_impressions(db, user: str, at_least: int = 1) -> None:
    """Impressions are written off the request path: give the background write a moment."""
    end = time.time() + 10
    while impressions_of(db, user) < at_least and time.time() < end:
        time.sleep(0.1)
    assert impressions_of(db, user) >= at_least


def test_composition_end_to_end(server):
    base, _, _ = server
    assert http.get(f"{base}/healthz").json() == {"status": "ok"}
    ready = http.get(f"{base}/readyz").json()
    assert ready["ready"] and ready["model"] == "v2"
    out = rec(base, "10", k=7)
    assert out["stage"] == "rerank" and out["path"] == "warm" and out["fallback"] is None
    assert len(out["items"]) == 7 and out["request_id"]
    item = out["items"][0]
    assert {"item_id", "title", "score", "sources", "stage", "explanation"} <= set(item)
    assert out["versions"]["model"] == "v2"
    assert {"retrieval", "rerank", "total"} <= set(out["timings_ms"])
    assert "/recommend/{user_id}" in http.get(f"{base}/openapi.json").json()["paths"]
    post = http.post(f"{base}/recommend", json={"user_id": 10, "k": 3}, timeout=30)
    assert post.status_code == 200 and len(post.json()["items"]) == 3


def test_an_event_changes_the_next_recommendation(server):
    base, _, _ = server
    first = rec(base, "11", k=10)
    top = first["items"][0]["item_id"]
    ack = post_events(base, {"user_id": "11", "item_id": top, "type": "purchase"})
    assert ack == {"stored": 1, "duplicates": 0, "unknown_items": 0}
    t = time.perf_counter()
    after = rec(base, "11", k=10)
    reflected_ms = (time.perf_counter() - t) * 1000
    assert top not in [x["item_id"] for x in after["items"]]
    assert after["user_version"] > first["user_version"]
    assert reflected_ms < 5000  # loose: the benchmark measures it


def test_duplicate_event_ids_are_ignored(server):
    base, _, _ = server
    e = {"user_id": "12", "item_id": "1", "type": "view", "event_id": "dup-1"}
    assert post_events(base, [e, e])["duplicates"] == 1
    assert post_events(base, e) == {"stored": 0, "duplicates": 1, "unknown_items": 0}


def test_a_new_user_gets_cold_start_then_personalised(server):
    base, _, _ = server
    out = rec(base, "brand-new-user", k=5)
    assert out["stage"] == "cold_start" and out["path"] == "cold_start"
    post_events(
        base,
        [{"user_id": "brand-new-user", "item_id": i, "type": "click"} for i in ("1", 2, "3")],
    )
    out = rec(base, "brand-new-user", k=5)
    # Right after the events: their nearline list, or its fresh retrieval (reflect_ms).
    assert out["stage"] == "rerank" or out["fallback"] == "nearline_pending", out
    assert out["path"] == "sparse"
    assert not {"1", "2", "3"} & {x["item_id"] for x in out["items"]}
    later = wait_cached(base, "brand-new-user", 5)
    assert later["stage"] == "rerank" and later["path"] == "sparse"


def test_stated_attributes_give_segment_popularity_until_erased(server):
    base, _, _ = server
    user, url = "new-with-attrs", f"{base}/users/new-with-attrs/attributes"
    anonymous = rec(base, user, k=10)
    assert {x["explanation"] for x in anonymous["items"]} <= {
        "popular overall",
        "new or rarely seen: picked to explore",
    }
    r = http.put(url, json={"age": 52, "gender": "M", "occupation": "retired"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["segments"] == {"age": "50-55", "gender": "M", "occupation": "retired"}
    out = rec(base, user, k=10)
    assert out["stage"] == "cold_start"
    named = [x["segment"] for x in out["items"] if x["segment"]]
    assert named and all(
        (s["attribute"], s["value"])
        in {("age", "50-55"), ("gender", "M"), ("occupation", "retired")}
        for s in named
    )
    for body, fragment in [
        ({"occupation": "astronaut"}, "body.occupation: 'astronaut' is not one of"),
        ({"shoe_size": 42}, "body.shoe_size: not a user attribute"),
        ({"age": "old"}, "body.age: a number of years"),
        (["age", 3], "body"),
    ]:
        bad = http.put(url, json=body, timeout=30)
        assert bad.status_code == 422 and fragment in str(bad.json()["detail"]), bad.text
    assert rec(base, user, k=10)["items"] == out["items"]  # the refused updates changed nothing
    receipt = http.delete(f"{base}/users/{user}", timeout=30).json()["removed"]
    assert receipt["attributes"] == 1
    assert rec(base, user, k=10)["items"] == anonymous["items"]


def test_a_new_item_appears_in_similar_items(server):
    base, _, _ = server
    r = http.post(
        f"{base}/items",
        json={
            "item_id": "toy-story-5",
            "title": "Toy Story 5 (2026)",
            "categories": ["Animation", "Children's", "Comedy"],
        },
    )
    assert r.status_code == 201
    sim = http.get(f"{base}/items/1/similar", params={"k": 10}).json()
    assert "toy-story-5" in [x["item_id"] for x in sim["items"]]
    assert http.post(f"{base}/items", json={"item_id": "1", "title": "x"}).status_code == 409
    missing = http.get(f"{base}/items/nope/similar")
    assert missing.status_code == 404 and "item_id" in missing.json()["detail"]


def test_a_dislike_is_honoured(server):
    base, _, _ = server
    top = rec(base, "13", k=5)["items"][0]["item_id"]
    post_events(base, {"user_id": "13", "item_id": top, "type": "dislike"})
    assert top not in [x["item_id"] for x in rec(base, "13", k=50)["items"]]


def test_events_for_unknown_items_are_stored_and_counted(server):
    base, db, _ = server
    ack = post_events(base, {"user_id": "14", "item_id": "future-item", "type": "view"})
    assert ack["stored"] == 1 and ack["unknown_items"] == 1
    assert [e.item_id for e in SQLiteEventStore(db).events_of("14")] == ["future-item"]


def test_nearline_cache_serves_only_current_lists(server):
    base, _, _ = server
    post_events(base, {"user_id": "15", "item_id": "1", "type": "click"})
    hit = wait_cached(base, "15", 5)  # the nearline step re-ranks in the background
    assert hit["cached"] and hit["stage"] == "rerank"
    post_events(base, {"user_id": "15", "item_id": hit["items"][0]["item_id"], "type": "click"})
    fresh = rec(base, "15", k=5)  # a newer event: the old entry may never be served
    assert fresh["user_version"] > hit["user_version"]
    assert hit["items"][0]["item_id"] not in [x["item_id"] for x in fresh["items"]]


def test_the_request_right_after_an_event_joins_its_nearline_list(server):
    """No sleep: the next request waits for the list the event started (cached, re-ranked,
    reflecting the event) instead of computing the same list a second time."""
    base, _, deploy = server
    deploy(reflect_ms=None)  # the CPU profile answers after 5 ms; this joins for good
    try:
        for n, item in enumerate(("1", "2", "3")):
            post_events(base, {"user_id": "16", "item_id": item, "type": "click"})
            out = rec(base, "16", k=10)
            assert out["cached"] and out["stage"] == "rerank", (n, out["stage"], out["fallback"])
            assert item not in [x["item_id"] for x in out["items"]]
    finally:
        deploy()


def test_reflect_ms_answers_from_the_pending_lists_fresh_retrieval(server):
    base, _, deploy = server
    deploy(reflect_ms=300, drills={"rerank_delay_ms": 1500})
    try:
        post_events(base, {"user_id": "19", "item_id": "1", "type": "click"})
        t = time.perf_counter()
        now = rec(base, "19", k=10)
        took = time.perf_counter() - t
        assert now["stage"] == "retrieval" and now["fallback"] == "nearline_pending", now
        assert "1" not in [x["item_id"] for x in now["items"]] and took < 1.2
        later = wait_cached(base, "19", 10)  # the re-ranked list lands in the cache
        assert later["cached"] and later["stage"] == "rerank"
        assert later["user_version"] == now["user_version"]
    finally:
        deploy()


def test_turning_the_reranker_off_stops_serving_its_cached_lists(server):
    base, _, deploy = server
    post_events(base, {"user_id": "17", "item_id": "1", "type": "click"})
    assert wait_cached(base, "17", 5)["cached"]
    deploy(rerank=False)
    try:
        out = rec(base, "17", k=5)
        assert not out["cached"] and out["stage"] == "retrieval"
    finally:
        deploy()


def test_precomputed_lists_answer_returning_users_until_their_next_event(
    server, published, tmp_path
):
    """The precompute re-ranks the most active users' lists while the graph is idle: they
    are answered from the cache with the list a request would compute, and an event makes
    that list unservable at once."""
    from pipelines.artifact import load_dataset
    from serving.catalog import Catalog
    from training.publish import load_version

    base, _, deploy = server
    top = Catalog(load_dataset(load_version(published[1]).dataset_uri)).users_by_activity()[:6]
    deploy(warm=True, warm_users=5, store=f"sqlite://{tmp_path / 'warm.db'}")
    try:
        # Ready means warm: the precompute is over when /readyz first says ready.
        w = http.get(f"{base}/readyz").json()["warm"]
        assert w["model"] == "v2" and w["users"] == w["done"] == 5 and w["seconds"] is not None
        metrics = http.get(f"{base}/metrics").text
        assert "llmrec_warm_users 5.0" in metrics
        lag = re.search(r"^llmrec_loop_lag_seconds ([0-9.e+-]+)$", metrics, re.M)
        assert lag is not None and 0 <= float(lag.group(1)) < 1
        for user in top[:5]:
            hit = rec(base, user, k=10)
            assert hit["cached"] and hit["stage"] == "rerank" and hit["user_version"] == 0
            # An exclude list is never answered from the cache: this one is computed now.
            computed = rec(base, user, k=10, exclude="no-such-item")
            assert not computed["cached"] and computed["stage"] == "rerank"
            assert [x["item_id"] for x in hit["items"]] == [x["item_id"] for x in computed["items"]]
        assert not rec(base, top[5], k=10)["cached"]  # past warm_users
        clicked = hit["items"][0]["item_id"]
        post_events(base, {"user_id": top[4], "item_id": clicked, "type": "click"})
        after = rec(base, top[4], k=10)
        assert after["user_version"] > 0
        assert clicked not in [x["item_id"] for x in after["items"]]
    finally:
        deploy()


def nearline_counts(base: str) -> dict[str, float]:
    text = http.get(f"{base}/metrics").text
    found = re.findall(r'^llmrec_nearline_total\{result="(\w+)"\} ([0-9.e+]+)$', text, re.M)
    return {k: float(v) for k, v in found}


def test_a_burst_of_events_past_the_rerankers_pace_is_not_queued_nearline(server):
    """Nearline re-ranks beyond a deadline's worth of queued work are skipped (the users'
    next requests compute their lists), so a burst cannot build a backlog without end."""
    base, _, deploy = server
    deploy(deadline_ms=400, drills={"rerank_delay_ms": 300})
    try:
        rec(base, "199", k=5)  # the re-ranker is timed: a few hundred ms a job now
        before = nearline_counts(base)
        burst = [{"user_id": str(u), "item_id": "1", "type": "click"} for u in range(200, 230)]
        post_events(base, burst)
        end = time.time() + 30
        while True:
            now = nearline_counts(base)
            done = {k: now.get(k, 0) - before.get(k, 0) for k in ("cached", "skipped")}
            if sum(done.values()) >= len(burst) or time.time() > end:
                break
            time.sleep(0.2)
        assert sum(done.values()) == len(burst), (before, now)
        assert done["cached"] >= 1 and done["skipped"] >= len(burst) // 2, done
        out = rec(base, "229", k=5)  # a skipped user still sees their event
        assert out["user_version"] > 0 and "1" not in [x["item_id"] for x in out["items"]]
    finally:
        deploy()


def test_overload_is_shed_to_retrieval_on_time(server):
    base, _, deploy = server
    deploy(shed_inflight=1, cache=False, drills={"rerank_delay_ms": 400})
    try:
        outs = rec_at_once(base, range(90, 94), k=5)
        shed = [o for o in outs if o["fallback"] == "overload"]
        assert len(outs) == 4 and 1 <= len(shed) <= 3
        assert all(o["stage"] == "retrieval" and o["timings_ms"]["total"] < 300 for o in shed)
        assert all(o["stage"] == "rerank" for o in outs if o["fallback"] is None)
    finally:
        deploy()


def test_a_retrieval_queue_past_the_deadline_answers_popularity_at_once(server):
    """A slow retrieval thread: the requests it could not serve in time are answered from
    popularity without waiting, and none is past its deadline."""
    base, _, deploy = server
    deploy(deadline_ms=400, rerank=False, cache=False, drills={"retrieval_delay_ms": 150})
    try:
        first = rec(base, "95", k=5)  # times the queue: ~150 ms a job
        assert first["stage"] == "retrieval", (first["fallback"], first["timings_ms"])
        outs = rec_at_once(base, range(96, 102), k=5)
        refused = [o for o in outs if o["fallback"] == "retrieval_overload"]
        assert len(outs) == 6 and 1 <= len(refused) <= 5, [o["fallback"] for o in outs]
        assert all(o["stage"] == "cold_start" and len(o["items"]) == 5 for o in refused)
        assert all(o["timings_ms"]["total"] < 100 for o in refused)  # no wait, no hop
        assert all(o["timings_ms"]["total"] < 400 for o in outs)
        assert all(o["stage"] == "retrieval" for o in outs if o["fallback"] is None)
    finally:
        deploy()


def test_a_loop_too_far_behind_answers_at_once_and_still_reads_your_writes(server):
    """A blocked event loop (the drill a loaded machine stands for): requests not in the
    cache get popularity without awaiting any stage, on time, and it leaves out the items
    the user just acted on."""
    base, _, deploy = server
    deploy(deadline_ms=200, drills={"loop_stall_ms": 150})
    try:
        end = time.time() + 20
        out = rec(base, "lagging-1", k=5)
        while out["fallback"] != "loop_lag" and time.time() < end:
            time.sleep(0.2)  # the probe has to see the lag first
            out = rec(base, "lagging-1", k=5)
        assert out["fallback"] == "loop_lag" and out["stage"] == "cold_start"
        top = out["items"][0]["item_id"]
        post_events(base, {"user_id": "lagging-1", "item_id": top, "type": "click"})
        outs = [rec(base, "lagging-1", k=5), rec(base, "7", k=5)]
        # Popularity, the retrieval the event's nearline step has already done, or the
        # list that step re-ranked and cached when it finished first: each reflects it.
        assert outs[0]["fallback"] in ("loop_lag", "nearline_pending") or (
            outs[0]["cached"] and outs[0]["user_version"] >= 1
        ), outs[0]
        assert outs[1]["fallback"] == "loop_lag"
        assert top not in [x["item_id"] for x in outs[0]["items"]]
        assert all(len(o["items"]) == 5 and o["timings_ms"]["total"] < 50 for o in outs)
    finally:
        deploy()


def test_deleting_a_user_removes_their_events_and_state(server):
    base, db, _ = server
    post_events(base, [{"user_id": "gone", "item_id": "1", "type": "click"}] * 2)
    rec(base, "gone")
    wait_for_impressions(db, "gone")
    r = http.delete(f"{base}/users/gone").json()
    assert r["removed"]["events"] == 2 and r["removed"]["impressions"] >= 1
    assert SQLiteEventStore(db).events_of("gone") == []
    assert impressions_of(db, "gone") == 0
    assert rec(base, "gone")["stage"] == "cold_start"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "fragment"),
    [
        (
            "post",
            "/events",
            {"data": "{not json", "headers": {"content-type": "application/json"}},
            422,
            "JSON",
        ),
        (
            "post",
            "/events",
            {"json": {"user_id": "1", "item_id": "1", "type": "like"}},
            422,
            "type",
        ),
        (
            "post",
            "/events",
            {"json": {"user_id": [1], "item_id": "1", "type": "view"}},
            422,
            "user_id",
        ),
        (
            "post",
            "/events",
            {"json": {"user_id": "1", "item_id": 1.5, "type": "view"}},
            422,
            "item_id",
        ),
        ("post", "/events", {"json": []}, 422, "empty"),
        (
            "post",
            "/events",
            {"json": [{"user_id": "1", "item_id": "1", "type": "view"}] * 1001},
            413,
            "at most 1000",
        ),
        ("get", "/recommend/1", {"params": {"k": 0}}, 422, "k"),
        (
            "get",
            "/recommend/1",
            {"params": {"k": 101}},
            422,
            "k: Input should be less than or equal to 100",
        ),
        ("get", "/recommend/1", {"params": {"k": "ten"}}, 422, "k"),
        ("post", "/recommend", {"json": {"user_id": 1.5}}, 422, "user_id"),
        ("post", "/items", {"json": {"item_id": "x"}}, 422, "title"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_field(server, method, path, kwargs, status, fragment):
    base, db, _ = server
    before = SQLiteEventStore(db).stats()["events"]
    r = getattr(http, method)(f"{base}{path}", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    assert fragment in r.text
    assert SQLiteEventStore(db).stats()["events"] == before  # nothing stored, nothing lost


def test_the_reranker_timing_out_or_raising_falls_back(server):
    base, _, deploy = server
    try:
        deploy(deadline_ms=400, drills={"rerank_delay_ms": 5000})
        t = time.perf_counter()
        out = rec(base, "16", k=5, exclude="1")  # exclude: skips the nearline cache
        assert (time.perf_counter() - t) < 2.5
        assert out["stage"] == "retrieval" and out["fallback"] == "rerank_timeout"
        assert len(out["items"]) == 5
        deploy(drills={"rerank_fail": True})
        # In place: the replica may still sleep on the call given up above, and calls
        # behind it time out (on time) until it is done.
        end = time.time() + 10
        while (out := rec(base, "16", k=5, exclude="1"))["fallback"] == "rerank_timeout":
            assert out["timings_ms"]["total"] < 3000 and time.time() < end
        assert out["stage"] == "retrieval" and out["fallback"] == "rerank_error"
    finally:
        deploy()
    assert rec(base, "16", k=5, exclude="1")["stage"] == "rerank"


def test_hot_swap_without_dropping_requests(server):
    base, _, deploy = server
    errors, versions = [], set()
    stop = threading.Event()

    def load():
        while not stop.is_set():
            try:
                r = http.get(f"{base}/recommend/17", params={"exclude": "1"}, timeout=30)
                if r.status_code != 200:
                    errors.append(r.status_code)
                else:
                    versions.add(r.json()["versions"]["model"])
            except requests.RequestException as e:
                errors.append(str(e))

    th = threading.Thread(target=load)
    th.start()
    try:
        deploy(version="v1")
        end = time.time() + 10  # the Api replica reconfigures in place, within moments
        while rec(base, "17", exclude="1")["versions"]["model"] != "v1":
            assert time.time() < end
            time.sleep(0.1)
    finally:
        stop.set()
        th.join()
        deploy()
    assert not errors
    assert versions >= {"v1"}
    assert rec(base, "17", exclude="1")["versions"]["model"] == "v2"


def test_publishing_moves_a_latest_deployment_without_a_redeploy(server, published):
    """`version: latest` replicas watch CURRENT: pointing it elsewhere (what `llmrec publish`
    does last) changes the served version within a few watch periods, with no errors."""
    from training.publish import point_current

    base, _, deploy = server
    _, models = published
    deploy(watch_s=0.5)
    assert rec(base, "18", exclude="1")["versions"]["model"] == "v2"
    seen, errors = [], []
    try:
        point_current(models, "v1")
        end = time.time() + 30
        while time.time() < end:
            r = http.get(f"{base}/recommend/18", params={"exclude": "1"}, timeout=30)
            if r.status_code != 200:
                errors.append(r.status_code)
                continue
            seen.append(r.json()["versions"]["model"])
            if seen[-3:] == ["v1"] * 3:
                break
            time.sleep(0.2)
        assert seen[-3:] == ["v1"] * 3, seen
        assert not errors
        assert http.get(f"{base}/readyz", timeout=10).json()["model"] == "v1"
    finally:
        point_current(models, "v2")
        deploy()
    assert rec(base, "18", exclude="1")["versions"]["model"] == "v2"


def test_an_experiment_assigns_variants_and_attributes_events(server):
    from serving.experiments import Experiment, assign

    base, db, deploy = server
    exp = {
        "name": "rerank-on-off",
        "salt": "t1",
        "variants": [
            {"name": "control", "share": 0.5},
            {"name": "no-rerank", "share": 0.5, "settings": {"rerank": False}},
        ],
    }
    deploy(experiment=exp)
    try:
        seen = set()
        for u in map(str, range(30, 50)):
            out = rec(base, u, k=5, exclude="1")
            variant = out["experiment"]["variant"]
            assert out["experiment"]["name"] == "rerank-on-off"
            assert variant == assign(Experiment.model_validate(exp), u).name
            assert out["stage"] == ("rerank" if variant == "control" else "retrieval")
            assert out["fallback"] is None
            seen.add(variant)
        assert seen == {"control", "no-rerank"}
        out = rec(base, "31", k=5)
        click = {"user_id": "31", "item_id": out["items"][2]["item_id"], "type": "click"}
        post_events(base, {**click, "request_id": out["request_id"]})
        wait_for_impressions(db, "31", 2)
        shown, events = SQLiteEventStore(db).experiment_log("rerank-on-off")
        mine = [i for i in shown if i.request_id == out["request_id"]]
        assert len(mine) == 1 and mine[0].items == [x["item_id"] for x in out["items"]]
        assert mine[0].variant == out["experiment"]["variant"]
        assert [e.request_id for e in events] == [out["request_id"]]
    finally:
        deploy()
    assert rec(base, "31", k=5)["experiment"] is None


def test_variants_compare_model_versions_and_candidate_counts(server):
    """One replica set serves v2 (the base), v1 and a shorter candidate list side by side;
    each response names the version that served it and logs it with the impression."""
    from serving.experiments import Experiment, assign

    base, db, deploy = server
    exp = {
        "name": "versions",
        "salt": "t2",
        "variants": [
            {"name": "control", "share": 0.4},
            {"name": "previous-model", "share": 0.3, "settings": {"version": "v1"}},
            {"name": "fewer-candidates", "share": 0.3, "settings": {"candidates": 20}},
        ],
    }
    deploy(experiment=exp)
    try:
        seen = set()
        for u in map(str, range(60, 80)):
            out = rec(base, u, k=30, exclude="1")
            variant = assign(Experiment.model_validate(exp), u).name
            assert out["experiment"]["variant"] == variant
            assert out["stage"] == "rerank" and out["fallback"] is None
            model = "v1" if variant == "previous-model" else "v2"
            assert out["versions"]["model"] == model
            assert out["versions"]["reranker"].startswith(model + "/")
            assert len(out["items"]) == (20 if variant == "fewer-candidates" else 30)
            seen.add(variant)
        assert len(seen) == 3
        wait_for_impressions(db, u)
        shown, _ = SQLiteEventStore(db).experiment_log("versions")
        assert {(i.variant, i.model) for i in shown} == {
            ("control", "v2"),
            ("previous-model", "v1"),
            ("fewer-candidates", "v2"),
        }
    finally:
        deploy()


def test_short_histories_are_routed_to_retrieval(server):
    base, _, deploy = server
    deploy(rerank_min_history=3)
    try:
        post_events(base, [{"user_id": "short-1", "item_id": i, "type": "click"} for i in "12"])
        short = rec(base, "short-1", k=5)
        assert short["stage"] == "retrieval" and short["routed"] == "short_history"
        post_events(base, {"user_id": "short-1", "item_id": "3", "type": "click"})
        longer = wait_cached(base, "short-1", 5)  # right after the event: nearline_pending
        assert longer["stage"] == "rerank" and longer["routed"] is None
    finally:
        deploy()


def test_no_raw_user_id_reaches_the_database(server):
    base, db, _ = server
    user = "alice-private-9f3"
    out = rec(base, user, k=5)
    click = {"user_id": user, "item_id": "50", "type": "click"}
    post_events(base, {**click, "request_id": out["request_id"]})
    rec(base, user, k=5)
    wait_for_impressions(db, user, 2)
    for f in db.parent.glob(f"{db.name}*"):  # the database, its WAL and shared memory
        if not f.name.endswith(".key"):
            assert user.encode() not in f.read_bytes(), f.name
    assert len(SQLiteEventStore(db).events_of(user)) == 1  # still found by its owner's id


def test_logs_hold_no_raw_user_id_or_event_text(server):
    """Every log file of the cluster (proxy, replicas, controller, workers, raylet),
    after traffic that walks the warning paths too: a failing re-ranker, an unknown item,
    a bad event."""
    import ray

    base, _, deploy = server
    user, text = "bob-private-4c1", "gift-for-bobs-sister"
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    deploy(drills={"rerank_fail": True})
    try:
        out = rec(base, user, k=5)
        http.post(f"{base}/recommend", json={"user_id": user, "k": 3}, timeout=30)
        post_events(
            base,
            [
                {
                    "user_id": user,
                    "item_id": "7",
                    "type": "click",
                    "event_id": text,
                    "request_id": out["request_id"],
                },
                {"user_id": user, "item_id": f"{text}-item", "type": "view"},
            ],
        )
        # exclude: computed now, not the event's nearline list (reflect_ms answers that one
        # from retrieval before its re-rank is even tried)
        assert rec(base, user, k=5, exclude="1")["fallback"] == "rerank_error"
        bad = {"user_id": user, "item_id": "7", "type": text}
        assert http.post(f"{base}/events", json=bad, timeout=30).status_code == 422
        http.delete(f"{base}/users/{user}", timeout=30)
    finally:
        deploy()
    # The scan reaches the replicas' logs: the failure it caused is logged there.
    api_logs = "".join(f.read_text(errors="replace") for f in logs.rglob("replica_*Api*.log"))
    assert "re-ranker failed, answering from retrieval" in api_logs
    for f in (f for f in logs.rglob("*") if f.is_file()):
        data = f.read_bytes()
        for secret in (user, text):
            assert secret.encode() not in data, f"{secret!r} in {f}"


def test_acknowledged_events_survive_killing_the_serving_processes(server):
    import psutil

    base, db, _ = server
    acked = [
        post_events(
            base,
            {"user_id": "durable", "item_id": str(i), "type": "view", "event_id": f"durable-{i}"},
        )
        for i in range(1, 21)
    ]
    assert sum(a["stored"] for a in acked) == 20
    # Ray titles each replica's process "ray::ServeReplica:<app>:<deployment>".
    replicas = {
        p.pid: " ".join(p.info["cmdline"] or [])
        for p in psutil.process_iter(["cmdline"])
        if "ServeReplica:llmrec:" in " ".join(p.info["cmdline"] or [])
    }
    names = {re.search(r"ServeReplica:llmrec:(\w+)", c).group(1) for c in replicas.values()}
    assert {"EventStore", "Api", "Retrieval"} <= names
    for pid in replicas:
        os.kill(pid, signal.SIGKILL)
    wait_ready(base)
    assert len(SQLiteEventStore(db).events_of("durable")) == 20
    out = rec(base, "durable", k=10)
    assert not {str(i) for i in range(1, 21)} & {x["item_id"] for x in out["items"]}


def test_readyz_says_ready_only_once_the_first_answers_will_be_normal(server, published, tmp_path):
    """While the precompute runs, /readyz answers 503 with its progress; once it says ready,
    the precomputed users' first requests are answered from the cache, not degraded."""
    from pipelines.artifact import load_dataset
    from serving.catalog import Catalog
    from training.publish import load_version

    base, _, deploy = server
    n = 150
    top = Catalog(load_dataset(load_version(published[1]).dataset_uri)).users_by_activity()[:n]
    deploy(wait=False, warm=True, warm_users=n, store=f"sqlite://{tmp_path / 'ready.db'}")
    try:
        not_ready, end = 0, time.time() + 120
        while (r := http.get(f"{base}/readyz", timeout=10)).status_code != 200:
            body = r.json()
            assert r.status_code == 503 and body["ready"] is False and body["reason"], body
            not_ready += 1
            assert time.time() < end, body
            time.sleep(0.05)
        assert not_ready > 0  # the precompute was seen in progress, and held readiness back
        w = r.json()["warm"]
        assert w["users"] == w["done"] == n and w["seconds"] is not None
        first = [rec(base, user, k=10) for user in top[:20]]
        assert all(o["cached"] and o["stage"] == "rerank" and o["fallback"] is None for o in first)
    finally:
        deploy()


def test_the_retrieval_deployment_answers_when_retrieval_is_not_in_the_api(server, handle_loop):
    """`retrieval_in_api: false`: candidates come from the Retrieval replicas (a hop), with
    read-your-writes and similar items as in the Api."""
    base, _, deploy = server
    before = call(handle_loop, "Retrieval", "stats")["retrievals"]
    deploy(retrieval_in_api=False, cache=False)
    try:
        out = rec(base, "30", k=5)
        assert out["stage"] == "rerank" and out["path"] == "warm" and out["fallback"] is None
        clicked = out["items"][0]["item_id"]
        post_events(base, {"user_id": "30", "item_id": clicked, "type": "click"})
        after = rec(base, "30", k=5)
        assert after["user_version"] > out["user_version"]
        assert clicked not in [x["item_id"] for x in after["items"]]
        similar = http.get(f"{base}/items/{clicked}/similar", params={"k": 3}, timeout=30)
        assert similar.status_code == 200 and len(similar.json()["items"]) == 3
        assert call(handle_loop, "Retrieval", "stats")["retrievals"] >= before + 2
    finally:
        deploy()


def test_every_live_setting_reaches_every_replica(server, handle_loop, tmp_path):
    """A user_config change of every live setting (but the version and the experiment,
    tested apart, and `rerank`, whose off switch is tested apart) is what each replica and
    each loaded service act on afterwards; batching and torch threads too."""
    from serving.config import LiveSettings
    from tests.live_changes import every_field_changed

    _, _, deploy = server
    now = LiveSettings.model_validate(call(handle_loop, "Api", "live_settings"))
    changes = every_field_changed(now, f"sqlite://{tmp_path / 'live.db'}")
    changes.pop("rerank")
    deploy(**changes)
    try:
        want = LiveSettings.model_validate({**now.model_dump(), **changes})
        want = want.model_dump(mode="json")
        for name in ("Api", "Retrieval", "Reranker", "ColdStart", "EventStore"):
            got = call(handle_loop, name, "live_settings")
            services = got.pop("services", {})
            batching, threads = got.pop("batching", None), got.pop("torch_threads", None)
            assert got == want, name  # the Reranker's own user_config is overridden too
            if name == "Reranker":
                assert batching == {
                    "max_batch_size": want["rerank_batch_size"],
                    "batch_wait_timeout_s": want["rerank_batch_wait_ms"] / 1000,
                }
                assert threads == want["rerank_threads"]
            assert all(s == want for s in services.values()), name
    finally:
        deploy()
