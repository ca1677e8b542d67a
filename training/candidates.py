"""Per-request candidate generation: every source, fused, filtered, tagged; routed by how
much history the user has (cold start, sparse, warm). Pure numpy; serving calls it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from training.new_item_place import DEFAULT_RANK, ShownNewItemRank
from training.retrieval.base import Retriever, check_n, clean_history, pad_to, top_n
from training.retrieval.content import Content
from training.retrieval.fusion import LearnedFusion, fuse
from training.retrieval.popularity import MostPopular, SegmentPopular
from training.retrieval.views import SourceView, dense_view, values_at

Path = Literal["warm", "sparse", "cold_start"]


class CandidateConfig(BaseModel):
    """How candidates are drawn; recorded with the model version."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(50, ge=1, le=1000, description="candidates per request")
    depth: int = Field(100, ge=1, description="how deep each source's list is read")
    sparse_below: int = Field(5, ge=1, description="histories shorter than this are sparse")
    sparse_sources: list[str] = Field(default_factory=lambda: ["transitions", "content"])
    sparse_popularity: float = Field(
        1.0,
        ge=0,
        description="sparse path: weight of overall popularity's list in its rank fusion, "
        "beside each source's weight of 1 (0: off; measured in docs/BENCHMARKS.md, New "
        "users)",
    )
    sparse_popularity_counts: Literal["all", "first_items"] = Field(
        "all",
        description="sparse path: popularity over every interaction, or over each user's "
        "first items (the segment model's overall histogram, as at cold start)",
    )
    exploration_share: float = Field(
        0.1, ge=0, le=1, description="cold start: share of slots given to rarely seen items"
    )
    new_item_share: float = Field(
        0.1,
        ge=0,
        le=1,
        description="warm and sparse: share of slots kept for items no fitted interaction "
        "names (new items): the most engaged since the model's data, then the content "
        "source's best of them",
    )
    new_item_min_events: int = Field(
        3,
        ge=1,
        description="a new item's live events count in its slots from this many on (fewer "
        "count as none: a single click never puts an item in others' lists)",
    )
    shown_new_item_rank: ShownNewItemRank = DEFAULT_RANK
    seed: int = 0


@dataclass
class Candidates:
    items: np.ndarray
    scores: np.ndarray
    path: Path
    #: per source, each candidate's rank in that source's list (0 = not retrieved by it)
    source_ranks: dict[str, np.ndarray] = field(default_factory=dict)
    source_scores: dict[str, np.ndarray] = field(default_factory=dict)
    explored: np.ndarray | None = None
    ignored_history: int = 0
    #: cold start: the user's segment codes the popularity was taken within
    segment: dict[str, int] | None = None
    #: per candidate, the live events of a new item (counted from `new_item_min_events`;
    #: 0: not new, or not engaged yet): what the shown list's new-item place goes by
    new_events: np.ndarray | None = None

    def sources_of(self, k: int) -> list[str]:
        """The sources that retrieved the k-th candidate."""
        return [s for s, r in self.source_ranks.items() if r[k] > 0]


