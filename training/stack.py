"""The fitted retrieval stage as one unit: every source, popularity, segments and the learned
fusion, with the hyper-parameters `llmrec eval` selected on validation. Saved and loaded as
plain folders; serving and the re-ranker's training build their `CandidateGenerator` from it.

The fusion is trained on held-out next items (each user's last training items hidden from
the sources), never on the validation or test targets, so every later stage measured on
those targets is free of leakage."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from pipelines.artifact import Dataset
from pipelines.errors import ArtifactError
from pipelines.schema import Split
from training.candidates import CandidateConfig, CandidateGenerator
from training.fit_steps import FitSteps, step
from training.retrieval import (
    Content,
    FitData,
    MostPopular,
    PrivateCoVisits,
    Retriever,
    SegmentPopular,
    SelfAttentive,
)
from training.retrieval.embeddings import TextEncoder
from training.retrieval.fusion import (
    LEGACY_SIMILAR_SOURCES,
    SIMILAR_SOURCES,
    LearnedFusion,
    source_ranks,
)
from training.stack_spec import (  # noqa: F401  (re-exported: the stack's public names)
    COVISIT_ENTRY,
    DEFAULT_SOURCES,
    SEGMENT_ENTRY,
    StackSpec,
    covisit_params,
    load_spec,
    segment_params,
    source_spec,
    spec_from_eval,
    spec_from_json,
    spec_to_json,
    with_text_model,
)
from training.warm_start import (  # noqa: F401  (re-exported: the stack's public names)
    NEXT_SHARE,
    FullFit,
    WarmStart,
    full_fit_is_warm,
    item_map,
    warm_from_holdout,
)

STACK_FORMAT = 1
FUSION_DEPTH = 100
#: Users the fusion is trained on (a seeded sample beyond), and users x items scored at once.
FUSION_USERS = 10_000
FUSION_CELLS = 20_000_000


def load_segment(folder: str | Path) -> SegmentPopular | None:
    """A fitted stack's segment model (None: its data had no user attributes)."""
    from training.retrieval.base import Retriever

    path = Path(folder) / "segment"
    return Retriever.load(path) if path.exists() else None


def fallback_popularity(folder: str | Path, segment: SegmentPopular | None = None) -> np.ndarray:
    """What a fitted stack's last-resort popularity list ranks by (serving's cold-start
    fallbacks): the segment model's overall histogram (each user's first items, released
    with differential privacy by default: the counts the cold-start list uses), as shares;
    without such a model, the exact interaction counts. `segment`: the stack's segment
    model where the caller has loaded it already."""
    from training.retrieval.base import Retriever

    segment = segment if segment is not None else load_segment(folder)
    if segment is not None and segment.counts_first_items:
        return np.asarray(segment.overall, dtype=np.float64)
    return np.asarray(Retriever.load(Path(folder) / "popularity").counts, dtype=np.float64)


def text_encoder(spec: StackSpec | None = None) -> TextEncoder:
    """The text encoder of the spec's content source (its `model_path`: a folder, URI or
    name such as `smollm2-135m`; default MiniLM), with the on-disk embedding cache. The
    stack's item embeddings and serving's new items go through the same model."""
    for klass, params in (spec or DEFAULT_SOURCES).values():
        if issubclass(klass, Content):
            return TextEncoder(params.get("model_path"), cache=True)
    return TextEncoder(cache=True)


