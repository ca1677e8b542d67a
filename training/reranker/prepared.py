"""What the re-ranker trains and is validated on, built on the driver (pure numpy, from the
dataset artifact and the retrieval stack): training lists from a held-out stack, validation
lists from the train-fitted stack, and the rows of the users kept back to measure the
routing table. `training.reranker.train` hands them to Ray Train."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from pipelines.artifact import Dataset
from pipelines.schema import Split
from training.reranker.examples import Row, ranking_row, training_rows
from training.reranker.model import RerankerConfig
from training.reranker.routing import SPARSE_LENGTHS
from training.reranker.settings import TrainSettings
from training.retrieval import FitData
from training.stack import (
    FullFit,
    StackSpec,
    holdout_fit,
    stack_from_data,
    text_encoder,
    warm_from_holdout,
)


@dataclass
class PreparedData:
    train: list[Row]
    val: list[Row]  # only rows whose target is among the candidates
    val_total: int  # all validation users evaluated (misses count as 0)
    skipped: int
    item_texts: list[str]
    sources: list[str]
    dataset_version: str
    #: the fusion the rows were ranked with (`LearnedFusion.to_json`), recorded in the
    #: re-ranker so that a model version can serve it with the same fusion
    fusion: dict | None = None
    #: validation rows of users kept out of early stopping, measured after training for
    #: the routing table (`training.reranker.routing`), and each row's history length
    routing: list[Row] = field(default_factory=list)
    routing_lengths: list[int] = field(default_factory=list)
    #: every validation user (those whose target retrieval missed too)
    val_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def capped(self, settings: TrainSettings) -> PreparedData:
        """A seeded sample of at most `max_examples` training rows and `val_users`
        validation users: what bounds an LM's CPU time. The feature layer alone trains on
        everything in seconds, and its validation NDCG is steadier over every user."""
        rng = np.random.default_rng(settings.seed)
        train, val, total = self.train, self.val, self.val_total
        if settings.max_examples is not None and len(train) > settings.max_examples:
            train = [train[i] for i in sorted(rng.choice(len(train), settings.max_examples, False))]
        if settings.val_users is not None and settings.val_users < total:
            ids = self.val_ids if len(self.val_ids) else np.arange(total)
            users = set(rng.choice(ids, settings.val_users, replace=False).tolist())
            val, total = [r for r in val if r.user in users], settings.val_users
        return replace(self, train=train, val=val, val_total=total)


def routing_users(users: np.ndarray, cfg: RerankerConfig, settings: TrainSettings) -> set[int]:
    """The validation users kept back for the routing measurement: a seeded sample of at
    most `routing_users`, and never more than half, so early stopping keeps the rest. Only
    for a hybrid: the choice it measures is between its LM and its feature layer alone."""
    n = min(settings.routing_users, len(users) // 2)
    if cfg.mode != "hybrid" or n <= 0:
        return set()
    rng = np.random.default_rng(settings.seed + 1)
    return {int(u) for u in rng.choice(users, n, replace=False)}


def prepare_examples(
    ds: Dataset,
    cfg: RerankerConfig,
    settings: TrainSettings,
    embeddings: np.ndarray | None = None,
    progress: bool = True,
    spec: StackSpec | None = None,
) -> PreparedData:
    """Training rows from a held-out stack, validation rows (every user) from the
    train-fitted stack, both of `spec` (default: `DEFAULT_SOURCES`). `PreparedData.capped`
    samples what an LM trains on."""
    seq = ds.sequences
    targets = seq.items[seq.splits == Split.VALIDATION]
    data = FitData.from_dataset(ds, Split.TRAIN)
    return prepare_from(
        data, targets, cfg, settings, embeddings, progress, spec, ds.manifest.version
    )


def prepare_from(
    data: FitData,
    targets: np.ndarray,
    cfg: RerankerConfig,
    settings: TrainSettings,
    embeddings: np.ndarray | None = None,
    progress: bool = True,
    spec: StackSpec | None = None,
    version: str = "",
) -> PreparedData:
    """`prepare_examples` on any training view: `data` the interactions examples are built
    from, `targets` each user's validation item (-1: none, the user is not validated);
    `version` names the data the re-ranker records (what `publish` checks)."""
    if embeddings is None:
        embeddings = text_encoder(spec).encode(data.item_text).astype(np.float32)
    fusion, held = holdout_fit(data, 1, embeddings, progress, spec)
    inner, hidden = data.holdout_last(settings.holdout)
    users = np.flatnonzero(np.asarray(targets) >= 0)
    if settings.example_users is not None and len(users) > settings.example_users:
        rng = np.random.default_rng(settings.seed)
        users = np.sort(rng.choice(users, settings.example_users, replace=False))
        chosen = np.zeros(len(hidden), dtype=bool)
        chosen[users] = True
        hidden = [h if chosen[u] else h[:0] for u, h in enumerate(hidden)]
    # With one item held out, the examples' stack is the fusion's held-out fit itself.
    reuse = held if settings.holdout == 1 else None
    ex_stack = stack_from_data(
        inner, fusion, embeddings, "train-holdout", progress, spec, sources=reuse
    )
    k, hist = cfg.template.candidates, cfg.template.history_items
    sources = ex_stack.source_names
    visible = [inner.history(u) for u in range(inner.n_users)]
    rows, skipped = training_rows(
        ex_stack.generator(),
        visible,
        hidden,
        k,
        hist,
        sources,
        ex_stack.log_popularity,
        seed=settings.seed,
        progress=progress,
        insert=settings.insert_target,
    )

    warm = warm_from_holdout(held, data, FullFit.auto)
    val_stack = stack_from_data(data, fusion, embeddings, "train", progress, spec, warm)
    gen = val_stack.generator()

    def row(u: int, history: np.ndarray, user: int | None) -> Row:
        return ranking_row(
            gen, user, history, k, hist, sources, val_stack.log_popularity, int(targets[u])
        )

    routed = routing_users(users, cfg, settings)
    val = [row(int(u), data.history(int(u)), int(u)) for u in users if int(u) not in routed]
    routing, lengths = [], []
    for u in sorted(routed):
        full = data.history(u)
        # Each user with their whole history (the warm path), and replayed as a new user
        # with each sparse length of their latest items (no user vector), so every slice of
        # the sparse path is measured on the same users; a length past the history would
        # only repeat its last replay.
        routing.append(row(u, full, u))
        lengths.append(len(full))
        for n in (n for n in SPARSE_LENGTHS if n <= len(full)):
            short = full[-n:]
            routing.append(row(u, short, None))
            lengths.append(len(short))
    return PreparedData(
        rows,
        [r for r in val if r.label >= 0],
        len(val),
        skipped,
        data.item_text,
        sources,
        version,
        fusion.to_json(),
        routing,
        lengths,
        np.array([r.user for r in val], dtype=np.int64),
    )
