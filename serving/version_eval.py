"""Two model versions measured the way serving answers, on the same held-out interactions.

A retrain's gate needs the live version and the candidate compared on equal terms, although
their datasets, user rows and item rows differ. Each case is one user's latest interaction
(the candidate dataset's test split) with the history before it; both versions answer
through `RetrievalService.retrieve_for`, as a request would, with the user's collaborative
vectors folded in from that history (so neither uses the held-out item as a user signal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from pipelines.artifact import Dataset
from pipelines.schema import Split
from serving.config import LiveSettings
from serving.events import EventStore
from serving.recommender import RetrievalService, UserState
from training.publish import ModelVersion

TOP = 10


@dataclass(frozen=True)
class HeldOut:
    user: str  # as the dataset holds it (a pseudonym when it is pseudonymised)
    history: list[str]  # item ids before the held-out one, oldest first
    target: str


def held_out(ds: Dataset, max_users: int | None = None, seed: int = 0) -> list[HeldOut]:
    """Each user's test interaction with their history (a seeded sample of `max_users`)."""
    seq = ds.sequences
    users = [str(u) for u in ds.users["user_id"].to_pylist()]
    items = [str(i) for i in ds.items["item_id"].to_pylist()]
    cases = []
    for u in range(len(users)):
        lo, hi = seq.indptr[u], seq.indptr[u + 1]
        test = np.flatnonzero(seq.splits[lo:hi] == Split.TEST)
        if len(test) == 0:
            continue
        t = lo + int(test[0])
        history = [items[i] for i in seq.items[lo:t]]
        cases.append(HeldOut(users[u], history, items[int(seq.items[t])]))
    if max_users is not None and len(cases) > max_users:
        keep = np.random.default_rng(seed).choice(len(cases), max_users, replace=False)
        cases = [cases[i] for i in sorted(keep)]
    return cases


def seen_pairs(ds: Dataset, store: EventStore) -> set[tuple[str, str]]:
    """(user pseudonym, item id) of every interaction in `ds`: what a version fitted on it
    has seen. Its users are hashed with the store's key unless they are pseudonyms already."""
    users = [str(u) for u in ds.users["user_id"].to_pylist()]
    if ds.manifest.identity is None:
        users = [store.pseudonym(u) for u in users]
    items = [str(i) for i in ds.items["item_id"].to_pylist()]
    inter = ds.interactions
    return {
        (users[u], items[i])
        for u, i in zip(inter["user_idx"].to_numpy(), inter["item_idx"].to_numpy(), strict=True)
    }


def ndcg_per_case(
    mv: ModelVersion,
    store: EventStore,
    cases: list[HeldOut],
    settings: LiveSettings | None = None,
    progress: bool = True,
) -> np.ndarray:
    """NDCG@10 of `mv`'s retrieval order for each case (0 when the target is missed)."""
    service = RetrievalService(mv, store, settings or LiveSettings())
    catalog = service.catalog
    rows = catalog.rows_by_pseudonym(store)
    out = np.zeros(len(cases))
    for n, case in enumerate(tqdm(cases, desc=f"held-out {mv.version}", disable=not progress)):
        history = [catalog.item_index[i] for i in case.history if i in catalog.item_index]
        state = UserState(
            case.user,
            rows.get(case.user),
            np.asarray(history, dtype=np.int64),
            np.zeros(0, dtype=np.int64),
            version=1,  # refold the user's vectors from this history
            unknown_items=0,
        )
        ranked = service.retrieve_for(state).item_ids[:TOP]
        if case.target in ranked:
            out[n] = 1.0 / np.log2(ranked.index(case.target) + 2)
    return out
