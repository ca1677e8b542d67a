"""The Serve graph: one HTTP ingress composing retrieval, the re-ranker, the cold-start
fallback and the event store through `DeploymentHandle`s.

    Api (FastAPI) ──> Retrieval ──> (Api) ──> Reranker      per /recommend, within a deadline
       │                 └─ fails ──> ColdStart              popularity, never errors
       └──> EventStore                                       POST /events: ack after commit

The hot path walks as few hops as it can: a list the nearline step computed after the user's
last event is answered by the Api from the store without any hop, and with
`retrieval_in_api` (the default) the Api retrieves in its own process, so only the re-ranker
is a hop away. The Retrieval deployment then stays up for the setting's other value.
"""

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Body, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.admission import LoopLag, WorkerQueue, deadline_margin, settled_within, within
from serving.config import LiveSettings
from serving.events import EVENT_TYPES, Event, StoredItem, open_store
from serving.experiments import Experiment, Impression, Variant, assign
from serving.heap import GcPauses, freeze_heap
from serving.metrics import Metrics
from serving.recommender import (
    RerankService,
    RetrievalService,
    Retrieved,
    popularity_answer,
    respond,
)
from training.publish import current_version, load_version

log = logging.getLogger("ray.serve")
Id = StrictStr | StrictInt


class _Configured:
    """Settings = the application's args, overridden key by key by the `user_config`."""

    _base: dict[str, Any]

    def _merge(self, cfg: dict[str, Any]) -> LiveSettings:
        return LiveSettings.model_validate({**self._base, **(cfg or {})})


# -- request bodies (422 with the field named on bad input) ---------------------------------


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Id
    item_id: Id
    type: Literal["view", "click", "purchase", "rating", "dislike"]
    value: float | None = None
    timestamp: float | None = Field(None, ge=0)
    event_id: StrictStr | None = Field(None, max_length=200)
    request_id: StrictStr | None = Field(None, max_length=200)

    @field_validator("user_id", "item_id")
    @classmethod
    def _not_blank(cls, v: Id) -> Id:
        if isinstance(v, str) and not v.strip():
            raise ValueError("must not be empty")
        return v


class RecommendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Id
    k: int | None = Field(None, ge=1)
    exclude: list[Id] = Field(default_factory=list, max_length=1000)
    category: StrictStr | None = None


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: Id
    title: StrictStr = Field(min_length=1, max_length=500)
    text: StrictStr | None = Field(None, max_length=5000)
    categories: list[StrictStr] = Field(default_factory=list, max_length=50)


_EVENTS = TypeAdapter(list[EventIn])


def _field_errors(e: ValidationError, batch: bool) -> str:
    """'events[3].type: Input should be ...' (the field to fix, named)."""
    parts = []
    for err in e.errors()[:10]:
        loc = list(err["loc"])
        index, rest = loc[0], ".".join(map(str, loc[1:])) or "event"
        where = f"events[{index}].{rest}" if batch else rest
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


class _Overloaded(Exception):
    """The retrieval queue is too deep for this request's budget."""


class _Lagging(Exception):
    """The event loop lags too far behind for this request to await any stage."""


def _delayed(fn: Callable[[], Any], seconds: float) -> Any:
    time.sleep(seconds)  # a slow retrieval, for the deadline tests and drills
    return fn()


# -- deployments -----------------------------------------------------------------------------


@serve.deployment(name="EventStore")
class EventStoreDeployment(_Configured):
    """The one writer of events, items and erasures."""

    def __init__(self, settings: dict[str, Any] | None = None):
        self._base = settings or {}
        self.reconfigure({})

    def reconfigure(self, cfg: dict[str, Any]) -> None:
        self.settings = self._merge(cfg)
        self.store = open_store(self.settings.store)
        if self.settings.retention_days and not getattr(self, "_retention", None):
            self._retention = threading.Thread(target=self._retain, daemon=True)
            self._retention.start()

    def _retain(self) -> None:
        """The one writer applies the retention limit: at start, then hourly."""
        while days := self.settings.retention_days:
            removed = self.store.purge_before(time.time() - days * 86400)
            if any(removed.values()):
                log.warning("retention (%g days) removed %s", days, removed)
            time.sleep(3600)
        self._retention = None

    def append(self, events: list[Event]) -> tuple[int, int]:
        return self.store.append(events)

    def add_item(self, item: StoredItem) -> bool:
        return self.store.add_item(item)

    def delete_user(self, user_id: str) -> dict[str, int]:
        return self.store.delete_user(user_id)

    def set_attributes(self, user_id: str, attributes: dict[str, Any]) -> None:
        self.store.set_attributes(user_id, attributes)

    def stats(self) -> dict[str, int]:
        return self.store.stats()


