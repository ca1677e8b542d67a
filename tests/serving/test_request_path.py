"""The request path without Ray: deadlines, fallbacks and the cache, on a published model
version, with the back-end deployments as plain coroutines. Each path's answer must fill
the one response model."""

from __future__ import annotations

import asyncio
import shutil
import time

import numpy as np
import pytest

from serving.api_models import Recommendation, recommendation_keys
from serving.config import LiveSettings
from serving.events import Event
from serving.request_path import RequestPath
from serving.responses import popularity_answer
from training.publish import current_version
from training.reranker.routing import FeatureLayer, RoutingSlice, RoutingTable


class Backends:
    """The other deployments as coroutines: a re-ranker that reverses the head (or is late,
    or fails), a cold-start deployment, and a remote retrieval that may be late or fail."""

    def __init__(self, score_s: float = 0.0, score_fails: bool = False):
        self.score_s, self.score_fails = score_s, score_fails
        self.retrieve_s, self.retrieve_fails = 0.0, False
        self.path: RequestPath | None = None
        self.calls: dict[str, int] = {"retrieve": 0, "score": 0, "cold_start": 0}

    def _task(self, coro):
        return asyncio.ensure_future(coro)

    def retrieve(self, user_id, exclude, category, version, n, k, reranked):
        self.calls["retrieve"] += 1

        async def run():
            await asyncio.sleep(self.retrieve_s)
            if self.retrieve_fails:
                raise RuntimeError("retrieval replica died")
            svc = self.path.service_for_remote
            return svc.retrieve(user_id, exclude, category, n=n, shown=k, reranked=reranked)

        return self._task(run())

    def score(self, request):
        self.calls["score"] += 1

        async def run():
            await asyncio.sleep(self.score_s)
            if self.score_fails:
                raise RuntimeError("re-ranker failed")
            head = min(20, len(request[1]))
            return np.arange(head, dtype=np.float32)  # the head, reversed

        return self._task(run())

    def cold_start(self, user_id, k, exclude):
        self.calls["cold_start"] += 1

        async def run():
            p = self.path
            return {
                "items": popularity_answer(p.popularity, p.catalog, k, exclude),
                "model": p.model.version,
            }

        return self._task(run())

    def similar(self, item_id, k):
        async def run():
            return self.path.service_for_remote.similar(item_id, k)

        return self._task(run())


@pytest.fixture
def make(published, tmp_path):
    _, models = published

    def build(backends: Backends | None = None, **settings) -> tuple[RequestPath, Backends]:
        b = backends or Backends()
        path = RequestPath(b)
        store = settings.pop("store", f"sqlite://{tmp_path / 'events.db'}")
        base = {"model_root": settings.pop("model_root", str(models)), "store": store}
        path.take(LiveSettings(**{**base, "retrieval_in_api": True}))
        # What a Retrieval replica would hold, for the remote path.
        path.service_for_remote = path.local_current
        path.take(LiveSettings(**{**base, **settings}))
        b.path = path
        return path, b

    return build


def answer(path: RequestPath, user: str, k: int = 10, exclude=(), category=None) -> dict:
    async def go():
        out = await path.recommend(user, k, list(exclude), category)
        await asyncio.gather(*path._tasks)  # the cache write and the impression
        return out

    out = asyncio.run(go())
    keys, item_keys = recommendation_keys()
    assert set(out) == keys
    assert all(set(item) == item_keys for item in out["items"])
    Recommendation.model_validate(out)
    return out


def test_the_full_pipeline_reranks_then_serves_from_the_cache(make):
    path, b = make()
    first = answer(path, "10")
    assert first["stage"] == "rerank" and first["fallback"] is None and not first["cached"]
    assert [x["stage"] for x in first["items"]] == ["rerank"] * 10
    again = answer(path, "10")
    assert again["cached"] and [x["item_id"] for x in again["items"]] == [
        x["item_id"] for x in first["items"]
    ]
    assert b.calls["score"] == 1


def test_a_late_reranker_answers_retrieval_order_on_time(make):
    path, _ = make(Backends(score_s=5.0), deadline_ms=300, deadline_margin_ms=20, cache=False)
    t = time.perf_counter()
    out = answer(path, "10")
    assert time.perf_counter() - t < 0.3
    assert out["stage"] == "retrieval" and out["fallback"] == "rerank_timeout"


def test_a_failing_reranker_answers_retrieval_order(make):
    path, _ = make(Backends(score_fails=True), cache=False)
    out = answer(path, "10")
    assert out["stage"] == "retrieval" and out["fallback"] == "rerank_error"


