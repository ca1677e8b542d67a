"""Retrieval inside an Api replica (`retrieval_in_api`): the replica's own retrieval services,
one per model version it may serve, run one call at a time on a thread off the event loop (a
service, like a Retrieval replica, is not shared by threads), with the queue admission reads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from serving.admission import WorkerQueue
from serving.config import LiveSettings
from serving.recommender import RetrievalService, load_retrieval, refresh_retrieval
from serving.replicas import Loaded, load_versions, pick
from serving.stage_outcomes import Overloaded


class LocalRetrieval:
    """The services this replica loaded (none unless `retrieval_in_api`)."""

    def __init__(self) -> None:
        self.loaded: Loaded = {}
        self.current: RetrievalService | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmrec-retrieval")
        self.queue = WorkerQueue()  # what the pool has to do, for admission

    def take(self, settings: LiveSettings) -> bool:
        """Load (or drop) the services `settings` name; whether that changed them."""
        loaded: Loaded = {}
        if settings.retrieval_in_api:
            loaded, _ = load_versions(settings, self.loaded, load_retrieval, refresh_retrieval)
        changed = loaded != self.loaded
        self.loaded = loaded
        self.current = loaded[settings.version][1] if loaded else None
        self.queue.restart_timing()
        return changed

    def service(self, version: str | None) -> RetrievalService:
        """The loaded service of `version` (None: the one served)."""
        assert self.current is not None, "retrieval_in_api is off: nothing loaded here"
        return pick(self.loaded, self.current, version)

    def admit(self, budget_s: float | None) -> None:
        """Refuse at once (`Overloaded`) work the queue would finish after `budget_s`."""
        if budget_s is not None and not self.queue.admits(budget_s):
            raise Overloaded  # counted by its fallback reason, never logged: no message

    def run(self, fn: Callable[[], Any], timed: bool) -> asyncio.Future:
        """`fn` on the retrieval thread, counted in the queue that admission reads;
        `timed`: its time feeds the service-time estimate."""
        queue = self.queue

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