class CandidateGenerator:
    def __init__(
        self,
        sources: dict[str, Retriever],
        popularity: MostPopular,
        segment: SegmentPopular | None = None,
        fusion: LearnedFusion | None = None,
        config: CandidateConfig | None = None,
    ):
        self.sources = sources
        self.popularity = popularity
        self.segment = segment
        #: a user with no stated attribute gets the segment model's overall histogram when
        #: it counts each user's first items (its default): sign-ups' first items look
        #: like other users' first items (+0.12 NDCG@10 at sign-up on ML-100k,
        #: docs/BENCHMARKS.md, Privacy), and with differential privacy on (the default)
        #: every count a cold-start list shows is then a private one
        self.first_items_overall = segment is not None and segment.counts_first_items
        self.fusion = fusion
        self.config = config or CandidateConfig()
        self.n_items = popularity.n_items
        #: positive events stored per item since the model's data, for the items no fitted
        #: interaction names (serving refreshes it from the event store; None: unknown).
        #: The new-item slots take the most engaged new items first: on ML-100k's new-item
        #: protocol their live counts rank a case's item far above content similarity does
        #: (docs/BENCHMARKS.md, New items).
        self.live_counts: np.ndarray | None = None

    def unseen(self) -> np.ndarray:
        """Per item: True where no fitted interaction names it (items added since the fit):
        the items the new-item slots are for."""
        counts = pad_to(self.popularity.counts.astype(np.float64), self.n_items, 0.0)
        return counts[: self.n_items] == 0

    def route(self, history_length: int) -> Path:
        if history_length == 0:
            return "cold_start"
        return "sparse" if history_length < self.config.sparse_below else "warm"

    def generate(
        self,
        user: int | None,
        history: np.ndarray | list[int],
        n: int | None = None,
        exclude: np.ndarray | list[int] | None = None,
        allowed: np.ndarray | None = None,
        segment: dict[str, int] | None = None,
        head: int | None = None,
    ) -> Candidates:
        """Candidates for one request.

        `history` is the user's items oldest first (dislikes are not history: put them in
        `exclude`); `allowed` is an optional boolean mask over items (category / business
        filters). Unknown users and empty histories take the cold-start path, with
        popularity within `segment` (codes of stated attributes; default: the fitted user's
        own) when the user has any. `head`: the first `head` candidates are what a re-ranker
        reorders; they end with new-item slots of their own, as a list of `head` would, so
        that a new item can reach the re-ranked list (the whole list's slots lie beyond it).
        """
        n = check_n(self.config.n if n is None else n)
        hist, ignored = clean_history(history, self.n_items)
        banned = np.zeros(self.n_items, dtype=bool)
        banned[hist] = True
        if exclude is not None:
            banned[clean_history(exclude, self.n_items)[0]] = True
        if allowed is not None:
            banned |= ~np.asarray(allowed, dtype=bool)[: self.n_items]
        path = self.route(len(hist))
        if path == "cold_start":
            return self._cold_start(user, n, banned, ignored, segment)

        names = (
            list(self.sources)
            if path == "warm"
            else [s for s in self.config.sparse_sources if s in self.sources]
        )
        views = self._views(names, user, hist, banned)
        lists = dict(views)
        weights = dict.fromkeys(names, 1.0)
        if path == "sparse" and self.config.sparse_popularity > 0:
            # After one or two events the sources' lists are noisy; popularity is the
            # prior that keeps a sparse list from ranking below the cold-start one.
            prior = np.log1p(self.popularity.counts)
            if self.config.sparse_popularity_counts == "first_items" and (self.first_items_overall):
                prior = pad_to(self.segment.overall.astype(np.float64), len(prior), 0.0)
            prior = pad_to(prior, self.n_items, -np.inf)[: self.n_items]
            lists["popular"] = dense_view(np.where(banned, -np.inf, prior), self.config.depth)
            weights["popular"] = self.config.sparse_popularity
        # Every source's list, fused over their union: a few hundred items, whatever the
        # catalogue's size.
        union = np.unique(np.concatenate([v.top for v in lists.values()])).astype(np.int64)
        ranks = {s: v.ranks_at(union) for s, v in lists.items()}
        counts = self.popularity.counts

        def log_pop(items: np.ndarray) -> np.ndarray:  # items past the counts: 0 (never seen)
            inside = items < len(counts)
            return np.log1p(np.where(inside, counts[np.where(inside, items, 0)], 0.0))

        if path == "warm" and self.fusion is not None:
            f = self.fusion.sources
            fused = self.fusion.score_entries(
                np.stack([ranks[s] for s in f]),
                np.stack([views[s].at(union) for s in f]),
                np.array([[views[s].mean] for s in f]),
                np.array([[views[s].std] for s in f]),
                log_pop(union),
            )
        else:
            fused = fuse(ranks, weights)
            fused[fused == 0] = -np.inf
        items = union[top_n(fused, n)]
        # Below the fused items, popularity backfills (a request gets n if it can).
        top_pop = np.log1p(float(counts.max(initial=0)))
        if len(items) < n:
            backfill = -1e6 + log_pop(np.arange(self.n_items)) / (top_pop + 1)
            backfill[union] = np.where(np.isfinite(fused), fused, backfill[union])
            items = top_n(backfill, n, np.flatnonzero(banned))
        # New items' live events, over the catalogue once per request (the slots' order and
        # the candidates' `new_events` both read them); None while the counts are unknown.
        unseen = self.unseen()
        live = None if self.live_counts is None else self._live(unseen)
        slots = self._new_slots(n)
        order = self._new_item_order(views, banned, unseen, live) if slots else None
        whole = self._with_new_items(items, order, n)
        if head is not None and 0 < head < n:
            # Every item of the head's own list is in the whole one (its fused part comes
            # first there, its new items rank at least as high in a smaller pool): n stay.
            first = self._with_new_items(items[:head], order, head)
            whole = np.concatenate([first, whole[~np.isin(whole, first)]])[:n]
        items = whole
        at = values_at(union, fused, items, -np.inf)
        at = np.where(np.isfinite(at), at, -1e6 + log_pop(items) / (top_pop + 1))
        return Candidates(
            items=items,
            scores=at.astype(np.float32),
            path=path,
            source_ranks={s: views[s].ranks_at(items) for s in names},
            source_scores={s: views[s].at(items) for s in names},
            ignored_history=ignored,
            new_events=None if live is None else live[items],
        )

    def _views(
        self, names: list[str], user: int | None, hist: np.ndarray, banned: np.ndarray
    ) -> dict[str, SourceView]:
        """What each source says for this request (`SourceView`): from an index where the
        source has one (`Retriever.search`), else from its scores over the whole catalogue.
        Banned items are masked once, here; a source not yet grown for the newest items
        cannot score them either (-inf)."""
        depth, out = self.config.depth, {}
        for s in names:
            src = self.sources[s]
            view = src.search(user, hist, banned, depth)
            if view is None:
                raw = pad_to(src.score(user, hist), self.n_items)[: self.n_items]
                view = dense_view(np.where(banned, -np.inf, raw), depth)
            out[s] = view
        return out

    def _new_slots(self, n: int) -> int:
        """How many of a list of n are new-item slots (`new_item_share` of n)."""
        return round(self.config.new_item_share * n)

    def _live(self, unseen: np.ndarray) -> np.ndarray:
        """Per item, the live events of a new item (`unseen`), from `new_item_min_events`
        on; 0 for every other item."""
        live = pad_to(np.asarray(self.live_counts, np.float64), self.n_items, 0.0)
        live = live[: self.n_items]  # a view of the replica's counts: not written to
        return np.where(unseen & (live >= self.config.new_item_min_events), live, 0.0)

    def _new_item_order(
        self,
        views: dict[str, SourceView],
        banned: np.ndarray,
        unseen: np.ndarray,
        live: np.ndarray | None,
    ) -> np.ndarray | None:
        """The items no fitted interaction names, in the order the new-item slots take them:
        the other sources cannot rank an item they have not seen, so the fusion alone would
        almost never retrieve one. Most live events first (`live_counts`), then the content
        source's order (`unseen`: `unseen()`; `live`: `_live`, None while the counts are
        unknown); None when neither can order them."""
        text = next((s for s in views if isinstance(self.sources[s], Content)), None)
        if text is None and live is None:
            return None
        live = np.zeros(self.n_items) if live is None else live
        pool = np.flatnonzero(unseen & ~banned)
        similar = views[text].at(pool) if text is not None else np.full(len(pool), -np.inf)
        keep = np.isfinite(similar) | (live[pool] > 0)
        pool, similar = pool[keep], similar[keep]
        return pool[np.lexsort((-similar, -live[pool]))]

    def _with_new_items(self, items: np.ndarray, order: np.ndarray | None, n: int) -> np.ndarray:
        """`items` with its last slots (`new_item_share` of n) given to the first items of
        `order` (`_new_item_order`) that its head does not already hold."""
        k = self._new_slots(n)
        if not k or order is None:
            return items
        head = items[: max(len(items) - k, 0)]
        fresh = order[~np.isin(order, head)][:k]
        if not len(fresh):
            return items
        rest = items[len(head) :]
        rest = rest[~np.isin(rest, fresh)][: max(n - len(head) - len(fresh), 0)]
        return np.concatenate([head, fresh, rest]).astype(items.dtype)

    def _cold_start(
        self,
        user: int | None,
        n: int,
        banned: np.ndarray,
        ignored: int,
        segment: dict[str, int] | None,
    ) -> Candidates:
        codes = {}
        if self.segment is not None:
            codes = self.segment.user_codes(user) if segment is None else segment
        if codes:  # popularity among users who share the user's attributes
            name, raw = "segment_popular", self.segment.score_codes(codes)
        elif self.first_items_overall:  # each user's first items (privately released)
            name, raw = "popular", self.segment.score_codes({})
        else:  # nothing known about the user: overall popularity, named as such
            name, raw = "popular", self.popularity.score(user, np.zeros(0, dtype=np.int32))
        scores = pad_to(raw, self.n_items)[: self.n_items]
        n_explore = round(self.config.exploration_share * n)
        items = top_n(scores, n - n_explore, np.flatnonzero(banned))
        explored = np.zeros(0, dtype=np.int32)
        if n_explore:
            # Rarely seen items get a chance (new items have no count yet); seeded per user.
            taken = banned.copy()
            taken[items] = True
            pool = np.flatnonzero(~taken)
            seen = self.segment.overall if self.first_items_overall else self.popularity.counts
            seen = pad_to(np.asarray(seen, dtype=np.float64), self.n_items, 0.0)
            rare = pool[np.argsort(seen[pool], kind="stable")][: 10 * n_explore]
            digest = hashlib.sha256(f"{self.config.seed}:{user}".encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            explored = rng.permutation(rare)[:n_explore].astype(np.int32)
        all_items = np.concatenate([items, explored]).astype(np.int32)
        return Candidates(
            items=all_items,
            scores=scores[all_items].astype(np.float32),
            path="cold_start",
            source_ranks={
                name: np.concatenate([np.arange(1, len(items) + 1), np.zeros(len(explored), int)])
            },
            source_scores={name: scores[all_items]},
            explored=np.isin(all_items, explored),
            ignored_history=ignored,
            segment=codes or None,
        )
