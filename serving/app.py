"""The Serve graph: one HTTP ingress composing retrieval, the re-ranker, the cold-start
fallback and the event store through `DeploymentHandle`s.

    Api (FastAPI) ──> Retrieval ──> (Api) ──> Reranker      per /recommend, within a deadline
       │                 └─ fails ──> ColdStart              popularity, never errors
       └──> EventStore                                       POST /events: ack after commit

The hot path walks as few hops as it can: a list the nearline step computed after the user's
last event is answered by the Api from the store without any hop, and with
`retrieval_in_api` (the default) the Api retrieves in its own process, so only the re-ranker
is a hop away; with `retrieval_in_api: false` the Retrieval deployment retrieves, scaled and
placed apart from the ingress.

This module holds the routes and the composition; the application they hang on (keys,
limits, errors) is `serving.http_face`, the request path is
`serving.request_path`, the nearline work `serving.nearline`, the back ends
`serving.backends`, the HTTP contract `serving.api_models`."""

# No `from __future__ import annotations` here: FastAPI resolves the routes' annotations in
# the replica, where string annotations of the ingress class's methods cannot be resolved.
import asyncio
import contextlib
import time
from typing import Annotated, Any

from fastapi import Body, HTTPException, Path, Query, Response
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.api_models import (
    EVENTS,
    K_MAX,
    MAX_BATCH_EVENTS,
    MAX_ID_CHARS,
    MAX_QUERY_EXCLUDE,
    MAX_QUERY_ID_CHARS,
    Attributes,
    AttributesSet,
    ErasureStatus,
    EventsStored,
    Health,
    ItemAdded,
    ItemIn,
    Readiness,
    Recommendation,
    RecommendIn,
    SimilarItems,
    UserErased,
    field_errors,
)
from serving.api_schema import errors
from serving.auth import Guard
from serving.backends import (
    ColdStartDeployment,
    EventStoreDeployment,
    RerankerDeployment,
    RetrievalDeployment,
)
from serving.config import LiveSettings
from serving.events import EVENT_TYPES, Event, StoredItem, StoreUnavailable
from serving.heap import GcPauses
from serving.http_face import api, scope, stored_or_503
from serving.metrics import Metrics
from serving.nearline import Nearline
from serving.replicas import Replica
from serving.request_path import RequestPath
from training.threads import set_threads


class Handles:
    """The back-end deployments as the request path calls them (`stage_outcomes.Backends`)."""

    def __init__(self, retrieval: DeploymentHandle, reranker: DeploymentHandle, cold_start):
        self._retrieval, self._reranker, self._cold_start = retrieval, reranker, cold_start

    def retrieve(self, *args: Any) -> Any:
        return self._retrieval.retrieve.remote(*args)

    def score(self, request: tuple) -> Any:
        return self._reranker.score.remote(request)

    def cold_start(self, user_id: str, k: int, exclude: list[str]) -> Any:
        return self._cold_start.fallback.remote(user_id, k, exclude)

    def similar(self, item_id: str, k: int) -> Any:
        return self._retrieval.similar.remote(item_id, k)


