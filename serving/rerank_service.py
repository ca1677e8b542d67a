"""The trained re-ranker of one model version as a plain service (no Ray): the Reranker
deployment wraps it, replay and the benchmarks call it in-process."""

from __future__ import annotations

import numpy as np

from pipelines.artifact import load_dataset
from pipelines.errors import ArtifactError
from serving.catalog import Catalog
from serving.config import LiveSettings
from serving.events import EventStore, StoreUnavailable
from training.publish import ModelVersion
from training.reranker.features import feature_names


class RerankService:
    """The trained re-ranker for one model version (None when the version has none)."""

    def __init__(
        self,
        mv: ModelVersion,
        store: EventStore,
        settings: LiveSettings,
        sources: list[str] | None = None,
    ):
        from training.reranker.inference import Reranker

        if mv.reranker is None:
            raise ArtifactError(f"model version {mv.version} has no re-ranker")
        self.store = store
        ds = load_dataset(mv.dataset_uri)
        self.catalog = Catalog(ds)
        self.catalog.add(store.items())
        self.model = Reranker(
            mv.reranker, self.catalog.texts, settings.compression, threads=settings.rerank_threads
        )
        stack_sources = sources or json_sources(mv)
        if self.model.features != feature_names(stack_sources):
            raise ArtifactError(
                f"the re-ranker in {mv.version} was trained on other retrieval features than "
                "its stack produces; retrain it with this stack"
            )
        self.version = f"{mv.version}/{self.model.meta.get('kind') or 'features'}"
        self.k = self.model.k
        self.history_items = self.model.template.history_items
        self.warm_up()

    def warm_up(self) -> None:
        """Score one made-up request at load: the first forward pass pays one-off costs
        (allocations, kernel selection) that would otherwise land on the first user's
        request and blow its deadline."""
        items = np.arange(min(self.k + self.history_items, self.catalog.n_items))
        history, candidates = items[: self.history_items], items[self.history_items :]
        features = np.zeros((len(candidates), len(self.model.features)), dtype=np.float32)
        self.score([(history, candidates, features)])

    def sync_items(self) -> None:
        try:
            new = self.store.items(after=self.catalog.added)
        except StoreUnavailable:  # taken when the store is back; scoring goes on
            return
        if new:
            self.model.add_items(self.catalog.add(new))

    def score(self, requests: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """One score array per (history, candidates, features), for the first K candidates."""
        from training.reranker.examples import Row

        self.sync_items()
        rows = [
            Row(
                -1,
                np.asarray(h)[-self.history_items :],
                np.asarray(c)[: self.k],
                np.asarray(f)[: self.k],
                -1,
            )
            for h, c, f in requests
        ]
        return self.model.score_rows(rows, batch_size=len(rows))


def json_sources(mv: ModelVersion) -> list[str]:
    import json

    return json.loads((mv.path / "stack" / "stack.json").read_text())["sources"]