@dataclass
class RetrievalStack:
    sources: dict[str, Retriever]
    popularity: MostPopular
    segment: SegmentPopular | None
    fusion: LearnedFusion | None
    dataset_version: str
    through: str
    #: the private "also watched" pairs (`covisit_params`: by default only in a stack
    #: without SASRec)
    covisits: PrivateCoVisits | None = None
    #: wall seconds per step of the fit that made it (`FitSteps`; empty: not recorded)
    fit_seconds: dict[str, float] = field(default_factory=dict)

    def generator(self, config: CandidateConfig | None = None) -> CandidateGenerator:
        return CandidateGenerator(
            self.sources, self.popularity, self.segment, self.fusion, config or CandidateConfig()
        )

    @property
    def source_names(self) -> list[str]:
        return list(self.sources)

    @property
    def log_popularity(self) -> np.ndarray:
        return np.log1p(self.popularity.counts)

    def spec(self) -> StackSpec:
        """The recipe this stack was fitted with: its sources and, under `SEGMENT_ENTRY`,
        its segment model's parameters (what a retrain refits with)."""
        out: StackSpec = {n: (type(m), dict(m.params)) for n, m in self.sources.items()}
        if self.segment is not None:
            out[SEGMENT_ENTRY] = (SegmentPopular, dict(self.segment.params))
        if self.covisits is not None:
            out[COVISIT_ENTRY] = (PrivateCoVisits, dict(self.covisits.params))
        return out

    def similar_models(self) -> dict[str, Retriever]:
        """What `/items/{id}/similar` ranks by, no exact count: the private "also watched"
        release where the stack has one, its SASRec and content sources (found by kind,
        whatever their names). A stack with neither the release nor SASRec (saved before
        the release existed) ranks by its item-to-item sources (`LEGACY_SIMILAR_SOURCES`),
        transition and co-occurrence counts included."""
        kinds = (SelfAttentive, Content)
        out: dict[str, Retriever] = {}
        if self.covisits is not None:
            out[SIMILAR_SOURCES[0]] = self.covisits
        out |= {n: m for n, m in self.sources.items() if isinstance(m, kinds)}
        if self.covisits is None and not any(isinstance(m, SelfAttentive) for m in out.values()):
            return {n: self.sources[n] for n in LEGACY_SIMILAR_SOURCES if n in self.sources}
        return out

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for i, model in enumerate(self.sources.values()):
            model.save(folder / f"source-{i}")
        self.popularity.save(folder / "popularity")
        if self.segment is not None:
            self.segment.save(folder / "segment")
        if self.covisits is not None:
            self.covisits.save(folder / "covisits")
        meta = {
            "format": STACK_FORMAT,
            "sources": list(self.sources),
            "dataset_version": self.dataset_version,
            "through": self.through,
            "fusion": self.fusion.to_json() if self.fusion is not None else None,
            # The definition the sources were fitted from: what the model version serves.
            "spec": spec_to_json(self.spec()),
            # How each source was trained where it chose (SASRec's full or sampled softmax).
            "fitted": {n: m.fit_info for n, m in self.sources.items() if m.fit_info},
            # What the segment counts' differential privacy spent (None: exact counts).
            "segment_release": self.segment.fit_info if self.segment is not None else None,
            # ... and the "also watched" pairs' (`/items/{id}/similar`).
            "covisit_release": self.covisits.fit_info if self.covisits is not None else None,
            # Where the fit's time went (`llmrec fit` prints it too).
            "fit_seconds": self.fit_seconds,
        }
        (folder / "stack.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(
        cls, folder: str | Path, expected_dataset_version: str | None = None
    ) -> RetrievalStack:
        folder = Path(folder)
        path = folder / "stack.json"
        if not path.exists():
            raise ArtifactError(f"no retrieval stack at '{folder}' (stack.json missing)")
        meta = json.loads(path.read_text())
        if meta.get("format") != STACK_FORMAT:
            raise ArtifactError(f"retrieval stack at '{folder}' has an unknown format; refit it")
        version = expected_dataset_version
        sources = {
            name: Retriever.load(folder / f"source-{i}", version)
            for i, name in enumerate(meta["sources"])
        }
        pop = Retriever.load(folder / "popularity", version)
        seg = Retriever.load(folder / "segment", version) if (folder / "segment").exists() else None
        co = folder / "covisits"
        covisits = Retriever.load(co, version) if co.exists() else None
        fusion = LearnedFusion.from_json(meta["fusion"]) if meta["fusion"] else None
        assert isinstance(pop, MostPopular)
        return cls(
            sources,
            pop,
            seg,
            fusion,
            meta["dataset_version"],
            meta["through"],
            covisits,
            meta.get("fit_seconds", {}),
        )


def _fit_sources(
    data: FitData,
    embeddings: np.ndarray | None,
    progress: bool,
    spec: StackSpec | None = None,
    warm: WarmStart | None = None,
    steps: FitSteps | None = None,
    prefix: str = "",
) -> dict[str, Retriever]:
    out: dict[str, Retriever] = {}
    for name, (klass, params) in tqdm(
        source_spec(spec).items(),
        desc=f"fit sources ({data.n_users} users)",
        disable=not progress,
    ):
        model = klass(**params)
        previous = warm.sources.get(name) if warm is not None else None
        with step(steps, prefix + name):
            if isinstance(model, Content) and embeddings is not None:
                out[name] = model.with_embeddings(embeddings, data)
            elif previous is not None and type(previous) is klass:
                out[name] = model.warm_fit(data, previous, warm.item_map, warm.share, warm.user_map)
            else:
                out[name] = model.fit(data)
    return out


