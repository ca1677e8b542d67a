"""Nearline work of an Api replica, scheduled on its event loop beside the requests: after
an event, the user's next list is computed (re-ranked, where the version has a re-ranker)
and cached; after a model version is loaded, the lists of the most recently active known
users (up to `warm_users`) are precomputed while no request is in flight. Without Ray: it
drives a `RequestPath`."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from serving.api_models import K_MAX
from serving.request_path import RequestPath

log = logging.getLogger("ray.serve")


class Nearline:
    def __init__(self, path: RequestPath):
        self.path = path
        # The precompute: one task per (model version, store), started on the loop.
        self._warm_key: tuple[str, str] | None = None
        self._warm_task: asyncio.Task | None = None
        self.warm: dict[str, Any] = {"model": None, "users": 0, "done": 0, "seconds": None}

    def after_events(self, users: set[str]) -> None:
        """Each user's next list, computed now and cached (`RequestPath.caches`: with the
        re-ranker turned off, a version that has one caches nothing)."""
        p, s = self.path, self.path.settings
        if not p.caches(s):
            return
        loop = asyncio.get_running_loop()
        for user in users:
            fresh = p.fresh[user] = loop.create_future()
            task = p.spawn(self.precompute(user, fresh))
            p.pending[user] = task
            task.add_done_callback(
                lambda t, u=user: p.pending.pop(u, None) if p.pending.get(u) is t else None
            )

    async def precompute(self, user_id: str, fresh: asyncio.Future) -> None:
        """The user's next list, computed now and cached under the version it saw; a newer
        event makes it unservable. `fresh` gets its retrieval as soon as it exists (what a
        request answers from while the re-rank runs)."""
        p = self.path
        try:
            s = p.settings
            out = await p.compute(
                user_id,
                K_MAX,
                [],
                None,
                time.perf_counter(),
                "nearline",
                s,
                deadline=False,
                on_retrieved=lambda r: fresh.done() or fresh.set_result(r),
            )
            if p.normal_answer(out):
                # Awaited: a request that joined this computation reads the cache next.
                await asyncio.to_thread(p.store.cache_put, user_id, out["user_version"], out)
                result = "cached"
            else:
                result = "skipped" if out["fallback"] == "overload" else "not_reranked"
            p.metrics.nearline.labels(result).inc()
        except Exception as e:  # best effort: the request path recomputes
            p.metrics.nearline.labels("failed").inc()
            log.warning("nearline precompute for a user failed: %s", e)
        finally:
            fresh.cancel()  # nobody waits on a retrieval that never came
            if p.fresh.get(user_id) is fresh:
                del p.fresh[user_id]

    # -- the precompute of every known user ----------------------------------------------------

    def enabled(self) -> bool:
        s = self.path.settings
        return s.warm and self.path.caches(s)

    def ensure_warming(self) -> None:
        """On the event loop: the precompute of the served version's lists, once per
        version (a hot swap starts over; turning `warm` off stops it)."""
        p = self.path
        key = (p.model.version, p.settings.store) if self.enabled() else None
        if key == self._warm_key:
            return
        if self._warm_task is not None:
            self._warm_task.cancel()
        self._warm_key, self._warm_task = key, None
        self.warm = {"model": key[0] if key else None, "users": 0, "done": 0, "seconds": None}
        if key is not None:
            self._warm_task = p.spawn(self._warm(key))

    def ready(self) -> bool:
        """Whether answers will be normal: the precompute is done (or off), so the first
        requests are not queued behind it nor answered degraded while it runs."""
        if not self.enabled():
            return True
        w, share = self.warm, self.path.settings.ready_warm_share
        if w["model"] != self.path.model.version:
            return False
        return w["seconds"] is not None or (w["users"] > 0 and w["done"] >= share * w["users"])

    def _quiet_s(self) -> float:
        return self.path.settings.warm_quiet_ms / 1000

    def _quiet(self) -> bool:
        p = self.path
        idle_s = time.perf_counter() - p.last_request
        return p.inflight == 0 and not p.pending and idle_s >= self._quiet_s()

    async def _warm(self, key: tuple[str, str]) -> None:
        """Re-rank and cache every known user's list, one user at a time and only while no
        request is in flight: requests never queue behind more than one precompute. A
        list already cached at the user's current version is kept."""
        p, state = self.path, self.warm
        users = p.catalog.users_by_activity()
        if p.settings.warm_users is not None:
            users = users[: p.settings.warm_users]
        state["users"] = len(users)
        t = time.perf_counter()
        loop = asyncio.get_running_loop()
        for user in users:
            while not self._quiet():
                await asyncio.sleep(max(self._quiet_s(), 0.005))
            if (p.model.version, p.settings.store) != key:
                return  # swapped meanwhile: the new version's own task warms it
            if p.cached(user, 1) is None:
                # Its own future: a request for this user does not wait on a precompute.
                await self.precompute(user, loop.create_future())
            state["done"] += 1
        state["seconds"] = round(time.perf_counter() - t, 1)
        log.warning("precomputed the lists of %d users in %.1f s", len(users), state["seconds"])
