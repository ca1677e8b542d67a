"""The re-ranker on the cold protocols (`training.evaluation.new_items`, `new_users`).

A re-ranker trained on every interaction has seen what these protocols hold out: the new
items' answers, the new users' whole histories. It is therefore trained for a protocol on
that protocol's training view only, each user's last item of the view validating:

- new items: the interactions up to the cutoff (`prepare_before_cutoff`, what
  `llmrec train --new-items-cutoff` builds); no example names a new item as the answer;
- new users: every interaction of the users that are not held out
  (`prepare_without_new_users`, `llmrec train --without-new-users`).

It records the view it was trained on (`cutoff_version`, `without_users_version`), which
`llmrec eval --protocol ...` checks and `publish` refuses (it is not the dataset's version).

At evaluation it reorders the head of the system's candidates for each case as serving
does: the first K of the 50, which end with new-item slots of their own
(`CandidateGenerator.generate`'s `head`), the rest following unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipelines.artifact import Dataset
from training.candidates import Candidates
from training.evaluation.new_items import CUTOFF_QUANTILE, new_item_cases
from training.evaluation.new_users import HOLDOUT_SHARE, new_user_cases
from training.reranker.examples import Row, subset
from training.reranker.features import candidate_features
from training.reranker.model import RerankerConfig
from training.reranker.prepared import PreparedData, prepare_from
from training.reranker.settings import TrainSettings
from training.retrieval import FitData

#: the system's candidate count, as `llmrec eval --protocol new-items | new-users` reports it
CANDIDATES = 50


def cutoff_version(ds: Dataset, quantile: float = CUTOFF_QUANTILE) -> str:
    """The name of the data a re-ranker trained before the new-item cutoff records."""
    return f"{ds.manifest.version}+before-q{quantile:g}"


def without_users_version(ds: Dataset, share: float = HOLDOUT_SHARE) -> str:
    """The name of the data a re-ranker trained without the new-user protocol's held-out
    users records."""
    return f"{ds.manifest.version}+without-users-s{share:g}"


def prepare_before_cutoff(
    ds: Dataset,
    cfg: RerankerConfig,
    settings: TrainSettings,
    quantile: float = CUTOFF_QUANTILE,
    progress: bool = True,
    spec=None,
) -> PreparedData:
    """The re-ranker's examples from the interactions at or before the new-item cutoff:
    training rows from the earlier ones, each user's last one before the cutoff validates
    (users with two or fewer are not validated)."""
    view = cutoff_version(ds, quantile)
    return _prepare_view(new_item_cases(ds, quantile).train, cfg, settings, progress, spec, view)


def prepare_without_new_users(
    ds: Dataset,
    cfg: RerankerConfig,
    settings: TrainSettings,
    share: float = HOLDOUT_SHARE,
    progress: bool = True,
    spec=None,
) -> PreparedData:
    """The re-ranker's examples from the users the new-user protocol trains on; none of the
    held-out users' interactions reaches an example, a validation row or the stacks that
    build them."""
    view = without_users_version(ds, share)
    return _prepare_view(new_user_cases(ds, share).train, cfg, settings, progress, spec, view)


def _prepare_view(
    view: FitData, cfg: RerankerConfig, settings: TrainSettings, progress: bool, spec, name: str
) -> PreparedData:
    data, hidden = view.holdout_last(1)
    targets = np.array([int(h[-1]) if len(h) else -1 for h in hidden], dtype=np.int64)
    return prepare_from(data, targets, cfg, settings, None, progress, spec, name)


LAYER, ROUTED = " (feature layer alone)", " (as routed)"


def _scorers(folder: str | Path, item_texts: list[str]):
    """(template, {name suffix: score(row)}) of the re-ranker in `folder`: the full model,
    and a hybrid's feature layer alone."""
    from training.reranker.inference import Reranker
    from training.reranker.routing import FeatureLayer

    reranker = Reranker(folder, item_texts)
    out = {"": lambda row: reranker.score_rows([row])[0]}
    if reranker.meta["config"].get("mode") == "hybrid":
        layer = FeatureLayer.load(folder)
        out[LAYER] = lambda row: layer.score(row.features)
    return reranker.template, out


