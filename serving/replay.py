"""Replay evaluation: score logged impressions offline with a candidate model before rollout.

For every logged impression followed by a click or purchase of a shown item (attributed by
its `request_id`), the candidate model ranks the same user as they were at that moment: the
dataset's history plus their stored events *before* the impression, nothing later. Two
questions, per impression, paired:
- Within the slate that was shown, would the candidate have put the clicked items higher?
  NDCG and reciprocal rank of the clicked items under the candidate's order against the
  order that was shown (a paired bootstrap over impressions).
- Does the candidate's own list reach them? Hit@k of the clicked items in its top k.

Clicks exist only for what the logging model showed, so the comparison is conditional on its
slates: it ranks candidate models against the logged one, it does not predict their CTR
(an A/B test does). Exclusions and category filters of the original request are not logged
and not replayed. The pure metrics here need no model; `replay_cases` drives the serving
classes in-process (no Ray)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.ab_report import CLICKS
from serving.events import Event, EventStore
from serving.experiments import Impression
from training.evaluation.bootstrap import confidence_interval, paired_bootstrap

NOTHING_TO_REPLAY = (
    "no logged impression has an attributed click or purchase: serve with log_impressions "
    "on and send events with the response's request_id"
)


@dataclass(frozen=True)
class ReplayCase:
    request_id: str
    variant: str | None
    shown: list[str]  # the logged list, in the order shown
    clicked: frozenset[str]  # shown items the user then clicked or bought
    order: list[str]  # the candidate model's ranking for the user at that moment


def positives(impressions: list[Impression], events: list[Event]) -> dict[str, frozenset[str]]:
    """Per request_id, the shown items its user then clicked or bought."""
    by_request = {i.request_id: i for i in impressions}
    out: dict[str, set[str]] = {}
    for e in events:
        imp = by_request.get(e.request_id)
        if imp and e.type in CLICKS and e.user_id == imp.user_id and e.item_id in imp.items:
            out.setdefault(e.request_id, set()).add(e.item_id)
    return {k: frozenset(v) for k, v in out.items()}


def slate_order(shown: list[str], order: list[str]) -> list[str]:
    """The shown items in the candidate's order; items it did not rank go last, in the
    order they were shown."""
    rank = {item: r for r, item in enumerate(order)}
    return sorted(shown, key=lambda x: (rank.get(x, len(order)), shown.index(x)))


def ndcg(ranked: list[str], relevant: Iterable[str], k: int | None = None) -> float:
    rel = set(relevant)
    top = ranked[:k] if k else ranked
    dcg = sum(1 / math.log2(r + 2) for r, x in enumerate(top) if x in rel)
    ideal = sum(1 / math.log2(r + 2) for r in range(min(len(rel), len(top))))
    return dcg / ideal if ideal else 0.0


def reciprocal_rank(ranked: list[str], relevant: Iterable[str]) -> float:
    rel = set(relevant)
    return next((1 / (r + 1) for r, x in enumerate(ranked) if x in rel), 0.0)


def replay_report(
    cases: list[ReplayCase], k: int = 10, resamples: int = 2000, skipped: dict | None = None
) -> dict[str, Any]:
    """The candidate against the logged order, paired by impression."""
    if not cases:
        raise ValueError(NOTHING_TO_REPLAY)
    logged = {
        "ndcg": np.array([ndcg(c.shown, c.clicked) for c in cases]),
        "mrr": np.array([reciprocal_rank(c.shown, c.clicked) for c in cases]),
    }
    ranked = [slate_order(c.shown, c.order) for c in cases]
    cand = {
        "ndcg": np.array([ndcg(r, c.clicked) for r, c in zip(ranked, cases, strict=True)]),
        "mrr": np.array(
            [reciprocal_rank(r, c.clicked) for r, c in zip(ranked, cases, strict=True)]
        ),
    }
    rows = {}
    for m in ("ndcg", "mrr"):
        test = paired_bootstrap(cand[m], logged[m], resamples)
        rows[m] = {
            "logged": vars(confidence_interval(logged[m], resamples)),
            "candidate": vars(confidence_interval(cand[m], resamples)),
            "difference": {
                "mean": test.mean_difference,
                "low": test.low,
                "high": test.high,
                "p_candidate_not_better": test.p_value,
            },
        }
    hits = np.array([bool(c.clicked & set(c.order[:k])) for c in cases], dtype=float)
    overlap = np.array(
        [len(set(c.order[: len(c.shown)]) & set(c.shown)) / len(c.shown) for c in cases]
    )
    d = rows["ndcg"]["difference"]
    if d["low"] > 0:
        verdict = "the candidate ranks the clicked items higher than the logged order"
    elif d["high"] < 0:
        verdict = "the candidate ranks the clicked items lower than the logged order"
    else:
        verdict = "no significant difference from the logged order"
    return {
        "impressions": len(cases),
        "skipped": skipped or {},
        "slate": rows,
        f"hit@{k}": vars(confidence_interval(hits, resamples)),
        "overlap_with_logged": vars(confidence_interval(overlap, resamples)),
        "k": k,
        "verdict": f"{verdict} (NDCG within the slate {d['mean']:+.4f} "
        f"[{d['low']:+.4f}, {d['high']:+.4f}])",
    }


def replay_cases(
    store: EventStore,
    retrieval,
    reranker,
    impressions: list[Impression],
    events: list[Event],
    n: int | None = None,
    progress: bool = True,
) -> tuple[list[ReplayCase], dict[str, int]]:
    """The candidate's ranking for each clicked impression's user as of that impression.
    `retrieval` is a `RetrievalService`, `reranker` a `RerankService` or None (the
    candidate model version); `store` is the log's store (events looked up by pseudonym)."""
    from tqdm import tqdm

    from serving.responses import respond

    clicked = positives(impressions, events)
    # Logs hold pseudonyms: the dataset's users are found under the same ones.
    users = retrieval.catalog.rows_by_pseudonym(store)
    retrieval.sync_items()
    history: dict[str, list[Event]] = {}
    cases: list[ReplayCase] = []
    todo = [i for i in impressions if i.request_id in clicked]
    skipped = {"no_click": len(impressions) - len(todo)}
    for imp in tqdm(todo, desc="replay", unit="impression", disable=not progress):
        who = imp.user_id
        if who not in history:
            history[who] = store.events_by_pseudonym(who)
        before = [e for e in history[who] if e.timestamp < imp.timestamp]
        state = retrieval.state_of(who, users.get(who), before, len(before), imp.timestamp)
        r = retrieval.retrieve_for(state, n=n)
        scores, by = None, "rerank"
        if retrieval.settings.routing and r.route != "lm":  # as serving routes it
            scores, by = r.route_scores, "features"
        elif reranker is not None and r.path != "cold_start" and len(r.items) > 1:
            scores = reranker.score([(r.prompt_history, r.items, r.features)])[0]
        out = respond(r, len(r.items), scores, "replay", None, {}, None, ranked_by=by)
        order = [x["item_id"] for x in out["items"]]
        cases.append(
            ReplayCase(imp.request_id, imp.variant, imp.items, clicked[imp.request_id], order)
        )
    return cases, skipped


def print_replay(report: dict[str, Any], console) -> None:
    from rich.table import Table

    t = Table(title=f"Replay of {report['impressions']} clicked impressions (95% CI)")
    for col in ("metric", "logged order", "candidate", "candidate − logged", "p (not better)"):
        t.add_column(col)

    def ci(x: dict) -> str:
        return f"{x['mean']:.4f} [{x['low']:.4f}, {x['high']:.4f}]"

    for m, name in (("ndcg", "NDCG in the slate"), ("mrr", "MRR in the slate")):
        row = report["slate"][m]
        d = row["difference"]
        t.add_row(
            name,
            ci(row["logged"]),
            ci(row["candidate"]),
            f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]",
            f"{d['p_candidate_not_better']:.3g}",
        )
    k = report["k"]
    t.add_row(f"hit@{k} in its own list", "", ci(report[f"hit@{k}"]), "", "")
    t.add_row("overlap with the logged list", "", ci(report["overlap_with_logged"]), "", "")
    console.print(t)
    console.print(report["verdict"])