def fit_fusion(
    sources: dict[str, Retriever],
    data: FitData,
    targets: np.ndarray,
    users: np.ndarray,
    max_users: int | None = FUSION_USERS,
) -> LearnedFusion:
    """Train the fusion on `targets` (one per user in `users`), items beyond `data`.

    The fusion is a small logistic model: `max_users` users (a seeded sample when there are
    more) train it as well as all of them would, and keep its cost bounded at any number of
    users. Users are scored a chunk at a time, so memory is the chunk's users x items."""
    names = list(sources)
    if max_users is not None and len(users) > max_users:
        pick = np.sort(np.random.default_rng(0).choice(len(users), max_users, replace=False))
        users, targets = users[pick], targets[pick]
    log_pop = np.log1p(np.bincount(data.seq_items, minlength=data.n_items))
    fusion = LearnedFusion(names, FUSION_DEPTH)
    matrix = data.matrix.to_scipy()
    chunk = max(1, FUSION_CELLS // max(data.n_items, 1))
    xs, ys = [], []
    for lo in range(0, len(users), chunk):
        part = users[lo : lo + chunk]
        histories = [data.history(int(u)) for u in part]
        seen = matrix[part]  # the history is not recommendable: -inf at its entries
        held = seen.data > 0
        rows = np.repeat(np.arange(len(part)), np.diff(seen.indptr))[held]
        cols = seen.indices[held]
        scores, ranks = {}, {}
        for name in names:
            s = sources[name].score_rows(part, histories)
            s[rows, cols] = -np.inf
            scores[name] = s
            ranks[name] = source_ranks(s, None, FUSION_DEPTH)
        x, y = fusion.training_rows(ranks, scores, log_pop, targets[lo : lo + chunk])
        xs.append(x)
        ys.append(y)
    return fusion.fit_rows(np.concatenate(xs), np.concatenate(ys))


def fit_stack(
    ds: Dataset,
    through: Split,
    fusion: LearnedFusion | None = None,
    holdout: int = 1,
    encoder: TextEncoder | None = None,
    embeddings: np.ndarray | None = None,
    progress: bool = True,
    spec: StackSpec | None = None,
    warm: WarmStart | None = None,
    steps: FitSteps | None = None,
    full_fit: FullFit | str = FullFit.auto,
) -> tuple[RetrievalStack, np.ndarray]:
    """Fit every source of `spec` (default: `DEFAULT_SOURCES`) on the data up to `through`
    (from a previous fit where `warm` gives one).

    Without a `fusion`, one is trained first: the sources are fitted with each user's last
    `holdout` items hidden, and the fusion learns to find the first hidden item. Warm, that
    held-out fit starts from `warm`, and the stack's own fit from the held-out fit's sources
    (`NEXT_SHARE`). Cold, the stack's own fit starts as `full_fit` says. Returns the stack
    and the item embeddings (reuse them: they depend on item text only). `steps`: records
    each step's seconds (also saved with the stack).
    """
    steps = steps if steps is not None else FitSteps()
    with step(steps, "interactions"):
        data = FitData.from_dataset(ds, through)
    if embeddings is None:
        with step(steps, "item text embeddings"):
            encoder = encoder or text_encoder(spec)
            embeddings = encoder.encode(data.item_text).astype(np.float32)
    if fusion is None:
        fusion, held = holdout_fit(data, holdout, embeddings, progress, spec, warm, steps)
        if warm is not None:
            warm = WarmStart(held, np.arange(data.n_items), NEXT_SHARE)
        else:
            warm = warm_from_holdout(held, data, full_fit)
    stack = stack_from_data(
        data, fusion, embeddings, through.label, progress, spec, warm, steps=steps
    )
    stack.fit_seconds = dict(steps.seconds)
    return stack, embeddings


def stack_from_data(
    data: FitData,
    fusion: LearnedFusion | None,
    embeddings: np.ndarray,
    through: str,
    progress: bool = True,
    spec: StackSpec | None = None,
    warm: WarmStart | None = None,
    steps: FitSteps | None = None,
    sources: dict[str, Retriever] | None = None,
) -> RetrievalStack:
    """The stack of `spec` on `data`: its sources fitted here (from `warm` where given), or
    `sources` fitted on this very data already (a held-out fit's, reused)."""
    covisits = covisit_params(spec)
    if sources is None:
        sources = _fit_sources(data, embeddings, progress, spec, warm, steps)
    with step(steps, "popularity, segments, co-visits"):
        popularity = MostPopular().fit(data)
        segment = SegmentPopular(**segment_params(spec)).fit(data) if data.user_segments else None
        pairs = None if covisits is None else PrivateCoVisits(**covisits).fit(data)
    return RetrievalStack(
        sources=sources,
        popularity=popularity,
        segment=segment,
        fusion=fusion,
        dataset_version=data.dataset_version,
        through=through,
        covisits=pairs,
    )


def holdout_fusion(
    data: FitData,
    holdout: int,
    embeddings: np.ndarray,
    progress: bool = True,
    spec: StackSpec | None = None,
) -> LearnedFusion:
    """A fusion trained on each user's first hidden item with the last `holdout` hidden."""
    return holdout_fit(data, holdout, embeddings, progress, spec)[0]


def holdout_fit(
    data: FitData,
    holdout: int,
    embeddings: np.ndarray,
    progress: bool = True,
    spec: StackSpec | None = None,
    warm: WarmStart | None = None,
    steps: FitSteps | None = None,
) -> tuple[LearnedFusion, dict[str, Retriever]]:
    """`holdout_fusion`, with the sources it fitted (a warm start for the next fit of the
    same items) and, with `warm`, sources started from a previous fit."""
    with step(steps, "held-out interactions"):
        inner, hidden = data.holdout_last(holdout)
        users = np.flatnonzero([len(h) > 0 for h in hidden])
        targets = np.array([hidden[u][0] for u in users], dtype=np.int64)
    sources = _fit_sources(inner, embeddings, progress, spec, warm, steps, prefix="held-out ")
    with step(steps, "fusion"):
        fusion = fit_fusion(sources, inner, targets, users)
    return fusion, sources