def _routes(folder: str | Path, scorers: dict[str, Callable]) -> Callable | None:
    """`pick(path, history length)`: the scorer serving uses for a request when it follows
    the hybrid's routing table (None: the candidates' order; a cold start is never
    re-ranked); None without a table."""
    from training.reranker.routing import RoutingTable, request_stage

    table = RoutingTable.load(folder)
    if table is None or LAYER not in scorers:
        return None
    by_route = {"lm": scorers[""], "features": scorers[LAYER]}  # retrieval, cold start: None
    return lambda path, n: by_route.get(request_stage(table, path, n))


def _reordered(c: Candidates, user, history, template, pick: Callable, stack) -> np.ndarray:
    """`c`'s items with the head reordered by the scorer `pick(path, history length)` names,
    as serving's re-rank stage does; no scorer keeps the candidates' order."""
    score = pick(c.path, len(history))
    if score is None:
        return c.items
    k = min(template.candidates, len(c.items))
    head = subset(c, np.arange(k))
    feats = candidate_features(head, stack.source_names, stack.log_popularity)
    row = Row(user, np.asarray(history)[-template.history_items :], c.items[:k], feats, -1)
    order = np.argsort(-np.asarray(score(row)), kind="stable")
    return np.concatenate([c.items[:k][order], c.items[k:]])


def reranked_lists(
    stack, folder: str | Path, item_texts: list[str]
) -> dict[str, Callable[[int, np.ndarray, np.ndarray], np.ndarray]]:
    """List makers of the new-item protocol (`new_items.evaluate`'s `top(user, history,
    live_counts)`) for the re-ranker in `folder` over `stack`'s candidates, with the routed
    list as in `reranked_user_lists`."""
    template, scorers = _scorers(folder, item_texts)
    gen = stack.generator()

    def maker(pick: Callable):
        def top(user: int, history: np.ndarray, counts: np.ndarray) -> np.ndarray:
            gen.live_counts = counts
            c = gen.generate(user, history, n=CANDIDATES, head=template.candidates)
            return _reordered(c, user, history, template, pick, stack)

        return top

    return _makers(folder, scorers, maker)


def reranked_user_lists(
    stack, folder: str | Path, item_texts: list[str]
) -> dict[str, Callable[[np.ndarray, dict[str, int] | None], np.ndarray]]:
    """List makers of the new-user protocol (`new_users.evaluate`'s `top(history, segment)`)
    for the re-ranker in `folder` over `stack`'s candidates. A sign-up has no user index
    (no CF vector), as in serving. A hybrid with a routing table adds the list serving gives
    when it follows the table (" (as routed)"): a cold start is not re-ranked, a sparse or
    warm request goes to the stage its history length's slice names."""
    template, scorers = _scorers(folder, item_texts)
    gen = stack.generator()

    def maker(pick: Callable):
        def top(history: np.ndarray, segment: dict[str, int] | None) -> np.ndarray:
            c = gen.generate(None, history, n=CANDIDATES, segment=segment, head=template.candidates)
            return _reordered(c, None, history, template, pick, stack)

        return top

    return _makers(folder, scorers, maker)


def _makers(folder: str | Path, scorers: dict[str, Callable], maker: Callable) -> dict:
    """{suffix: list maker}: one per scorer, each ranking every request (cold starts too,
    which serving does not re-rank: what the re-ranker would do there), and the routed one
    when the re-ranker has a routing table. `maker(pick)` builds a list maker from
    `pick(path, history length) -> scorer or None` (None: the candidates' own order)."""

    def always(score: Callable) -> Callable:
        return lambda path, n: score

    out = {suffix: maker(always(score)) for suffix, score in scorers.items()}
    routes = _routes(folder, scorers)
    if routes is not None:
        out[ROUTED] = maker(routes)
    return out