class _WatchesVersions(_Configured):
    """With `version: latest`, a daemon thread re-reads CURRENT every `watch_s` seconds and
    reconfigures the replica when it names another version: `llmrec publish` reaches a
    running application without a redeploy. Replicas swap independently, within one period;
    each response names the version that served it."""

    settings: LiveSettings
    served: str | None = None

    def _init_watch(self, settings: dict[str, Any] | None) -> None:
        self._base = settings or {}
        self._user_cfg: dict[str, Any] = {}
        self._reload = threading.Lock()
        self.reconfigure({})
        threading.Thread(target=self._watch, name="llmrec-version-watch", daemon=True).start()

    def reconfigure(self, cfg: dict[str, Any]) -> None:
        with self._reload:
            self._user_cfg = cfg or {}
            # Only after a load: a change of live settings does not pay a full collection.
            if self._apply(self._merge(cfg)):
                took = freeze_heap()
                if took > 0.5:
                    log.warning("%s: froze the loaded heap in %.2f s", type(self).__name__, took)

    def _apply(self, settings: LiveSettings) -> bool:
        """Take `settings`; whether that loaded or dropped model objects."""
        raise NotImplementedError

    def _watch(self) -> None:
        while True:
            time.sleep(self.settings.watch_s or 5.0)
            s = self.settings
            if s.version != "latest" or not s.watch_s:
                continue
            try:
                if current_version(s.model_root) != self.served:
                    self.reconfigure(self._user_cfg)
                    log.warning("%s now serves model version %s", type(self).__name__, self.served)
            except Exception as e:  # a half-published or unreadable root: keep serving
                log.warning("model version watch: %s", e)


Loaded = dict[str, tuple[str, Any]]  # requested version -> (load key, service)


def _load_versions(
    settings: LiveSettings, old: Loaded, load: Callable[[Any, LiveSettings], Any]
) -> tuple[Loaded, str]:
    """The services of the base version and of every version an experiment names; one whose
    files and settings did not change is kept, not reloaded. Returns them and the base
    version's name."""
    wanted = {settings.version}
    if settings.experiment is not None:
        wanted |= settings.experiment.versions()
    loaded: Loaded = {}
    served = ""
    for name in sorted(wanted):
        mv = load_version(settings.model_root, name)
        key = (
            f"{mv.path}|{settings.store}|{settings.candidates}|{settings.rerank}|"
            f"{settings.rerank_int8}|{settings.rerank_layers}|{settings.rerank_item_tokens}"
        )
        kept = old.get(name)
        loaded[name] = kept if kept and kept[0] == key else (key, load(mv, settings))
        if name == settings.version:
            served = mv.version
    return loaded, served


def _service(services: Loaded, current: Any, version: str | None) -> Any:
    if version is None:
        return current
    if version not in services:
        raise LookupError(f"model version {version} is not loaded by this replica")
    return services[version][1]


def _load_retrieval(mv, settings: LiveSettings) -> RetrievalService:
    return RetrievalService(mv, open_store(settings.store), settings)


class _Versioned(_WatchesVersions):
    """Loads the model version named by `user_config`; a new version is loaded beside the
    old one and swapped in, so requests in flight finish on the version they started with.
    Versions that experiment variants name are loaded beside the base one, and a request
    names the version it wants (None: the base)."""

    current: Any = None
    services: dict[str, tuple[str, Any]]  # requested version -> (load key, service)

    def _apply(self, settings: LiveSettings) -> bool:
        old = getattr(self, "services", {})
        self.services, self.served = _load_versions(settings, old, self.load)
        self.current = self.services[settings.version][1]
        self.settings = settings
        return self.services != old

    def service(self, version: str | None) -> Any:
        return _service(self.services, self.current, version)

    def load(self, mv, settings: LiveSettings) -> Any:
        raise NotImplementedError


@serve.deployment(name="Retrieval")
class RetrievalDeployment(_Versioned):
    def __init__(self, settings: dict[str, Any] | None = None):
        self._init_watch(settings)

    def load(self, mv, settings: LiveSettings) -> RetrievalService:
        return _load_retrieval(mv, settings)

    def retrieve(
        self,
        user_id: str,
        exclude: list[str],
        category: str | None,
        version: str | None = None,
        candidates: int | None = None,
        shown: int | None = None,
        reranked: bool = True,
    ) -> Retrieved:
        if self.settings.retrieval_delay_ms:
            time.sleep(self.settings.retrieval_delay_ms / 1000)
        return self.service(version).retrieve(
            user_id, exclude, category, n=candidates, shown=shown, reranked=reranked
        )

    def similar(self, item_id: str, k: int) -> list[dict] | None:
        return self.current.similar(item_id, k)

    def version(self) -> str:
        return self.current.version