@serve.deployment(name="Api")
@serve.ingress(api)
class Api(Replica):
    def __init__(
        self,
        retrieval: DeploymentHandle,
        reranker: DeploymentHandle,
        cold_start: DeploymentHandle,
        events: DeploymentHandle,
        settings: dict[str, Any] | None = None,
    ):
        # Torch and BLAS threads set explicitly (every available core, or LLMREC_THREADS):
        # one thread measured 10% fewer requests/s at concurrency 8 (docs/BENCHMARKS.md).
        set_threads(by_load=False)
        self.retrieval = retrieval
        self.reranker = reranker
        self.events = events
        self.metrics = Metrics()
        self.guard = Guard()
        self.path = RequestPath(Handles(retrieval, reranker, cold_start), self.metrics)
        self.nearline = Nearline(self.path)
        self._gc = GcPauses()
        self._lag_probe: asyncio.Task | None = None
        self._stall: asyncio.Task | None = None
        self._start(settings)

    def _apply(self, settings: LiveSettings) -> bool:
        self.guard.configure(
            settings.api_keys, not settings.insecure_local, settings.key_rate, settings.key_burst
        )
        reloaded = self.path.take(settings)
        self.settings, self.served = settings, self.path.model.version
        return reloaded

    def reconfigure(self, cfg: dict[str, Any]) -> None:
        super().reconfigure(cfg)
        # A reconfigure that loads models blocks this loop: its own work, not load.
        self.path.lag.excuse(time.perf_counter())

    def _ensure_background(self) -> None:
        """On the event loop: the loop-lag probe, once, the stall drill while it is set,
        and the precompute of the served version's lists."""
        if self._lag_probe is None:
            self._lag_probe = self.path.spawn(self._probe_lag())
        if self.settings.drills.loop_stall_ms and self._stall is None:
            self._stall = self.path.spawn(self._stall_loop())
        self.nearline.ensure_warming()

    async def _probe_lag(self, period_s: float = 0.01) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(period_s)
            now = time.perf_counter()
            lag = now - t - period_s
            self.path.lag.observe(now, lag, started=t)
            self.metrics.loop_lag_wakeups.observe(max(lag, 0.0))

    async def _stall_loop(self) -> None:
        """The drill `loop_stall_ms`: the loop blocked as a loaded machine blocks it."""
        try:
            while ms := self.settings.drills.loop_stall_ms:
                time.sleep(ms / 1000)
                await asyncio.sleep(0.05)
        finally:
            self._stall = None

    async def check_health(self) -> None:
        # Serve calls this on the replica's event loop every few seconds: the precompute
        # starts without waiting for the first request.
        self._ensure_background()

    # -- recommendations ------------------------------------------------------------------

    @api.get(
        "/recommend/{user_id}",
        response_model=Recommendation,
        responses=errors(),
        dependencies=[scope("recommend")],
    )
    async def recommend_get(
        self,
        user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS)],
        k: Annotated[int | None, Query(ge=1, le=K_MAX)] = None,
        exclude: Annotated[
            list[Annotated[str, Query(max_length=MAX_QUERY_ID_CHARS)]] | None,
            Query(
                max_length=MAX_QUERY_EXCLUDE,
                description="item ids, repeated or comma-separated (longer lists: POST /recommend)",
            ),
        ] = None,
        category: Annotated[str | None, Query(max_length=MAX_ID_CHARS)] = None,
    ) -> dict[str, Any]:
        ex = [x for e in exclude or [] for x in e.split(",") if x]
        return await self._recommend(user_id, k, ex, category)

    @api.post(
        "/recommend",
        response_model=Recommendation,
        responses=errors(413),
        dependencies=[scope("recommend")],
    )
    async def recommend_post(self, body: RecommendIn) -> dict[str, Any]:
        return await self._recommend(
            str(body.user_id), body.k, [str(x) for x in body.exclude], body.category
        )

    async def _recommend(
        self, user_id: str, k: int | None, exclude: list[str], category: str | None
    ) -> dict[str, Any]:
        k = k or self.settings.k_default
        self._ensure_background()
        return await self.path.recommend(user_id, k, exclude, category)

    # -- events, items, users ----------------------------------------------------------

    @api.post(
        "/events",
        response_model=EventsStored,
        responses=errors(413, store=True),
        dependencies=[scope("events")],
    )
    async def post_events(self, body: Annotated[Any, Body()]) -> dict[str, Any]:
        """One event object, or a list of them (the schema is `api_models.EventsBody`)."""
        raw = body if isinstance(body, list) else [body]
        if len(raw) > MAX_BATCH_EVENTS:
            raise HTTPException(
                413,
                f"body: {len(raw)} events, at most {MAX_BATCH_EVENTS} per request; split the batch",
            )
        if not raw:
            raise HTTPException(422, "body: an empty list holds no event")
        try:
            batch = EVENTS.validate_python(raw)
        except ValidationError as e:
            raise HTTPException(422, field_errors(e, isinstance(body, list))) from None
        self.path.last_request = time.perf_counter()
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
        stored, duplicates = await stored_or_503(self.events.append.remote(events))
        self.metrics.events.inc(stored)
        known = self.path.catalog.item_index
        if any(e.item_id not in known for e in events):
            self._refresh_items()
        unknown = sum(e.item_id not in known for e in events)
        self.nearline.after_events({e.user_id for e in events})
        return {"stored": stored, "duplicates": duplicates, "unknown_items": unknown}

    def _refresh_items(self) -> None:
        catalog = self.path.catalog
        # While the store is down the new items are taken on a later call.
        with contextlib.suppress(StoreUnavailable):
            catalog.add(self.path.store.items(after=catalog.added))

    @api.get(
        "/items/{item_id}/similar",
        response_model=SimilarItems,
        responses=errors(404),
        dependencies=[scope("recommend")],
    )
    async def similar(
        self,
        item_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS)],
        k: Annotated[int, Query(ge=1, le=K_MAX)] = 10,
    ):
        out = await self.path.similar(item_id, k)
        if out is None:
            raise HTTPException(404, f"item_id: unknown item '{item_id}'")
        return {"item_id": item_id, "items": out}

    @api.post(
        "/items",
        status_code=201,
        response_model=ItemAdded,
        responses=errors(409, 413, store=True),
        dependencies=[scope("catalog")],
    )
    async def add_item(self, body: ItemIn) -> dict[str, Any]:
        item = StoredItem(str(body.item_id), body.title, body.text or "", body.categories)
        if item.item_id in self.path.catalog.item_index:
            raise HTTPException(409, f"item_id: '{item.item_id}' exists already")
        if not await stored_or_503(self.events.add_item.remote(item)):
            raise HTTPException(409, f"item_id: '{item.item_id}' exists already")
        self._refresh_items()
        return {"item_id": item.item_id, "recommendable": True}

    @api.put(
        "/users/{user_id}/attributes",
        response_model=AttributesSet,
        responses=errors(413, store=True),
        dependencies=[scope("users")],
    )
    async def set_attributes(
        self,
        user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS)],
        body: Attributes,
    ) -> dict[str, Any]:
        """What a user states about themselves (ML-100k: age, gender, occupation): until
        they have a history, they get what is popular with users who share it."""
        segment = self.path.segment
        if segment is None:
            raise HTTPException(422, "body: this model version has no user segments")
        stated = {a: v for a, v in body.items() if v is not None}
        try:
            codes = segment.encode(stated)
        except ValueError as e:
            raise HTTPException(422, f"body.{e}") from None
        await stored_or_503(self.events.set_attributes.remote(user_id, stated))
        labels = segment.labels
        return {"user_id": user_id, "segments": {a: labels[a][c] for a, c in codes.items()}}

    @api.delete(
        "/users/{user_id}",
        response_model=UserErased,
        responses=errors(store=True),
        dependencies=[scope("users")],
    )
    async def delete_user(
        self, user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS)]
    ) -> dict[str, Any]:
        removed = await stored_or_503(self.events.delete_user.remote(user_id))
        return {"user_id": user_id, "removed": removed, "status": f"/users/{user_id}/erasure"}

    @api.get(
        "/users/{user_id}/erasure",
        response_model=ErasureStatus,
        responses=errors(store=True),
        dependencies=[scope("users")],
    )
    async def erasure(
        self, user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS)]
    ) -> dict[str, Any]:
        """Which model version is the first trained without the erased user."""
        from serving.erasure_status import erasure_status

        status = erasure_status, self.path.store, self.settings.model_root, user_id
        return await stored_or_503(asyncio.to_thread(*status))

    # -- operations ----------------------------------------------------------------------

    @api.get("/healthz", response_model=Health)
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    async def readyz(self, response: Response) -> dict[str, Any]:
        """Ready when answers will be normal: every stage loaded, and the precompute of the
        known users' lists done (`ready_warm_share` of it)."""
        try:
            local = self.path.local_current  # what answers /recommend here, when local
            if local is not None:
                model = local.version
            else:
                model = await asyncio.wait_for(self.retrieval.version.remote(), 5)
            rr = await asyncio.wait_for(self.reranker.version.remote(), 5)
        except Exception as e:
            response.status_code = 503
            return {"ready": False, "reason": str(e)[:200]}
        self._ensure_background()
        warm = dict(self.nearline.warm)
        if not self.nearline.ready():
            response.status_code = 503
            reason = f"precomputing lists: {warm['done']} of {warm['users']} users"
            return {"ready": False, "reason": reason, "model": model, "reranker": rr, "warm": warm}
        return {"ready": True, "model": model, "reranker": rr, "warm": warm}

    @api.get(
        "/metrics",
        response_class=Response,
        responses=errors(metrics=True),
        dependencies=[scope("ops")],
    )
    async def metrics_text(self) -> Response:
        """Prometheus text format."""
        # Gauges of state the replica keeps anyway: read when scraped, not on every change.
        self.metrics.warm.set(self.nearline.warm["done"])
        self.metrics.loop_lag.set(self.path.lag.recent_s(time.perf_counter()))
        for gen, seconds in self._gc.drain():
            self.metrics.gc_pauses.labels(str(gen)).observe(seconds)
        for gen in range(3):
            self.metrics.gc_longest.labels(str(gen)).set(self._gc.longest_s[gen])
        for status, n in self.guard.denied.items():
            self.metrics.denied.labels(str(status)).set(n)
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
    calls a builder with exactly one argument, and applies the config's deployment options
    (replicas, resources, user_config) itself."""
    settings = LiveSettings.model_validate(args or {}).model_dump()
    d = DEPLOYMENTS
    return d["Api"].bind(
        d["Retrieval"].bind(settings),
        d["Reranker"].bind(settings),
        d["ColdStart"].bind(settings),
        d["EventStore"].bind(settings),
        settings,
    )


__all__ = ["EVENT_TYPES", "build_app"]