def test_remote_retrieval_failing_is_answered_by_the_cold_start_deployment(make):
    b = Backends()
    path, _ = make(b, retrieval_in_api=False, cache=False)
    assert answer(path, "10")["stage"] == "rerank" and b.calls["retrieve"] == 1
    b.retrieve_fails = True
    out = answer(path, "10")
    assert out["stage"] == "cold_start" and out["fallback"] == "retrieval_error"
    assert b.calls["cold_start"] == 1
    seen = set(path.seen("10"))
    assert not seen & {x["item_id"] for x in out["items"]}


def test_late_remote_retrieval_answers_popularity_here_without_a_hop(make):
    b = Backends()
    path, _ = make(b, retrieval_in_api=False, deadline_ms=200, deadline_margin_ms=20)
    b.retrieve_s = 5.0
    t = time.perf_counter()
    out = answer(path, "10")
    assert time.perf_counter() - t < 0.2
    assert out["fallback"] == "retrieval_timeout" and b.calls["cold_start"] == 0
    assert out["path"] == "fallback" and len(out["items"]) == 10


def test_remote_retrieval_is_refused_while_its_queue_is_too_deep(make):
    """Without retrieval_in_api the Api counts its calls to the Retrieval deployment and
    refuses one the queue would finish after the budget, as it does locally."""
    b = Backends()
    path, _ = make(b, retrieval_in_api=False, cache=False, deadline_ms=300, rerank=False)
    b.retrieve_s = 0.1
    assert answer(path, "10")["stage"] == "retrieval"  # times the queue: 0.1 s a call
    assert path.retrieval_queue.queued == 0

    async def burst():
        outs = await asyncio.gather(*(path.recommend(str(u), 10, [], None) for u in range(1, 7)))
        await asyncio.gather(*path._tasks)
        return outs

    outs = asyncio.run(burst())
    refused = [o for o in outs if o["fallback"] == "retrieval_overload"]
    assert refused and len(refused) < len(outs)
    assert b.calls["retrieve"] == 1 + len(outs) - len(refused)
    assert path.retrieval_queue.queued == 0  # every admitted call was counted out

    async def given_up_at_once():
        call = path.retrieve("10", [], None, None, None, 10, False, None)
        assert path.retrieval_queue.queued == 1
        call.cancel()  # before its task ever ran
        await asyncio.sleep(0.01)

    asyncio.run(given_up_at_once())
    assert path.retrieval_queue.queued == 0


def test_cold_start_users_and_routed_short_histories_fill_the_contract(make):
    path, b = make(rerank_min_history=5, cache=False)
    out = answer(path, "someone-new")
    assert out["stage"] == "cold_start" and out["path"] == "cold_start"
    assert b.calls["score"] == 0
    path.store.append([Event("short", path.catalog.item_ids[3], "click", 2e9)])
    routed = answer(path, "short")
    assert routed["routed"] == "short_history" and routed["stage"] == "retrieval"


def test_a_version_without_a_reranker_caches_and_precomputes_its_retrieval_lists(
    make, published, tmp_path
):
    """Retrieval order is such a version's normal answer, given without a hop to the
    Reranker: cached after a request, after an event and by the precompute (what lets a
    deployment that never trained a re-ranker, such as one at a million users, answer its
    active users from the cache)."""
    import json

    from serving.nearline import Nearline
    from training.publish import VERSION_FILE

    _, models = published
    root = tmp_path / "bare-models"
    shutil.copytree(models, root)
    folder = root / current_version(root)
    info = json.loads((folder / VERSION_FILE).read_text())
    (folder / VERSION_FILE).write_text(json.dumps({**info, "reranker": None}))
    shutil.rmtree(folder / "reranker")

    class NoReranker(Backends):
        def score(self, request):  # what a Reranker replica answers for such a version
            self.calls["score"] += 1
            return self._task(asyncio.sleep(0, np.zeros(0, np.float32)))

    path, b = make(NoReranker(), model_root=str(root), warm_users=3, warm_quiet_ms=0)
    assert path.model.reranker is None
    first = answer(path, "10")
    assert first["stage"] == "retrieval" and first["fallback"] is None and not first["cached"]
    again = answer(path, "10")
    assert again["cached"] and [x["item_id"] for x in again["items"]] == [
        x["item_id"] for x in first["items"]
    ]

    async def warm_then_event():
        nearline = Nearline(path)
        nearline.ensure_warming()
        await nearline._warm_task
        path.store.append([Event("10", path.catalog.item_ids[5], "click", 2e9)])
        nearline.after_events({"10"})
        await asyncio.gather(*path._tasks)
        return nearline.warm

    warm = asyncio.run(warm_then_event())
    assert warm["users"] == 3 and warm["done"] == 3 and warm["seconds"] is not None
    for user in path.catalog.users_by_activity()[:3]:
        assert path.cached(user, 10) is not None
    # The event's list was computed and cached at the user's new version.
    after = answer(path, "10")
    assert after["cached"] and path.catalog.item_ids[5] not in {
        x["item_id"] for x in after["items"]
    }
    # No request, precompute or event of such a version waited on a hop to the Reranker.
    assert b.calls["score"] == 0
    # A fallback is never cached, and a version with a re-ranker turned off caches nothing.
    assert not path.normal_answer({**first, "fallback": "retrieval_overload"})
    with_reranker, _ = make(rerank=False)
    assert not with_reranker.caches(with_reranker.settings)