@serve.deployment(name="Reranker")
class RerankerDeployment(_Versioned):
    def __init__(self, settings: dict[str, Any] | None = None):
        self._init_watch(settings)

    def load(self, mv, settings: LiveSettings) -> RerankService | None:
        if mv.reranker is None or not settings.rerank:
            return None
        return RerankService(mv, open_store(settings.store), settings)

    def version(self) -> str | None:
        return None if self.current is None else self.current.version

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def score(self, requests: list[tuple]) -> list[np.ndarray]:
        """Each request is (history, candidates, features, model version or None)."""
        s = self.settings
        if s.rerank_fail:
            raise RuntimeError("re-ranker failure injected by rerank_fail")
        if s.rerank_delay_ms:
            await asyncio.sleep(s.rerank_delay_ms / 1000)
        out: list[np.ndarray | None] = [None] * len(requests)
        by_version: dict[str | None, list[int]] = {}
        for j, r in enumerate(requests):
            by_version.setdefault(r[3], []).append(j)
        for version, js in by_version.items():
            svc = self.service(version)
            if svc is None:  # this version has none (or rerank is off): retrieval order
                for j in js:
                    out[j] = np.zeros(0, dtype=np.float32)
                continue
            # Off the event loop: the replica's own work (health checks, queue-length
            # probes, the next batch's requests) runs on it too, and torch releases the
            # GIL while it computes.
            batch = [requests[j][:3] for j in js]
            for j, scores in zip(js, await asyncio.to_thread(svc.score, batch), strict=True):
                out[j] = scores
        return out


@serve.deployment(name="ColdStart")
class ColdStartDeployment(_Versioned):
    """Popularity lists: the answer when retrieval itself fails. A late or refused
    retrieval leaves no time for a hop: the Api answers from its own popularity counts."""

    def __init__(self, settings: dict[str, Any] | None = None):
        self._init_watch(settings)

    def load(self, mv, settings: LiveSettings):
        from pipelines.artifact import load_dataset
        from serving.catalog import Catalog
        from training.retrieval import Retriever

        pop = Retriever.load(mv.path / "stack" / "popularity")
        return mv.version, pop, Catalog(load_dataset(mv.dataset_uri))

    def fallback(self, user_id: str, k: int, exclude: list[str]) -> dict[str, Any]:
        version, pop, catalog = self.current
        return {"items": popularity_answer(pop.counts, catalog, k, exclude), "model": version}


api = FastAPI(
    title="llmrec",
    description="Real-time recommendations: retrieval, LLM re-ranking, cold-start fallback.",
)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException):
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)


