"""Retrieval + re-rank rows on the leave-one-out protocol (test split).

The stack is refitted on train + validation; each user's top-K fused candidates are
re-ranked; a target outside the candidates is a miss (it ranks below every candidate), so
the numbers are comparable with the full-ranking rows of `llmrec eval`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pipelines.artifact import Dataset
from pipelines.schema import Split
from training.evaluation.bootstrap import confidence_interval, paired_bootstrap
from training.evaluation.harness import Phase
from training.evaluation.metrics import metrics_from_ranks
from training.reranker.examples import Row, ranking_row
from training.reranker.model import load_reranker, load_tokenizer, make_renderer, read_meta
from training.reranker.scoring import RowScorer, label_ranks
from training.retrieval import FitData
from training.stack import DEFAULT_SOURCES, StackSpec, fit_stack

CANDIDATES_NAME = "candidates (fused order)"
TRANSITIONS_NAME = "transitions (full ranking)"


def test_rows(
    ds: Dataset, k: int, history_items: int, progress: bool = True, spec: StackSpec | None = None
) -> list[Row]:
    stack, _ = fit_stack(ds, Split.VALIDATION, progress=progress, spec=spec)
    data = FitData.from_dataset(ds, Split.VALIDATION)
    gen = stack.generator()
    seq = ds.sequences
    targets = seq.items[seq.splits == Split.TEST]
    return [
        ranking_row(
            gen,
            u,
            data.history(u),
            k,
            history_items,
            stack.source_names,
            stack.log_popularity,
            target=int(targets[u]),
        )
        for u in range(ds.manifest.n_users)
    ]


def rerank_ranks(folder: str | Path, rows: list[Row], item_texts: list[str], miss: int):
    """(ranks per user, seconds per scored prompt) for one trained re-ranker."""
    model, meta, info = load_reranker(folder)
    k = len(rows[0].candidates)
    renderer, pad_id = None, 0
    if info is not None:
        tok = load_tokenizer(info)
        renderer = make_renderer(info, tok, model_template(meta), item_texts)
        pad_id = tok.pad_token_id
    scorer = RowScorer(model, renderer, pad_id, info is not None and info.kind == "causal", k)
    return _timed_ranks(rows, lambda present: scorer.scores(present, batch_size=1), miss)


def layer_ranks(layer, rows: list[Row], miss: int):
    """(ranks per row, seconds per row) of a hybrid's feature layer alone
    (`routing.FeatureLayer`)."""
    return _timed_ranks(rows, lambda present: [layer.score(r.features) for r in present], miss)


def fused_ranks(rows: list[Row], miss: int) -> np.ndarray:
    """Each row's target rank in retrieval's fused order; `miss` where it is absent."""
    return np.array([r.label + 1 if r.label >= 0 else miss for r in rows])


def _timed_ranks(rows: list[Row], score, miss: int):
    """Score the rows whose target is among the candidates (`score(rows)`: one array per
    row), rank the target in each, `miss` for the others; and the seconds per scored row."""
    present = [r for r in rows if r.label >= 0]
    start = time.perf_counter()
    scores = score(present)
    per = (time.perf_counter() - start) / max(len(present), 1)
    ranks = np.full(len(rows), miss, dtype=np.int64)
    ranks[[i for i, r in enumerate(rows) if r.label >= 0]] = label_ranks(present, scores, miss)
    return ranks, per


def measure_routing(
    folder: str | Path,
    rows: list[Row],
    lengths: list[int],
    item_texts: list[str],
    miss: int,
    resamples: int = 2000,
):
    """The routing table (`training.reranker.routing`) of the trained hybrid in `folder`:
    each row ranked three ways (fused order, the feature layer alone, the full model), NDCG@10
    by history-length slice. Rows whose target retrieval missed count 0 in every order."""
    from training.reranker.routing import SPARSE_LENGTHS, FeatureLayer, routing_table

    full, lm_s = rerank_ranks(folder, rows, item_texts, miss)
    alone, layer_s = layer_ranks(FeatureLayer.load(folder), rows, miss)
    orders = {"fused": fused_ranks(rows, miss), "features": alone, "lm": full}
    ndcg = {o: metrics_from_ranks(x)["NDCG@10"] for o, x in orders.items()}
    users = len({r.user for r in rows if r.user is not None})
    table = routing_table(
        np.asarray(lengths),
        ndcg,
        f"{users} validation users kept out of early stopping, each with their whole "
        f"history and replayed as a new user with each of {', '.join(map(str, SPARSE_LENGTHS))}"
        " of their latest items",
        resamples=resamples,
    )
    import torch

    table.ms_per_request = {
        "lm": round(1000 * lm_s, 2),
        "features": round(1000 * layer_s, 4),
        "torch_threads": torch.get_num_threads(),
    }
    return table


def _has_lm(meta: dict[str, Any]) -> bool:
    return meta["config"].get("mode") != "features"


def routed_ranks(
    folder: str | Path,
    rows: list[Row],
    lengths: np.ndarray,
    full: np.ndarray,
    fused: np.ndarray,
    miss: int,
) -> tuple[np.ndarray, float] | None:
    """The ranks serving gives when it follows the re-ranker's routing table (each row by its
    history length: the full model's rank, the feature layer's, or the fused one), and the
    share of rows that went through the LM; None without a table."""
    from training.reranker.routing import FeatureLayer, RoutingTable

    table = RoutingTable.load(folder)
    if table is None:
        return None
    alone, _ = layer_ranks(FeatureLayer.load(folder), rows, miss)
    route = np.array([table.route(int(n)) for n in lengths])
    out = np.where(route == "lm", full, np.where(route == "features", alone, fused))
    return out, float(np.mean(route == "lm"))


def model_template(meta: dict[str, Any]):
    from training.reranker.model import RerankerConfig

    return RerankerConfig.model_validate(meta["config"]).template


def evaluate_rerankers(
    ds: Dataset,
    rerankers: dict[str, str | Path],
    resamples: int = 1000,
    progress: bool = True,
    spec: StackSpec | None = None,
) -> dict[str, Any]:
    """Each re-ranker on the test users' top-K of the stack of `spec` (default:
    `DEFAULT_SOURCES`), against the fused order and transitions alone."""
    metas = {name: read_meta(f) for name, f in rerankers.items()}
    templates = {model_template(m).candidates for m in metas.values()}
    hist = max(model_template(m).history_items for m in metas.values())
    if len(templates) != 1:
        raise ValueError("re-rankers compared in one table must use the same K")
    k = templates.pop()
    rows = test_rows(ds, k, hist, progress, spec)
    miss = ds.manifest.n_items + 1
    ranks: dict[str, np.ndarray] = {CANDIDATES_NAME: fused_ranks(rows, miss)}
    test = Phase.build(ds, Split.TEST)
    klass, params = (spec or DEFAULT_SOURCES)["transitions"]
    trans = klass(**params).fit(test.fit)
    ranks[TRANSITIONS_NAME] = test.ranks(test.score_matrix(trans))
    data = FitData.from_dataset(ds, Split.VALIDATION)
    item_texts = data.item_text
    lengths = np.array([len(data.history(u)) for u in range(len(rows))])
    seconds, lm_share = {}, {}
    for name, folder in tqdm(rerankers.items(), desc="re-rankers", disable=not progress):
        # One thread: the serving configuration (a replica per core).
        import torch

        torch.set_num_threads(1)
        ranks[name], seconds[name] = rerank_ranks(folder, rows, item_texts, miss)
        routed = routed_ranks(folder, rows, lengths, ranks[name], ranks[CANDIDATES_NAME], miss)
        if routed is not None:
            ranks[f"{name} (routed)"], lm_share[f"{name} (routed)"] = routed
            seconds[f"{name} (routed)"] = seconds[name] * lm_share[f"{name} (routed)"]
    per_user = {n: metrics_from_ranks(r) for n, r in ranks.items()}
    models = {
        n: {
            "test": {m: vars(confidence_interval(v, resamples)) for m, v in pu.items()},
            "ms_per_prompt": round(1000 * seconds[n], 1) if n in seconds else None,
            "lm_share": lm_share.get(n, 1.0 if n in metas and _has_lm(metas[n]) else 0.0),
            "trained": metas[n].get("metrics") if n in metas else None,
        }
        for n, pu in per_user.items()
    }
    names = [n for n in per_user if n not in (CANDIDATES_NAME, TRANSITIONS_NAME)]
    pairs = [(n, b) for n in names for b in (TRANSITIONS_NAME, CANDIDATES_NAME)]
    pairs += [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    paired = [
        {
            "a": a,
            "b": b,
            "metric": "NDCG@10",
            **vars(paired_bootstrap(per_user[a]["NDCG@10"], per_user[b]["NDCG@10"])),
        }
        for a, b in pairs
    ]
    return {
        "dataset": ds.manifest.name,
        "protocol": f"leave-one-out test; stack refit on train+validation; top-{k} fused "
        "candidates re-ranked; targets outside the candidates are misses",
        "users": len(rows),
        "candidates": k,
        "candidate_recall": float(np.mean([r.label >= 0 for r in rows])),
        "models": models,
        "paired_bootstrap": paired,
    }


def history_slices(
    ds: Dataset,
    reranker: str | Path,
    lengths: tuple[int, ...] = (1, 2, 3, 5, 10),
    users: int | None = None,
    resamples: int = 1000,
    progress: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Does the re-ranker help users with little history? Each test user is replayed as a
    *new* user who has only their last L items (no CF vector: the serving path of a user the
    models never saw), and NDCG@10 of the fused order is compared with the re-ranked order
    on the same candidates (paired bootstrap). The routing threshold
    (`rerank_min_history`) is the shortest L from which the re-ranker does not lose."""
    meta = read_meta(reranker)
    template = model_template(meta)
    stack, _ = fit_stack(ds, Split.VALIDATION, progress=progress)
    data = FitData.from_dataset(ds, Split.VALIDATION)
    gen = stack.generator()
    seq = ds.sequences
    targets = seq.items[seq.splits == Split.TEST]
    chosen = np.arange(ds.manifest.n_users)
    if users is not None and users < len(chosen):
        chosen = np.sort(np.random.default_rng(seed).choice(chosen, users, replace=False))
    miss = ds.manifest.n_items + 1
    import torch

    torch.set_num_threads(1)
    out = []
    for length in tqdm(lengths, desc="history lengths", disable=not progress):
        rows = [
            ranking_row(
                gen,
                None,
                data.history(int(u))[-length:],
                template.candidates,
                template.history_items,
                stack.source_names,
                stack.log_popularity,
                target=int(targets[u]),
            )
            for u in chosen
        ]
        fused = fused_ranks(rows, miss)
        reranked, _ = rerank_ranks(reranker, rows, data.item_text, miss)
        a = metrics_from_ranks(reranked)["NDCG@10"]
        b = metrics_from_ranks(fused)["NDCG@10"]
        test = paired_bootstrap(a, b, resamples)
        out.append(
            {
                "history": length,
                "users": len(rows),
                "candidate_recall": float(np.mean([r.label >= 0 for r in rows])),
                "fused NDCG@10": float(b.mean()),
                "re-ranked NDCG@10": float(a.mean()),
                "difference": test.mean_difference,
                "low": test.low,
                "high": test.high,
                "p (re-ranker not better)": test.p_value,
            }
        )
    return {
        "dataset": ds.manifest.name,
        "reranker": str(reranker),
        "protocol": "test targets; each user replayed as a new user with only the last L "
        "items of their train+validation history; top-K fused candidates re-ranked",
        "slices": out,
        "rerank_min_history": recommend_threshold(out),
    }


def recommend_threshold(slices: list[dict[str, Any]]) -> int:
    """The shortest history from which the re-ranker is never significantly worse than the
    fused order (95% interval of the difference below zero) at that length or longer."""
    worse = [s["history"] for s in slices if s["high"] < 0]
    return max(worse) + 1 if worse else 0
