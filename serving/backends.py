"""The back-end deployments of the graph: the event store's one writer, retrieval, the
re-ranker and the cold-start fallback. Each is a thin Serve shell around a plain service in
`serving.recommender`, `serving.rerank_service` and `serving.events`."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import numpy as np
from ray import serve

from serving.config import LiveSettings
from serving.events import Event, StoredItem, shared_store
from serving.recommender import RetrievalService, Retrieved, load_retrieval, refresh_retrieval
from serving.replicas import Replica, VersionedReplica
from serving.rerank_service import RerankService
from serving.responses import PopularOrder, popularity_answer
from training.publish import ModelVersion
from training.threads import set_threads

log = logging.getLogger("ray.serve")


@serve.deployment(name="EventStore")
class EventStoreDeployment(Replica):
    """The one writer of events, items and erasures."""

    def __init__(self, settings: dict[str, Any] | None = None):
        self._retention: threading.Thread | None = None
        self._start(settings, watch=False)

    def _apply(self, settings: LiveSettings) -> bool:
        self.settings = settings
        self.store = shared_store(settings.store)
        if settings.retention_days and self._retention is None:
            self._retention = threading.Thread(target=self._retain, daemon=True)
            self._retention.start()
        return False

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


@serve.deployment(name="Retrieval")
class RetrievalDeployment(VersionedReplica):
    """Candidate retrieval in its own replicas (`retrieval_in_api: false`): scales apart
    from the ingress, and may run on other nodes."""

    def __init__(self, settings: dict[str, Any] | None = None):
        # Torch and BLAS threads set explicitly (every available core, or LLMREC_THREADS):
        # one thread measured 10% fewer requests/s at concurrency 8 (docs/BENCHMARKS.md).
        set_threads(by_load=False)
        self.retrievals = 0
        self._start(settings)

    def load(self, mv: ModelVersion, settings: LiveSettings) -> RetrievalService:
        return load_retrieval(mv, settings)

    def stats(self) -> dict[str, int]:
        """What this replica has done (the tests of the remote path read it)."""
        return {"retrievals": self.retrievals}

    def refresh(self, service: RetrievalService, settings: LiveSettings) -> None:
        refresh_retrieval(service, settings)

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
        self.retrievals += 1
        if self.settings.drills.retrieval_delay_ms:
            time.sleep(self.settings.drills.retrieval_delay_ms / 1000)
        return self.service(version).retrieve(
            user_id, exclude, category, n=candidates, shown=shown, reranked=reranked
        )

    def similar(self, item_id: str, k: int) -> list[dict] | None:
        return self.current.similar(item_id, k)

    def version(self) -> str:
        return self.current.version


@serve.deployment(name="Reranker")
class RerankerDeployment(VersionedReplica):
    def __init__(self, settings: dict[str, Any] | None = None):
        self._start(settings)

    def _apply(self, settings: LiveSettings) -> bool:
        # Batching is a live setting: the queue takes the new limits for its next batch.
        self.score.set_max_batch_size(settings.rerank_batch_size)
        self.score.set_batch_wait_timeout_s(settings.rerank_batch_wait_ms / 1000)
        return super()._apply(settings)

    def load(self, mv: ModelVersion, settings: LiveSettings) -> RerankService | None:
        if mv.reranker is None or not settings.rerank:
            return None
        return RerankService(mv, shared_store(settings.store), settings)

    def version(self) -> str | None:
        return None if self.current is None else self.current.version

    def live_settings(self) -> dict[str, Any]:
        out = super().live_settings()
        # What the batch queue itself holds (Serve's getters are private; its setters are
        # the documented way to change them).
        out["batching"] = {
            "max_batch_size": self.score._get_max_batch_size(),
            "batch_wait_timeout_s": self.score._get_batch_wait_timeout_s(),
        }
        import torch

        out["torch_threads"] = torch.get_num_threads()
        return out

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def score(self, requests: list[tuple]) -> list[np.ndarray]:
        """Each request is (history, candidates, features, model version or None)."""
        drills = self.settings.drills
        if drills.rerank_fail:
            raise RuntimeError("re-ranker failure injected by drills.rerank_fail")
        if drills.rerank_delay_ms:
            await asyncio.sleep(drills.rerank_delay_ms / 1000)
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
class ColdStartDeployment(VersionedReplica):
    """Popularity lists: the answer when retrieval itself fails. A late or refused
    retrieval leaves no time for a hop: the Api answers from its own popularity counts."""

    def __init__(self, settings: dict[str, Any] | None = None):
        self._start(settings)

    def load(self, mv: ModelVersion, settings: LiveSettings):
        from pipelines.artifact import load_dataset
        from serving.catalog import Catalog
        from training.stack import fallback_popularity

        pop = PopularOrder(fallback_popularity(mv.path / "stack"))
        return mv.version, pop, Catalog(load_dataset(mv.dataset_uri))

    def fallback(self, user_id: str, k: int, exclude: list[str]) -> dict[str, Any]:
        version, pop, catalog = self.current
        return {"items": popularity_answer(pop, catalog, k, exclude), "model": version}
