"""Prometheus metrics of the ingress: latency per stage, fallback, cold-start and cache
rates, requests in flight. One registry per replica (Prometheus sums the replicas)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

if TYPE_CHECKING:
    from training.reranker.routing import RoutingTable

BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
# Stalls of the ingress (loop wake-ups, collector passes): from 1 ms to half a second.
STALL_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram(
            "llmrec_stage_seconds",
            "time per stage of /recommend",
            ["stage"],
            buckets=BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "llmrec_recommend_total",
            "answered /recommend by the stage the list reached",
            ["stage"],
            registry=r,
        )
        self.fallbacks = Counter(
            "llmrec_fallback_total",
            "answers given by a fallback, by reason",
            ["reason"],
            registry=r,
        )
        self.late = Counter(
            "llmrec_past_deadline_total",
            "answers that left the ingress after their request's deadline, by stage",
            ["stage"],
            registry=r,
        )
        self.cold = Counter("llmrec_cold_start_total", "cold-start answers", registry=r)
        self.cache = Counter("llmrec_cache_total", "nearline cache lookups", ["result"], registry=r)
        self.events = Counter("llmrec_events_stored_total", "events stored", registry=r)
        self.denied = Gauge(
            "llmrec_denied_requests",
            "requests refused since the replica started, by HTTP status: 401 (no or wrong "
            "API key), 403 (key without the scope), 429 (key over its rate)",
            ["status"],
            registry=r,
        )
        self.nearline = Counter(
            "llmrec_nearline_total",
            "lists computed off the request path (after events, and the precompute), by "
            "outcome: cached, skipped (re-ranker backlog), not_reranked, failed",
            ["result"],
            registry=r,
        )
        self.loop_lag = Gauge(
            "llmrec_loop_lag_seconds",
            "the ingress event loop's largest wake-up lag of the last 2 s (widens the margin)",
            registry=r,
        )
        self.loop_lag_wakeups = Histogram(
            "llmrec_loop_lag_wakeup_seconds",
            "how late each 10 ms probe of the ingress event loop woke up: a stall shows here "
            "even when no request was near its deadline during it",
            buckets=STALL_BUCKETS,
            registry=r,
        )
        self.gc_pauses = Histogram(
            "llmrec_gc_pause_seconds",
            "passes of the cyclic garbage collector in the ingress process, by generation "
            "(the collection that freezes a loaded version left out): every request of the "
            "replica waits through one",
            ["generation"],
            buckets=STALL_BUCKETS,
            registry=r,
        )
        self.gc_longest = Gauge(
            "llmrec_gc_longest_pause_seconds",
            "the longest of those passes since the process started, by generation",
            ["generation"],
            registry=r,
        )
        self.warm = Gauge(
            "llmrec_warm_users",
            "users whose list the precompute has covered for the model version served",
            registry=r,
        )
        self.inflight = Gauge(
            "llmrec_inflight_requests", "requests in the ingress now (queue depth)", registry=r
        )
        self.new_item_shown = Counter(
            "llmrec_new_item_shown_total",
            "answers whose shown list gave its new-item place to an engaged new item (one "
            "no model ranks until the next refit)",
            registry=r,
        )
        self.routing = Gauge(
            "llmrec_routing",
            "the served version's routing table: 1 on the stage each history-length slice "
            "takes (lm: the LM re-ranker; features: its feature layer alone; retrieval)",
            ["history", "route"],
            registry=r,
        )

    def show_routing(self, table: RoutingTable | None) -> None:
        """The routing table in force (none: every request takes the LM)."""
        self.routing.clear()
        for s in table.slices if table is not None else []:
            self.routing.labels(s.label, s.route).set(1)

    def observe(
        self,
        out: dict[str, Any],
        seconds: float,
        cache: str | None,
        deadline_s: float | None = None,
    ) -> None:
        self.latency.labels("total").observe(seconds)
        if deadline_s is not None and seconds > deadline_s:
            self.late.labels(out["stage"]).inc()
        for stage, ms in out.get("timings_ms", {}).items():
            if stage not in ("total", "margin"):  # the margin is kept back, not spent
                self.latency.labels(stage).observe(ms / 1000)
        self.requests.labels(out["stage"]).inc()
        if out.get("fallback"):
            self.fallbacks.labels(out["fallback"]).inc()
        if out["stage"] == "cold_start":
            self.cold.inc()
        if any(x["stage"] == "new_item" for x in out.get("items", ())):
            self.new_item_shown.inc()
        if cache is not None:
            self.cache.labels(cache).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
