"""The request path of `/recommend`, without Ray: the cache, the deadline, admission and the
fallbacks. Every answer is on time: a stage that cannot finish before the deadline (less a
margin for answering) is given up, and the stage before it answers, flagged.

    cache hit ─────────────────────────────────────────────> answer (cached)
    retrieval ── late / refused / failed ──> popularity ───> answer (cold_start, fallback)
        └──> re-rank ── late / shed / failed ─────────────> answer (retrieval order, flagged)
                └─────────────────────────────────────────> answer (rerank)

The back ends are reached through `Backends` (Serve's deployment handles in the graph, plain
coroutines in the unit tests); retrieval runs in this process when `retrieval_in_api`."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from serving.admission import (
    LoopLag,
    WorkerQueue,
    counted,
    deadline_margin,
    settled_within,
    within,
)
from serving.config import LiveSettings
from serving.events import StoreUnavailable, shared_store
from serving.experiments import Experiment, Impression, Variant, assign
from serving.local_retrieval import LocalRetrieval
from serving.metrics import Metrics
from serving.recommender import RetrievalService, Retrieved
from serving.responses import RANKED, PopularOrder, fallback_answer, popularity_answer, respond
from serving.stage_outcomes import Backends, Lagging, Overloaded, best_effort, fallback_reason
from training.publish import ModelVersion, load_version
from training.reranker.routing import RoutingTable

log = logging.getLogger("ray.serve")


def _delayed(fn: Callable[[], Any], seconds: float) -> Any:
    time.sleep(seconds)  # a slow retrieval, for the deadline tests and drills
    return fn()


class RequestPath:
    """One Api replica's request path: the model version it serves, its own retrieval
    services (with `retrieval_in_api`), and the queues admission reads."""

    settings: LiveSettings

    def __init__(self, backends: Backends, metrics: Metrics | None = None):
        self.backends = backends
        self.metrics = metrics or Metrics()
        self.inflight = 0
        self.last_request = 0.0
        self.model: ModelVersion | None = None
        self._tasks: set[asyncio.Task] = set()
        # Per user, the nearline computation of their next list, and its retrieval: resolved
        # before its re-rank starts (what a request right after an event answers from).
        self.pending: dict[str, asyncio.Task] = {}
        self.fresh: dict[str, asyncio.Future] = {}
        self.local = LocalRetrieval()  # with retrieval_in_api: retrieval in this process
        self.rerank_queue = WorkerQueue()  # calls the re-ranker has not answered
        # calls the Retrieval deployment has not answered (without retrieval_in_api)
        self.retrieval_queue = WorkerQueue()
        self.lag = LoopLag()

    def take(self, settings: LiveSettings) -> bool:
        """Load what `settings` name; whether that loaded or dropped model objects."""
        from pipelines.artifact import load_dataset
        from serving.catalog import Catalog
        from training.stack import fallback_popularity, load_segment

        store = shared_store(settings.store)
        model = load_version(settings.model_root, settings.version)
        reloaded = self.model is None or model.path != self.model.path
        if reloaded:
            self.catalog = Catalog(load_dataset(model.dataset_uri), store)
            # What stated user attributes are checked against (None: the data had none).
            self.segment = load_segment(model.path / "stack")
            # The answer of last resort, computed here without a hop when even the
            # cold-start deployment cannot answer within the deadline.
            self.popularity = PopularOrder(fallback_popularity(model.path / "stack", self.segment))
        reloaded = self.local.take(settings) or reloaded
        self.settings, self.store, self.model = settings, store, model
        routing = RoutingTable.load(model.reranker) if settings.routing else None
        self.metrics.show_routing(routing)
        self.rerank_queue.restart_timing()
        self.retrieval_queue.restart_timing()
        return reloaded

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- local work --------------------------------------------------------------------------

    @property
    def local_current(self) -> RetrievalService | None:
        """The retrieval service of the served version in this process (None: remote)."""
        return self.local.current

    def retrieve(
        self,
        user_id: str,
        exclude: list[str],
        category: str | None,
        version: str | None,
        n: int | None,
        k: int,
        reranked: bool,
        budget_s: float | None,
    ) -> Any:
        """An awaitable retrieval of candidates for a list of `k` (`reranked`: the re-ranker
        may reorder the head): in this process (one hop fewer) or through the Retrieval
        deployment, as `retrieval_in_api` says. Locally, a retrieval the queue would finish
        after `budget_s` is refused at once (`Overloaded`)."""
        if self.local.current is None:
            # The Retrieval deployment runs a call on its loop, one after another, and goes
            # on with a call its caller gave up: without admission every call of a queue
            # deeper than the deadline allows times out, and the work is still done.
            queue = self.retrieval_queue
            if budget_s is not None and not queue.admits(budget_s):
                raise Overloaded
            call = self.backends.retrieve(user_id, exclude, category, version, n, k, reranked)
            return counted(call, queue)
        self.local.admit(budget_s)
        svc = self.local.service(version)
        run = partial(svc.retrieve, user_id, exclude, category, n=n, shown=k, reranked=reranked)
        if self.settings.drills.retrieval_delay_ms:
            run = partial(_delayed, run, self.settings.drills.retrieval_delay_ms / 1000)
        return self.local.run(run, timed=True)

    async def similar(self, item_id: str, k: int) -> list[dict] | None:
        if self.local.current is not None:
            return await self.local.run(partial(self.local.current.similar, item_id, k), False)
        return await self.backends.similar(item_id, k)

    def margin_s(self, s: LiveSettings) -> tuple[float, bool]:
        """What each stage leaves before the deadline for answering, and whether the event
        loop lags too far behind for any stage to be awaited (`deadline_margin`)."""
        lag = self.lag.recent_s(time.perf_counter()) if s.margin_lag_factor else 0.0
        return deadline_margin(
            s.deadline_ms / 1000, s.deadline_margin_ms / 1000, lag, s.margin_lag_factor
        )

    # -- answers -----------------------------------------------------------------------------

    def has_reranker(self, version: str | None = None) -> bool:
        """Whether `version` (None: the one this replica serves) has a re-ranker to ask;
        another version's is for the Reranker deployment to say."""
        return version is not None or self.model is None or self.model.reranker is not None

    def caches(self, s: LiveSettings) -> bool:
        """Whether lists are cached (and precomputed) under settings `s`: with the cache
        on, and the re-ranker on where the version has one (off, its lists are not
        served). A version without a re-ranker caches its retrieval lists."""
        return s.cache and self.model is not None and (s.rerank or not self.has_reranker())

    def normal_answer(self, out: dict[str, Any]) -> bool:
        """Whether `out` is the version's normal answer, the one worth caching: re-ranked
        (by the LM or the feature layer), or in retrieval order where the version has no
        re-ranker to rank it; never a fallback."""
        if out["fallback"]:
            return False
        return out["stage"] in RANKED or (out["stage"] == "retrieval" and not self.has_reranker())

    def cached(self, user_id: str, k: int) -> dict[str, Any] | None:
        try:
            _, hit = self.store.current_cache(user_id)
        except StoreUnavailable:  # a miss: the request computes its answer (flagged)
            return None
        if hit is None or hit["versions"]["model"] != self.model.version or len(hit["items"]) < k:
            return None
        hit["items"] = hit["items"][:k]
        hit["user_id"] = user_id
        hit["cached"] = True
        return hit

    def fresh_answer(
        self, user_id: str, k: int, request_id: str, start: float
    ) -> dict[str, Any] | None:
        """The retrieval the pending nearline computation has done for the user's newest
        event, in retrieval order: the event reflected now, the re-ranked list next time."""
        fresh = self.fresh.get(user_id)
        if fresh is None or not fresh.done() or fresh.cancelled():
            return None
        r = fresh.result()
        try:
            if r.user_version != self.store.version(user_id):
                return None
        except StoreUnavailable:
            return None
        timings = {"total": time.perf_counter() - start}
        return respond(r, k, None, request_id, "nearline_pending", timings, None)

    def seen(self, user_id: str) -> list[str]:
        """Every item the user has an event for, in the dataset or the store (dislikes
        included): what a popularity answer leaves out."""
        base = self.catalog.base_history(self.catalog.index_of(user_id))
        ids = self.catalog.item_ids
        try:
            stored = [e.item_id for e in self.store.events_of(user_id)]
        except Exception as e:  # the answer of last resort must not fail with the store
            log.warning("popularity answer without the user's stored events: %s", e)
            stored = []
        return [ids[i] for i in base] + stored

    async def recommend(
        self, user_id: str, k: int, exclude: list[str], category: str | None
    ) -> dict[str, Any]:
        s = self.settings
        start = self.last_request = time.perf_counter()
        request_id = uuid.uuid4().hex
        exp = s.experiment  # this request's experiment, even if a redeploy changes it now
        variant = assign(exp, user_id) if exp else None
        if variant is not None and variant.settings:
            s = s.model_copy(update=variant.settings)
        deadline_s = s.deadline_ms / 1000  # the metrics count answers past it
        self.inflight += 1
        self.metrics.inflight.set(self.inflight)
        try:
            plain = not exclude and category is None
            # Cached lists were ranked with the base settings: a variant that changes them
            # computes its own, and turning the re-ranker off stops serving its lists.
            cacheable = plain and self.caches(s) and not (variant is not None and variant.settings)
            if cacheable:
                out, hit = await self._from_cache(user_id, k, request_id, start, s)
                if out is not None:
                    self.metrics.observe(out, time.perf_counter() - start, hit, deadline_s)
                    return self.shown(out, exp, variant)
            out = await self.compute(user_id, k, exclude, category, start, request_id, s)
            if cacheable and self.normal_answer(out):
                # Off the event loop: a write waits for the database's write lock, and the
                # requests behind this one would wait with it.
                put = partial(self.store.cache_put, user_id, out["user_version"], dict(out))
                self.spawn(asyncio.to_thread(best_effort, put))
            took = time.perf_counter() - start
            self.metrics.observe(out, took, "miss" if plain else None, deadline_s)
            return self.shown(out, exp, variant)
        finally:
            self.inflight -= 1
            self.metrics.inflight.set(self.inflight)

    async def _from_cache(
        self, user_id: str, k: int, request_id: str, start: float, s: LiveSettings
    ) -> tuple[dict[str, Any] | None, str]:
        """The cached list, or the one the user's last event is computing (waited for within
        the budget), or its fresh retrieval; (None, _) when the request must compute."""
        hit = self.cached(user_id, k)
        pending = self.pending.get(user_id)
        # A loop this far behind would resume the wait late: no wait then.
        lagging = self.margin_s(s)[1]
        if hit is None and lagging:
            # What the user's last event retrieved is answered without a wait.
            return self.fresh_answer(user_id, k, request_id, start), "miss"
        if hit is None and pending is not None and not pending.done():
            # The user's last event started this very list: wait for it rather than
            # compute it twice on the same cores (read-your-writes, sooner).
            until = start + s.deadline_ms * 0.6e-3
            first = min(s.reflect_ms / 1000, until - start) if s.reflect_ms else None
            await settled_within(pending, first or until - time.perf_counter())
            hit = self.cached(user_id, k)
            if hit is None and not pending.done() and first:
                # Not re-ranked yet: its retrieval already reflects the event.
                fresh = self.fresh.get(user_id)
                if fresh is not None:
                    await settled_within(fresh, until - time.perf_counter())
                out = self.fresh_answer(user_id, k, request_id, start)
                if out is not None:
                    return out, "miss"
                await settled_within(pending, until - time.perf_counter())
                hit = self.cached(user_id, k)
        if hit is None:
            return None, "miss"
        hit["request_id"] = request_id
        hit["timings_ms"] = {"total": round((time.perf_counter() - start) * 1000, 2)}
        return hit, "hit"

    def shown(
        self, out: dict[str, Any], exp: Experiment | None, variant: Variant | None
    ) -> dict[str, Any]:
        """Name the experiment variant in the response and log the impression, off the
        request path (an impression is analytics, not an acknowledged write)."""
        out["experiment"] = None if variant is None else {"name": exp.name, "variant": variant.name}
        if self.settings.log_impressions:
            imp = Impression(
                request_id=out["request_id"],
                user_id=out["user_id"],
                items=[x["item_id"] for x in out["items"]],
                stage=out["stage"],
                model=out["versions"]["model"],
                timestamp=time.time(),
                experiment=None if variant is None else exp.name,
                variant=None if variant is None else variant.name,
            )
            self.spawn(asyncio.to_thread(best_effort, partial(self.store.log_impression, imp)))
        return out

    async def compute(
        self,
        user_id: str,
        k: int,
        exclude: list[str],
        category: str | None,
        start: float,
        request_id: str,
        s: LiveSettings,
        deadline: bool = True,
        on_retrieved: Callable[[Retrieved], Any] | None = None,
    ) -> dict[str, Any]:
        """Retrieval, then the re-rank, each within what the deadline leaves (`deadline`
        False: nearline work, which has none)."""
        # Every stage must be over by `end`: the margin is for answering on time.
        margin, lagging = self.margin_s(s)
        end = start + s.deadline_ms / 1000 - margin if deadline else start + 60
        # What was kept back for answering: with `total`, it shows how late a stage that
        # gave up was resumed.
        timings: dict[str, float] = {"margin": margin} if deadline else {}
        t = time.perf_counter()
        # A variant's model version and candidate count travel with the request.
        version = s.version if s.version != self.settings.version else None
        n = s.candidates if s.candidates != self.settings.candidates else None
        call = None
        # Retrieval may take most of the budget, not all: its answer must still be sent.
        retrieval_s = min(end - t, 0.8 * s.deadline_ms / 1000) if deadline else end - t
        # Nearline work is never refused; a request's is, when its queue looks too long.
        admit = retrieval_s * s.admit_share if deadline else None
        try:
            if deadline and lagging:
                raise Lagging
            call = self.retrieve(user_id, exclude, category, version, n, k, s.rerank, admit)
            r: Retrieved = await within(call, retrieval_s)
        except Exception as e:  # late, refused or failed: popularity answers, on time
            if call is not None:
                call.cancel()
            return await self._popularity(user_id, k, exclude, request_id, start, end, e, timings)
        timings["retrieval"] = time.perf_counter() - t
        timings["retrieval_service"] = r.seconds  # the work itself, without hop or queue
        if on_retrieved is not None:
            on_retrieved(r)
        scores, fallback, rr_version = None, None, None
        routed = r.path != "cold_start" and r.history_len < s.rerank_min_history
        # The version's routing table: the LM only where it was measured to pay.
        by_table = s.routing and s.rerank and not routed and r.route != "lm"
        if by_table and r.route_scores is not None and len(r.route_scores):
            scores, rr_version = r.route_scores, f"{r.model_version}/features"
        # A version without a re-ranker answers in retrieval order, with no hop to ask.
        wants = r.path != "cold_start" and s.rerank and len(r.items) > 1
        wants = wants and self.has_reranker(version)
        wants = wants and not routed and not by_table
        # Shed load before it queues: past the limit, or behind more re-ranks than the
        # time left allows, retrieval answers now, on time.
        left = end - time.perf_counter()
        capped = s.shed_inflight is not None and self.inflight > s.shed_inflight
        if wants and deadline and (capped or not self.rerank_queue.admits(left * s.admit_share)):
            wants, fallback = False, "overload"
        elif wants and not deadline and not self.rerank_queue.admits(s.deadline_ms / 1000):
            # Nearline work has no deadline, but when events come faster than the re-ranker
            # can follow, queueing each one grows a backlog without end, and every request
            # of those users waits on it. Past a deadline's worth of queued re-ranks the
            # list is not precomputed: the user's next request computes it, with admission.
            wants, fallback = False, "overload"
        if wants:
            t = time.perf_counter()
            ahead = self.rerank_queue.submitted()
            took = None
            call = self.backends.score((r.prompt_history, r.items, r.features, version))
            try:
                scores = await within(call, left)
                took = time.perf_counter() - t
                if len(scores):
                    rr_version = f"{r.model_version}/reranker"
                else:  # the version has no re-ranker: retrieval order, not a failure
                    scores = None
            except Exception as e:
                call.cancel()
                fallback = "rerank_timeout" if isinstance(e, TimeoutError) else "rerank_error"
                if fallback == "rerank_error":
                    log.warning("re-ranker failed, answering from retrieval: %s", e)
                else:  # at least this long: the estimate must not forget a late re-rank
                    took = time.perf_counter() - t
            finally:
                self.rerank_queue.finished(took, ahead)
            timings["rerank"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - start
        # By measurement, the re-ranker does not help this short a history.
        return respond(
            r,
            k,
            scores,
            request_id,
            fallback,
            timings,
            rr_version,
            "short_history" if routed else (r.route_reason if by_table else None),
            "features" if by_table else "rerank",
        )

    async def _popularity(
        self,
        user_id: str,
        k: int,
        exclude: list[str],
        request_id: str,
        start: float,
        end: float,
        e: Exception,
        timings: dict[str, float],
    ) -> dict[str, Any]:
        """Retrieval was late, refused or failed: the most popular items the user has not
        seen, on time."""
        reason = fallback_reason(e)
        # Overload is counted, not worth a log line.
        if reason not in ("retrieval_overload", "loop_lag"):
            log.warning("retrieval fell back (%s): %s", reason, e)
        fb = None
        seen = self.seen(user_id)  # read your writes, even here
        left = end - time.perf_counter()
        # The cold-start deployment is a hop: worth it only for a failure that left time.
        # Late or refused, the counts this replica holds answer without one.
        if reason == "retrieval_error" and left > 0:
            fb_call = self.backends.cold_start(user_id, k, exclude + seen)
            try:
                fb = await within(fb_call, left)
            except Exception:
                fb_call.cancel()
        if fb is None:
            items = popularity_answer(self.popularity, self.catalog, k, exclude + seen)
            fb = {"items": items, "model": self.model.version}
        timings["total"] = time.perf_counter() - start
        return fallback_answer(user_id, request_id, reason, fb["items"], fb["model"], timings)