@pytest.fixture
def routed(published, tmp_path):
    """The published models with a routing table in the CURRENT version's re-ranker:
    histories of 1-4 items take retrieval order, 5-19 the LM, 20 and more the feature layer."""
    _, models = published
    root = tmp_path / "routed-models"
    shutil.copytree(models, root)
    version = current_version(root)

    def part(low, high, route):
        return RoutingSlice(
            low=low,
            high=high,
            users=100,
            route=route,
            reason=f"measured: {route}",
            ndcg10={"fused": 0.1, "features": 0.1, "lm": 0.1},
            lm_vs_features=None,
            features_vs_fused=None,
        )

    slices = [part(1, 5, "retrieval"), part(5, 20, "lm"), part(20, None, "features")]
    RoutingTable(measured_on="test", slices=slices).save(root / version / "reranker")
    return root


def test_the_routing_table_sends_each_history_length_to_its_stage(make, routed):
    path, b = make(model_root=str(routed))
    svc = path.local_current
    assert len(svc.user_state("10").history) >= 20
    warm = answer(path, "10")
    assert warm["stage"] == "features" and warm["fallback"] is None and b.calls["score"] == 0
    assert warm["routed"].startswith("routing table, history 20+: measured: features")
    assert warm["versions"]["reranker"].endswith("/features")
    assert [x["stage"] for x in warm["items"]] == ["features"] * 10
    # The head in the feature layer's order: its scores, highest first.
    r = svc.retrieve("10")
    want = FeatureLayer.load(path.model.reranker).score(r.features)
    order = np.lexsort((np.arange(len(want)), -want))
    assert [x["item_id"] for x in warm["items"]] == [r.item_ids[j] for j in order[:10]]
    assert answer(path, "10")["cached"]  # the pipeline's answer for that slice
    items = path.catalog.item_ids
    path.store.append([Event("short", items[3], "click", 2e9)])
    short = answer(path, "short")
    assert short["stage"] == "retrieval" and short["routed"].startswith(
        "routing table, history 1-4"
    )
    path.store.append([Event("mid", items[i], "click", 2e9 + i) for i in range(6)])
    mid = answer(path, "mid")
    assert mid["stage"] == "rerank" and mid["routed"] is None and b.calls["score"] == 1
    text = path.metrics.render()[0].decode()
    assert 'llmrec_routing{history="20+",route="features"} 1.0' in text
    assert 'llmrec_routing{history="5-19",route="lm"} 1.0' in text
    # Routing off (an A/B arm, or an operator's choice): the LM sees every warm request.
    off, b2 = make(model_root=str(routed), routing=False, cache=False)
    assert answer(off, "10")["stage"] == "rerank" and b2.calls["score"] == 1
    assert "llmrec_routing{" not in off.metrics.render()[0].decode()


def test_similar_items_locally_and_remotely(make):
    local, _ = make()
    remote, _ = make(retrieval_in_api=False)
    item = local.catalog.item_ids[0]
    near = asyncio.run(local.similar(item, 5))
    assert near == asyncio.run(remote.similar(item, 5)) and len(near) == 5


def test_a_store_that_is_down_is_answered_from_the_models_on_time(make, tmp_path):
    """Redis killed: answers keep coming, on time, flagged (they miss the user's recent
    events), never an error; when it is back, the same replica finds it by itself."""
    from cluster.local_redis import LocalRedis

    server = LocalRedis(tmp_path / "redis").start()
    try:
        path, _ = make(store=server.url, deadline_ms=300)
        item = path.catalog.item_ids[5]
        path.store.append([Event("10", item, "click", time.time(), None, "e1")])
        assert answer(path, "10")["fallback"] is None
        server.kill()
        for user in ("10", "11", "brand-new-user"):
            t = time.perf_counter()
            out = answer(path, user)
            assert time.perf_counter() - t < 0.3
            assert out["items"] and out["fallback"] == "store_unavailable", out["fallback"]
        server.start()
        end = time.time() + 15
        while (out := answer(path, "10"))["fallback"] is not None:
            assert time.time() < end, out["fallback"]
            time.sleep(0.2)
        assert out["user_version"] == path.store.version("10") > 0  # its events again
    finally:
        server.stop()
