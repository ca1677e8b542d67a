"""Retrieval as the Serve graph does it, as plain classes (no Ray): a user's state from the
dataset plus their stored events, candidate retrieval, and the explanation of each pick.
The re-ranker's service is `serving.rerank_service`, the response `serving.responses`; the
deployments in `serving.backends` are thin shells around them, and the benchmark calls them
in-process to measure the Serve overhead."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pipelines.artifact import load_dataset
from pipelines.errors import ArtifactError
from serving.catalog import Catalog
from serving.config import LiveSettings
from serving.events import POSITIVE, Event, EventStore, StoreUnavailable, shared_store
from serving.retrieved import Retrieved, UserState, demote_near
from training.candidates import CandidateConfig, Candidates
from training.new_item_place import most_engaged
from training.publish import ModelVersion
from training.reranker.examples import subset
from training.reranker.features import candidate_features, feature_names
from training.retrieval.base import pad_to
from training.retrieval.fusion import similar_ranking

HISTORY_SOURCES = ("transitions", "item-kNN BM25", "content")
CF_SOURCES = ("ALS", "BPR")
#: Sources that read the order of the whole recent history; they name no single "because"
#: item (a leave-one-out search over them would cost a model call per history item).
SEQUENCE_SOURCES = ("SASRec", "transitions (recall)")
EXPLAIN_RECENT = 5
#: how often a replica reads the live counts of new items from the store (seconds)
NEW_ITEM_COUNTS_EVERY_S = 5.0


def _finite(x: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(x), x, 0.0)


class RetrievalService:
    def __init__(self, mv: ModelVersion, store: EventStore, settings: LiveSettings):
        self.mv = mv
        self.store = store
        self.settings = settings
        ds = load_dataset(mv.dataset_uri)
        if ds.manifest.version != mv.dataset_version:
            raise ArtifactError(
                f"model version {mv.version} was built on dataset {mv.dataset_version}, but "
                f"'{mv.dataset_uri}' is now {ds.manifest.version}: publish a new version"
            )
        self.catalog = Catalog(ds, store)
        self.stack = mv.stack()
        self.generator = self.stack.generator(
            CandidateConfig(n=settings.candidates, shown_new_item_rank=settings.shown_new_item_rank)
        )
        self.sources = self.stack.source_names
        self.features = feature_names(self.sources)
        # Features are computed over the re-ranker's K candidates, and the prompt shows the
        # history length it was trained with (its checkpoint's template).
        self.rerank_k, self.history_items = 20, 10
        self.routing, self.feature_layer = None, None
        self.has_reranker = mv.reranker is not None
        if mv.reranker is not None:
            from training.reranker.model import RerankerConfig, read_meta
            from training.reranker.routing import FeatureLayer, RoutingTable

            self.routing = RoutingTable.load(mv.reranker)
            if self.routing is not None:
                self.feature_layer = FeatureLayer.load(mv.reranker)

            template = RerankerConfig.model_validate(read_meta(mv.reranker)["config"]).template
            self.rerank_k, self.history_items = template.candidates, template.history_items
        self._folded: dict[int, int] = {}
        self._trained: dict[int, dict[str, np.ndarray]] = {}  # CF vectors before any refold
        # Load the text encoder now, not on the first new item (seconds).
        content = self.stack.sources.get("content")
        if content is not None:
            content.encoder.encode(["warm-up"])
        self.sync_items()
        self._counts_at = -np.inf
        self.sync_new_item_counts()

    @property
    def version(self) -> str:
        return self.mv.version

    def sync_items(self) -> int:
        """Take items added through the API since the last call; returns how many (0 while
        the store is down: they are taken when it is back)."""
        try:
            new = self.store.items(after=self.catalog.added)
        except StoreUnavailable:
            return 0
        if not new:
            return 0
        texts = self.catalog.add(new)
        n = self.catalog.n_items
        for model in self.stack.sources.values():
            model.partial_fit_items(n, texts)
        self.stack.popularity.partial_fit_items(n, texts)
        if self.stack.segment is not None:
            self.stack.segment.partial_fit_items(n, texts)
        if self.stack.covisits is not None:
            self.stack.covisits.partial_fit_items(n, texts)
        self.generator.n_items = n
        return len(new)

    def sync_new_item_counts(self) -> None:
        """The live counts of the items no fitted interaction names (the new-item slots'
        order), read from the store at most every `NEW_ITEM_COUNTS_EVERY_S`: one round
        trip, not one per request. While the store is down the last counts stay."""
        now = time.monotonic()
        if now - self._counts_at < NEW_ITEM_COUNTS_EVERY_S:
            return
        self._counts_at = now
        unseen = np.flatnonzero(self.generator.unseen())
        ids = [self.catalog.item_ids[i] for i in unseen]
        try:
            counts = self.store.item_counts(ids)
        except StoreUnavailable:
            return
        live = np.zeros(self.catalog.n_items)
        live[unseen] = [counts.get(i, 0) for i in ids]
        self.generator.live_counts = live

    def user_state(self, user_id: str) -> UserState:
        """The user's state from the dataset and the store; while the store is down, from
        the dataset alone (the answer says so: it misses the user's recent events)."""
        index = self.catalog.index_of(user_id)
        try:
            events = self.store.events_of(user_id)
            version = self.store.version(user_id) if events else 0
        except StoreUnavailable:
            state = self.state_of(user_id, index, [], 0, time.time())
            state.store_down = True
            return state
        state = self.state_of(user_id, index, events, version, time.time())
        # Stated attributes only matter on the cold-start path: read them only then.
        seg = self.stack.segment
        if (
            seg is not None
            and not len(state.history)
            and (stated := self.store.attributes(user_id))
        ):
            state.segment = {**seg.user_codes(index), **seg.encode(stated, strict=False)}
        return state

    def state_of(
        self,
        user_id: str,
        index: int | None,
        events: list[Event],
        version: int,
        now: float,
    ) -> UserState:
        """A user's state from the dataset row `index` and their stored `events` as of
        `now` (replay passes a past moment and the events before it)."""
        hist = list(self.catalog.base_history(index))
        dislikes, recent, unknown = [], [], 0
        since = now - self.settings.dislike_window_s
        through, in_base = self.catalog.events_through, set(hist)
        for e in events:
            i = self.catalog.item_index.get(e.item_id)
            if i is None:
                unknown += 1
            elif e.seq and e.seq <= through and i in in_base and e.type in POSITIVE:
                continue  # retrained on: in the dataset's history already
            elif e.type == "dislike":
                dislikes.append(i)
                if e.timestamp >= since:
                    recent.append(i)
            elif e.type in POSITIVE:
                hist.append(i)
        return UserState(
            user_id,
            index,
            np.asarray(hist, dtype=np.int64),
            np.asarray(dislikes, dtype=np.int64),
            version,
            unknown,
            np.asarray(recent, dtype=np.int64),
        )

    def _refold(self, state: UserState) -> None:
        """A user's CF vectors are recomputed once per new event version (milliseconds).
        When the user's events are gone (erased: version 0 again), the vectors the model
        version was trained with come back: nothing of the erased events stays."""
        u = state.index
        if u is None or state.version == self._folded.get(u, 0):
            return
        if state.version == 0:
            for name, vector in self._trained.pop(u, {}).items():
                self.stack.sources[name].user_factors[u] = vector
            self._folded.pop(u, None)
            return
        if u not in self._trained:
            self._trained[u] = {
                name: m.user_factors[u].copy()
                for name, m in self.stack.sources.items()
                if getattr(m, "user_factors", None) is not None and u < len(m.user_factors)
            }
        for model in self.stack.sources.values():
            model.partial_fit_users(np.array([u]), [state.history])
        self._folded[u] = state.version

    def retrieve(
        self,
        user_id: str,
        exclude: list[str] | None = None,
        category: str | None = None,
        history_items: int | None = None,
        n: int | None = None,
        shown: int | None = None,
        reranked: bool = True,
    ) -> Retrieved:
        """`n` candidates (default: the `candidates` setting; an experiment variant may ask
        for another count). With `shown` (the list's length), only the candidates that can
        reach the list are explained: the first `shown`, and the head the re-ranker may
        reorder unless `reranked` is False (the explanations cost more than the rest of
        retrieval)."""
        start = time.perf_counter()
        self.sync_items()
        self.sync_new_item_counts()
        state = self.user_state(user_id)
        return self.retrieve_for(state, exclude, category, history_items, n, start, shown, reranked)

    def retrieve_for(
        self,
        state: UserState,
        exclude: list[str] | None = None,
        category: str | None = None,
        history_items: int | None = None,
        n: int | None = None,
        start: float | None = None,
        shown: int | None = None,
        reranked: bool = True,
    ) -> Retrieved:
        """Candidates for a given user state (replay builds past states)."""
        start = time.perf_counter() if start is None else start
        user_id = state.user_id
        self._refold(state)
        excluded = list(state.dislikes)
        unknown_excludes = 0
        for x in exclude or []:
            i = self.catalog.item_index.get(x)
            if i is None:
                unknown_excludes += 1
            else:
                excluded.append(i)
        allowed = self.catalog.category_mask(category) if category else None
        c = self.generator.generate(
            state.index,
            state.history,
            n=n or self.settings.candidates,
            exclude=excluded,
            allowed=allowed,
            segment=state.segment,
            # A head the re-ranker (or its feature layer) reorders holds new items too.
            head=self.rerank_k if self.has_reranker and reranked else None,
        )
        content = self.stack.sources.get("content")
        demoted = 0
        if content is not None and len(state.recent_dislikes) and self.settings.dislike_window_s:
            order, demoted = demote_near(
                c.items, content.embeddings, state.recent_dislikes, self.settings.dislike_similarity
            )
            c = subset(c, order)
        head = subset(c, np.arange(min(self.rerank_k, len(c.items))))
        explained = None
        rank = self.generator.config.shown_new_item_rank
        if shown is not None:
            explained = max(shown, self.rerank_k if reranked and c.path != "cold_start" else 0)
            placed = most_engaged(c.new_events)
            if rank and placed is not None:
                # the candidate the shown list's new-item place may take is explained too
                explained = max(explained, placed + 1)
        feats = candidate_features(head, self.sources, self.stack.log_popularity)
        route, reason, route_scores = self.route(c.path, len(state.history), feats)
        return Retrieved(
            user_id=user_id,
            path=c.path,
            items=c.items,
            item_ids=[self.catalog.item_ids[i] for i in c.items],
            titles=[self.catalog.titles[i] for i in c.items],
            scores=c.scores,
            features=feats,
            prompt_history=state.history[-(history_items or self.history_items) :],
            explanations=self.explain(c, state.history, explained),
            user_version=state.version,
            model_version=self.version,
            seconds=time.perf_counter() - start,
            history_len=len(state.history),
            store_down=state.store_down,
            route=route,
            route_reason=reason,
            route_scores=route_scores,
            new_events=c.new_events,
            new_item_rank=rank,
            ignored={
                "unknown_item_events": state.unknown_items,
                "unknown_excludes": unknown_excludes,
                "demoted_near_dislikes": demoted,
            },
        )

    def route(
        self, path: str, history_len: int, features: np.ndarray
    ) -> tuple[str, str | None, np.ndarray | None]:
        """(stage, why, feature-layer scores) of the routing table for this request; "lm"
        with no reason where the table does not decide (no table, the LM's own slice, or a
        cold start, which the re-rank stage never takes)."""
        from training.reranker.routing import request_stage

        stage = request_stage(self.routing, path, history_len)
        if stage is None or stage == "lm":
            return "lm", None, None
        s = self.routing.slice_for(history_len)
        scores = self.feature_layer.score(features) if stage == "features" else None
        return stage, f"routing table, history {s.label}: {s.reason}", scores

    def similar(self, item_id: str, k: int) -> list[dict[str, Any]] | None:
        """Items like `item_id` (`similar_ranking` of `RetrievalStack.similar_models`: SASRec,
        content similarity, which places an item added a moment ago, and the private "also
        watched" release where the stack has one). None: unknown item."""
        self.sync_items()
        i = self.catalog.item_index.get(item_id)
        if i is None:
            return None
        n = self.catalog.n_items
        scores = {
            s: pad_to(m.score(None, np.array([i])), n)[:n]
            for s, m in self.stack.similar_models().items()
        }
        top, fused, ranks = similar_ranking(scores, i, k)
        return [
            {
                "item_id": self.catalog.item_ids[j],
                "title": self.catalog.titles[j],
                "score": float(fused[j]),
                "sources": [s for s, r in ranks.items() if r[j] > 0],
            }
            for j in top
        ]

    def explain(
        self, c: Candidates, history: np.ndarray, first: int | None = None
    ) -> list[dict[str, Any]]:
        """Per candidate (the `first` ones; None: all): its sources with their scores, and
        one sentence naming what drove it. The history item named is the top contributor:
        of the user's recent items, the one whose removal from the history lowers the
        source's score for the candidate most (leave-one-out, so recency weights and windows
        count as the source counts them)."""
        m = len(c.items) if first is None else min(first, len(c.items))
        items = c.items[:m]
        sources_of = [c.sources_of(k) for k in range(m)]
        used = {s for sources in sources_of for s in sources}
        positions = np.arange(len(history))[-EXPLAIN_RECENT:]
        drops = {}  # source -> (position, candidate) score drop
        for s in HISTORY_SOURCES:
            if s in self.stack.sources and len(positions) and s in used:
                model = self.stack.sources[s]
                histories = [history] + [np.delete(history, p) for p in positions]
                scores = _finite(np.stack([model.score_items(None, h, items) for h in histories]))
                drops[s] = scores[0] - scores[1:]
        segments = [None] * m
        if c.segment and self.stack.segment is not None:
            segments = self.stack.segment.top_segment(c.segment, items)
        out = []
        for k, item in enumerate(items):
            sources = sources_of[k]
            because, via, sentence, segment = None, None, None, None
            for s in HISTORY_SOURCES:
                if s in sources and s in drops:
                    col = drops[s][:, k]
                    if col.max() > 0:
                        h = int(history[positions[int(np.argmax(col))]])
                        because, via = self.catalog.item_ids[h], s
                        title = self.catalog.titles[h]
                        sentence = (
                            f"new item similar to {title}"
                            if item >= self.catalog.n_base_items
                            else f"because you watched {title}"
                        )
                        break
            if sentence is None:
                if c.explored is not None and c.explored[k]:
                    sentence = "new or rarely seen: picked to explore"
                elif c.new_events is not None and c.new_events[k] > 0:
                    sentence = "new, and engaging other users now"
                elif "segment_popular" in sources and segments[k] is not None:
                    attr, value = segments[k]
                    segment = {"attribute": attr, "value": value}
                    sentence = f"popular with users like you ({attr}: {value})"
                elif any(s in sources for s in CF_SOURCES):
                    sentence = "liked by users with tastes like yours"
                elif any(s in sources for s in SEQUENCE_SOURCES):
                    sentence = "often watched after what you watched recently"
                elif "recent popular" in sources:
                    sentence = "popular right now"
                else:
                    sentence = "popular overall"
            scores = {
                src: float(c.source_scores[src][k])
                for src in sources
                if src in c.source_scores and np.isfinite(c.source_scores[src][k])
            }
            out.append(
                {
                    "sources": sources,
                    "source_scores": scores,
                    "because": because,
                    "because_source": via,
                    "segment": segment,
                    "explanation": sentence,
                }
            )
        return out


def load_retrieval(mv: ModelVersion, settings: LiveSettings) -> RetrievalService:
    """A replica's retrieval service for `mv` (the Retrieval deployment's, or the Api's own
    with `retrieval_in_api`)."""
    return RetrievalService(mv, shared_store(settings.store), settings)


def refresh_retrieval(service: RetrievalService, settings: LiveSettings) -> None:
    """Live settings a loaded retrieval service reads per request (candidates, dislikes,
    the shown list's new-item place)."""
    service.settings = settings
    service.generator.config.shown_new_item_rank = settings.shown_new_item_rank