@serve.deployment(name="Api")
@serve.ingress(api)
class Api(_WatchesVersions):
    def __init__(
        self,
        retrieval: DeploymentHandle,
        reranker: DeploymentHandle,
        cold_start: DeploymentHandle,
        events: DeploymentHandle,
        settings: dict[str, Any] | None = None,
    ):
        self.retrieval = retrieval
        self.reranker = reranker
        self.cold_start = cold_start
        self.events = events
        self.metrics = Metrics()
        self.inflight = 0
        self._tasks: set[asyncio.Task] = set()
        self._nearline: dict[str, asyncio.Task] = {}  # per user, the list being precomputed
        # Per user, that computation's retrieval: resolved before its re-rank starts.
        self._fresh: dict[str, asyncio.Future] = {}
        # With retrieval_in_api: this replica's own retrieval services, run one at a time
        # off the event loop (a service, like a Retrieval replica, is not shared by threads).
        self.local: Loaded = {}
        self._local_current: RetrievalService | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmrec-retrieval")
        self._queue = WorkerQueue()  # what the pool has to do, for admission
        self._rerank_queue = WorkerQueue()  # this replica's calls the re-ranker has not answered
        # The precompute (settings.warm): one task per model version, started on the loop.
        self._last_request = 0.0
        self._warm_key: tuple[str, str] | None = None  # (model version, store) warmed
        self._warm_task: asyncio.Task | None = None
        self.warm: dict[str, Any] = {"model": None, "users": 0, "done": 0, "seconds": None}
        self._lag = LoopLag()
        self._gc = GcPauses()
        self._lag_probe: asyncio.Task | None = None
        self._stall: asyncio.Task | None = None
        self._init_watch(settings)

    def _apply(self, settings: LiveSettings) -> bool:
        from pipelines.artifact import load_dataset
        from serving.catalog import Catalog
        from training.retrieval import Retriever

        store = open_store(settings.store)
        model = load_version(settings.model_root, settings.version)
        reloaded = model.path != getattr(getattr(self, "model", None), "path", None)
        if reloaded:
            self.catalog = Catalog(load_dataset(model.dataset_uri))
            # The answer of last resort, computed here without a hop when even the
            # cold-start deployment cannot answer within the deadline.
            self.popularity = Retriever.load(model.path / "stack" / "popularity").counts
            seg = model.path / "stack" / "segment"
            # What stated user attributes are checked against (None: the data had none).
            self.segment = Retriever.load(seg) if seg.exists() else None
        local: Loaded = {}
        if settings.retrieval_in_api:
            local, _ = _load_versions(settings, self.local, _load_retrieval)
        reloaded = reloaded or local != self.local
        self.local, self._local_current = local, local[settings.version][1] if local else None
        self.settings, self.store, self.model, self.served = settings, store, model, model.version
        return reloaded

    def _retrieve(
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
        after `budget_s` is refused at once (`_Overloaded`)."""
        if self._local_current is None:
            return self.retrieval.retrieve.remote(
                user_id, exclude, category, version, n, k, reranked
            )
        if budget_s is not None and not self._queue.admits(budget_s):
            raise _Overloaded  # counted by its fallback reason, never logged: no message
        svc = _service(self.local, self._local_current, version)
        run = partial(svc.retrieve, user_id, exclude, category, n=n, shown=k, reranked=reranked)
        if self.settings.retrieval_delay_ms:
            run = partial(_delayed, run, self.settings.retrieval_delay_ms / 1000)
        return self._run_local(run, timed=True)

    def _run_local(self, fn: Callable[[], Any], timed: bool) -> asyncio.Future:
        """`fn` on the retrieval thread, counted in the queue that admission reads;
        `timed`: its time feeds the service-time estimate."""
        queue = self._queue

        def job() -> Any:
            t = time.perf_counter()
            try:
                return fn()
            finally:
                queue.finished(time.perf_counter() - t if timed else None)

        queue.submitted()
        done = self._pool.submit(job)
        # Cancelled before it ran (its request gave up): it leaves the queue unrun.
        done.add_done_callback(lambda f: queue.finished(None) if f.cancelled() else None)
        return asyncio.wrap_future(done)

    # -- precompute ------------------------------------------------------------------------

    def _ensure_background(self) -> None:
        """On the event loop: the loop-lag probe, once, and the precompute of the served
        version's lists, once per version (a hot swap starts over; turning `warm` off stops
        it)."""
        if self._lag_probe is None:
            self._lag_probe = self._spawn(self._probe_lag())
        if self.settings.loop_stall_ms and self._stall is None:
            self._stall = self._spawn(self._stall_loop())
        s = self.settings
        on = s.warm and s.cache and s.rerank and self.model.reranker is not None
        # Another store holds none of the lists: it is warmed too.
        key = (self.model.version, s.store) if on else None
        if key == self._warm_key:
            return
        if self._warm_task is not None:
            self._warm_task.cancel()
        self._warm_key, self._warm_task = key, None
        version = key[0] if key else None
        self.warm = {"model": version, "users": 0, "done": 0, "seconds": None}
        if key is not None:
            self._warm_task = self._spawn(self._warm(key))

    def _quiet(self) -> bool:
        idle_s = time.perf_counter() - self._last_request
        return self.inflight == 0 and not self._nearline and idle_s >= self._quiet_s()

    def _quiet_s(self) -> float:
        return self.settings.warm_quiet_ms / 1000

    async def _warm(self, key: tuple[str, str]) -> None:
        """Re-rank and cache every known user's list, one user at a time and only while no
        request is in flight: requests never queue behind more than one precompute. A
        list already cached at the user's current version is kept."""
        s, state = self.settings, self.warm
        users = self.catalog.users_by_activity()
        if s.warm_users is not None:
            users = users[: s.warm_users]
        state["users"] = len(users)
        t = time.perf_counter()
        loop = asyncio.get_running_loop()
        for user in users:
            while not self._quiet():
                await asyncio.sleep(max(self._quiet_s(), 0.005))
            if (self.model.version, self.settings.store) != key:
                return  # swapped meanwhile: the new version's own task warms it
            if self._cached(user, 1) is None:
                # Its own future: a request for this user does not wait on a precompute.
                await self._precompute(user, loop.create_future())
            state["done"] += 1
        state["seconds"] = round(time.perf_counter() - t, 1)
        log.warning("precomputed the lists of %d users in %.1f s", len(users), state["seconds"])

    async def _probe_lag(self, period_s: float = 0.01) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(period_s)
            now = time.perf_counter()
            lag = now - t - period_s
            self._lag.observe(now, lag)
            self.metrics.loop_lag_wakeups.observe(max(lag, 0.0))

    async def _stall_loop(self) -> None:
        """The drill `loop_stall_ms`: the loop blocked as a loaded machine blocks it."""
        try:
            while ms := self.settings.loop_stall_ms:
                time.sleep(ms / 1000)
                await asyncio.sleep(0.05)
        finally:
            self._stall = None

    def _margin_s(self, s: LiveSettings) -> tuple[float, bool]:
        """What each stage leaves before the deadline for answering, and whether the event
        loop lags too far behind for any stage to be awaited (`deadline_margin`)."""
        lag = self._lag.recent_s(time.perf_counter()) if s.margin_lag_factor else 0.0
        return deadline_margin(
            s.deadline_ms / 1000, s.deadline_margin_ms / 1000, lag, s.margin_lag_factor
        )

    async def check_health(self) -> None:
        # Serve calls this on the replica's event loop every few seconds: the precompute
        # starts without waiting for the first request.
        self._ensure_background()

    # -- recommendations ------------------------------------------------------------------

    @api.get("/recommend/{user_id}")
    async def recommend_get(
        self,
        user_id: str,
        k: Annotated[int | None, Query(ge=1)] = None,
        exclude: Annotated[list[str] | None, Query(max_length=1000)] = None,
        category: str | None = None,
    ) -> dict[str, Any]:
        ex = [x for e in exclude or [] for x in e.split(",") if x]
        return await self._recommend(user_id, k, ex, category)

    @api.post("/recommend")
    async def recommend_post(self, body: RecommendIn) -> dict[str, Any]:
        return await self._recommend(
            str(body.user_id), body.k, [str(x) for x in body.exclude], body.category
        )

    async def _recommend(
        self, user_id: str, k: int | None, exclude: list[str], category: str | None
    ) -> dict[str, Any]:
        s = self.settings
        k = k or s.k_default
        if k > s.k_max:
            raise HTTPException(422, f"k: must be at most {s.k_max}, got {k}")
        start = self._last_request = time.perf_counter()
        self._ensure_background()
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
            cacheable = (
                plain and s.cache and s.rerank and not (variant is not None and variant.settings)
            )
            if cacheable:
                hit = self._cached(user_id, k)
                pending = self._nearline.get(user_id)
                # A loop this far behind would resume the wait late: no wait then.
                lagging = self._margin_s(s)[1]
                if hit is None and lagging:
                    # What the user's last event retrieved is answered without a wait.
                    out = self._fresh_answer(user_id, k, request_id, start)
                    if out is not None:
                        self.metrics.observe(out, time.perf_counter() - start, "miss", deadline_s)
                        return self._shown(out, exp, variant)
                if hit is None and pending is not None and not pending.done() and not lagging:
                    # The user's last event started this very list: wait for it rather
                    # than compute it twice on the same cores (read-your-writes, sooner).
                    until = start + s.deadline_ms * 0.6e-3
                    first = min(s.reflect_ms / 1000, until - start) if s.reflect_ms else None
                    await settled_within(pending, first or until - time.perf_counter())
                    hit = self._cached(user_id, k)
                    if hit is None and not pending.done() and first:
                        # Not re-ranked yet: its retrieval already reflects the event.
                        fresh = self._fresh.get(user_id)
                        if fresh is not None:
                            await settled_within(fresh, until - time.perf_counter())
                        out = self._fresh_answer(user_id, k, request_id, start)
                        if out is not None:
                            self.metrics.observe(
                                out, time.perf_counter() - start, "miss", deadline_s
                            )
                            return self._shown(out, exp, variant)
                        await settled_within(pending, until - time.perf_counter())
                        hit = self._cached(user_id, k)
                if hit is not None:
                    hit["request_id"] = request_id
                    hit["timings_ms"] = {"total": round((time.perf_counter() - start) * 1000, 2)}
                    self.metrics.observe(hit, time.perf_counter() - start, "hit", deadline_s)
                    return self._shown(hit, exp, variant)
            out = await self._compute(user_id, k, exclude, category, start, request_id, s)
            if cacheable and out["stage"] == "rerank" and not out["fallback"]:
                # Off the event loop: a write waits for the database's write lock, and the
                # requests behind this one would wait with it.
                put = partial(self.store.cache_put, user_id, out["user_version"], dict(out))
                self._spawn(asyncio.to_thread(put))
            took = time.perf_counter() - start
            self.metrics.observe(out, took, "miss" if plain else None, deadline_s)
            return self._shown(out, exp, variant)
        finally:
            self.inflight -= 1
            self.metrics.inflight.set(self.inflight)

    def _shown(
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
            self._spawn(asyncio.to_thread(self.store.log_impression, imp))
        return out

    def _fresh_answer(
        self, user_id: str, k: int, request_id: str, start: float
    ) -> dict[str, Any] | None:
        """The retrieval the pending nearline computation has done for the user's newest
        event, in retrieval order: the event reflected now, the re-ranked list next time."""
        fresh = self._fresh.get(user_id)
        if fresh is None or not fresh.done() or fresh.cancelled():
            return None
        r = fresh.result()
        if r.user_version != self.store.version(user_id):
            return None
        timings = {"total": time.perf_counter() - start}
        return respond(r, k, None, request_id, "nearline_pending", timings, None)

    def _seen(self, user_id: str) -> list[str]:
        """Every item the user has an event for, in the dataset or the store (dislikes
        included): what a popularity answer leaves out."""
        base = self.catalog.base_history(self.catalog.user_index.get(user_id))
        ids = self.catalog.item_ids
        try:
            stored = [e.item_id for e in self.store.events_of(user_id)]
        except Exception as e:  # the answer of last resort must not fail with the store
            log.warning("popularity answer without the user's stored events: %s", e)
            stored = []
        return [ids[i] for i in base] + stored

    def _cached(self, user_id: str, k: int) -> dict[str, Any] | None:
        version = self.store.version(user_id)
        hit = self.store.cache_get(user_id, version)
        if hit is None or hit["versions"]["model"] != self.model.version or len(hit["items"]) < k:
            return None
        hit["items"] = hit["items"][:k]
        hit["user_id"] = user_id
        hit["cached"] = True
        return hit

    async def _compute(
        self,
        user_id: str,
        k: int,
        exclude: list[str],
        category: str | None,
        start: float,
        request_id: str,
        s: LiveSettings,
        deadline: bool = True,
        on_retrieved: Any = None,
    ) -> dict[str, Any]:
        # Every stage must be over by `end`: the margin is for answering on time.
        margin, lagging = self._margin_s(s)
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
                raise _Lagging
            call = self._retrieve(user_id, exclude, category, version, n, k, s.rerank, admit)
            r: Retrieved = await within(call, retrieval_s)
        except Exception as e:  # late, refused or failed: popularity answers, on time
            if call is not None:
                call.cancel()
            reason = (
                "retrieval_timeout"
                if isinstance(e, TimeoutError)
                else "retrieval_overload"
                if isinstance(e, _Overloaded)
                else "loop_lag"
                if isinstance(e, _Lagging)
                else "retrieval_error"
            )
            # Overload is counted, not worth a log line.
            if reason not in ("retrieval_overload", "loop_lag"):
                log.warning("retrieval fell back (%s): %s", reason, e)
            fb = None
            seen = self._seen(user_id)  # read your writes, even here
            left = end - time.perf_counter()
            # The cold-start deployment is a hop: worth it only for a failure that left
            # time. Late or refused, the counts this replica holds answer without one.
            if reason == "retrieval_error" and left > 0:
                fb_call = self.cold_start.fallback.remote(user_id, k, exclude + seen)
                try:
                    fb = await within(fb_call, left)
                except Exception:
                    fb_call.cancel()
            if fb is None:
                items = popularity_answer(self.popularity, self.catalog, k, exclude + seen)
                fb = {"items": items, "model": self.model.version}
            timings["total"] = time.perf_counter() - start
            return {
                "user_id": user_id,
                "request_id": request_id,
                "stage": "cold_start",
                "path": "fallback",
                "fallback": reason,
                "items": fb["items"],
                "versions": {"model": fb["model"], "reranker": None},
                "user_version": None,
                "timings_ms": {n: round(v * 1000, 2) for n, v in timings.items()},
                "ignored": {},
                "cached": False,
            }
        timings["retrieval"] = time.perf_counter() - t
        timings["retrieval_service"] = r.seconds  # the work itself, without hop or queue
        if on_retrieved is not None:
            on_retrieved(r)
        scores, fallback, rr_version = None, None, None
        routed = r.path != "cold_start" and r.history_len < s.rerank_min_history
        wants = r.path != "cold_start" and s.rerank and len(r.items) > 1 and not routed
        # Shed load before it queues: past the limit, or behind more re-ranks than the
        # time left allows, retrieval answers now, on time.
        left = end - time.perf_counter()
        capped = s.shed_inflight is not None and self.inflight > s.shed_inflight
        if wants and deadline and (capped or not self._rerank_queue.admits(left * s.admit_share)):
            wants, fallback = False, "overload"
        elif wants and not deadline and not self._rerank_queue.admits(s.deadline_ms / 1000):
            # Nearline work has no deadline, but when events come faster than the re-ranker
            # can follow, queueing each one grows a backlog without end, and every request
            # of those users waits on it. Past a deadline's worth of queued re-ranks the
            # list is not precomputed: the user's next request computes it, with admission.
            wants, fallback = False, "overload"
        if wants:
            t = time.perf_counter()
            ahead = self._rerank_queue.submitted()
            took = None
            call = self.reranker.score.remote((r.prompt_history, r.items, r.features, version))
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
                self._rerank_queue.finished(took, ahead)
            timings["rerank"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - start
        out = respond(r, k, scores, request_id, fallback, timings, rr_version)
        if routed:  # by measurement, the re-ranker does not help this short a history
            out["routed"] = "short_history"
        return out

    # -- events, items, users ----------------------------------------------------------

    @api.post("/events")
    async def post_events(self, body: Annotated[Any, Body()]) -> dict[str, Any]:
        """One event object, or a list of them."""
        raw = body if isinstance(body, list) else [body]
        if len(raw) > self.settings.max_batch_events:
            raise HTTPException(
                413,
                f"body: {len(raw)} events, at most {self.settings.max_batch_events} per "
                "request; split the batch",
            )
        if not raw:
            raise HTTPException(422, "body: an empty list holds no event")
        try:
            batch = _EVENTS.validate_python(raw)
        except ValidationError as e:
            raise HTTPException(422, _field_errors(e, isinstance(body, list))) from None
        self._last_request = time.perf_counter()
        now = time.time()
        events = [
            Event(
                str(e.user_id),
                str(e.item_id),
                e.type,
                e.timestamp if e.timestamp is not None else now,
                e.value,
                e.event_id,
                e.request_id,
            )
            for e in batch
        ]
        stored, duplicates = await self.events.append.remote(events)
        self.metrics.events.inc(stored)
        known = self.catalog.item_index
        if any(e.item_id not in known for e in events):
            self._refresh_items()
        unknown = sum(e.item_id not in known for e in events)
        # Only re-ranked lists are cached: without the re-ranker a precomputed list would
        # never be served, and would only take the cores from the requests.
        if self.settings.cache and self.settings.rerank:
            loop = asyncio.get_running_loop()
            for user in {e.user_id for e in events}:
                fresh = self._fresh[user] = loop.create_future()
                task = self._spawn(self._precompute(user, fresh))
                self._nearline[user] = task
                task.add_done_callback(
                    lambda t, u=user: (
                        self._nearline.pop(u, None) if self._nearline.get(u) is t else None
                    )
                )
        return {"stored": stored, "duplicates": duplicates, "unknown_items": unknown}

    def _refresh_items(self) -> None:
        self.catalog.add(self.store.items(after=self.catalog.added))

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _precompute(self, user_id: str, fresh: asyncio.Future) -> None:
        """Nearline: the user's next list, re-ranked now and cached under the version it
        saw; a newer event makes it unservable. `fresh` gets its retrieval as soon as it
        exists (what a request answers from while the re-rank runs)."""
        try:
            s = self.settings
            out = await self._compute(
                user_id,
                s.k_max,
                [],
                None,
                time.perf_counter(),
                "nearline",
                s,
                deadline=False,
                on_retrieved=lambda r: fresh.done() or fresh.set_result(r),
            )
            if out["stage"] == "rerank" and not out["fallback"]:
                # Awaited: a request that joined this computation reads the cache next.
                await asyncio.to_thread(self.store.cache_put, user_id, out["user_version"], out)
                result = "cached"
            else:
                result = "skipped" if out["fallback"] == "overload" else "not_reranked"
            self.metrics.nearline.labels(result).inc()
        except Exception as e:  # best effort: the request path recomputes
            self.metrics.nearline.labels("failed").inc()
            log.warning("nearline precompute for a user failed: %s", e)
        finally:
            fresh.cancel()  # nobody waits on a retrieval that never came
            if self._fresh.get(user_id) is fresh:
                del self._fresh[user_id]

    @api.get("/items/{item_id}/similar")
    async def similar(self, item_id: str, k: Annotated[int, Query(ge=1, le=100)] = 10):
        if self._local_current is not None:
            run = partial(self._local_current.similar, item_id, k)
            out = await self._run_local(run, timed=False)
        else:
            out = await self.retrieval.similar.remote(item_id, k)
        if out is None:
            raise HTTPException(404, f"item_id: unknown item '{item_id}'")
        return {"item_id": item_id, "items": out}

    @api.post("/items", status_code=201)
    async def add_item(self, body: ItemIn) -> dict[str, Any]:
        item = StoredItem(str(body.item_id), body.title, body.text or "", body.categories)
        if item.item_id in self.catalog.item_index:
            raise HTTPException(409, f"item_id: '{item.item_id}' exists already")
        if not await self.events.add_item.remote(item):
            raise HTTPException(409, f"item_id: '{item.item_id}' exists already")
        self._refresh_items()
        return {"item_id": item.item_id, "recommendable": True}

    @api.put("/users/{user_id}/attributes")
    async def set_attributes(
        self, user_id: str, body: dict[str, StrictStr | StrictInt | float | None]
    ) -> dict[str, Any]:
        """What a user states about themselves (ML-100k: age, gender, occupation): until
        they have a history, they get what is popular with users who share it."""
        if self.segment is None:
            raise HTTPException(422, "body: this model version has no user segments")
        stated = {a: v for a, v in body.items() if v is not None}
        try:
            codes = self.segment.encode(stated)
        except ValueError as e:
            raise HTTPException(422, f"body.{e}") from None
        await self.events.set_attributes.remote(user_id, stated)
        labels = self.segment.labels
        return {"user_id": user_id, "segments": {a: labels[a][c] for a, c in codes.items()}}

    @api.delete("/users/{user_id}")
    async def delete_user(self, user_id: str) -> dict[str, Any]:
        removed = await self.events.delete_user.remote(user_id)
        return {"user_id": user_id, "removed": removed}

    # -- operations ----------------------------------------------------------------------

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self, response: Response) -> dict[str, Any]:
        try:
            local = self._local_current  # what answers /recommend here, when it is local
            if local is not None:
                model = local.version
            else:
                model = await asyncio.wait_for(self.retrieval.version.remote(), 5)
            rr = await asyncio.wait_for(self.reranker.version.remote(), 5)
        except Exception as e:
            response.status_code = 503
            return {"ready": False, "reason": str(e)[:200]}
        self._ensure_background()
        return {"ready": True, "model": model, "reranker": rr, "warm": dict(self.warm)}

    @api.get("/metrics")
    async def metrics(self) -> Response:
        # Gauges of state the replica keeps anyway: read when scraped, not on every change.
        self.metrics.warm.set(self.warm["done"])
        self.metrics.loop_lag.set(self._lag.recent_s(time.perf_counter()))
        for gen, seconds in self._gc.drain():
            self.metrics.gc_pauses.labels(str(gen)).observe(seconds)
        for gen in range(3):
            self.metrics.gc_longest.labels(str(gen)).set(self._gc.longest_s[gen])
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)


DEPLOYMENTS = {
    "Api": Api,
    "Retrieval": RetrievalDeployment,
    "Reranker": RerankerDeployment,
    "ColdStart": ColdStartDeployment,
    "EventStore": EventStoreDeployment,
}


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """The application builder (`import_path: serving.app:build_app`): `args` are the
    baseline live settings, which each deployment's `user_config` then overrides. Serve
    calls a builder with exactly one argument; `serve run`/`serve deploy` apply the YAML's
    deployment options themselves."""
    return compose(args, None)


def compose(
    args: dict[str, Any] | None, options: dict[str, dict[str, Any]] | None
) -> serve.Application:
    """The graph with per-deployment `options` (for Python callers that read the same YAML,
    `serving.deploy`)."""
    settings = LiveSettings.model_validate(args or {}).model_dump()
    opts = options or {}

    def d(name: str):
        return DEPLOYMENTS[name].options(**opts[name]) if name in opts else DEPLOYMENTS[name]

    return d("Api").bind(
        d("Retrieval").bind(settings),
        d("Reranker").bind(settings),
        d("ColdStart").bind(settings),
        d("EventStore").bind(settings),
        settings,
    )


__all__ = ["EVENT_TYPES", "build_app"]
