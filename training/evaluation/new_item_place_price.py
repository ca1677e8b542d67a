"""What the shown list's new-item place costs and buys, on every interaction after the cutoff.

The new-item protocol's cases are all new-item interactions, so it can show what a place for
a new item in the top 10 buys but not what it costs: the item it displaces is the answer for
some users. Here a case is any interaction after the new-item protocol's cutoff (old items
and new, in the proportion users chose them), a seeded few per user, each with everything
the user did before it as the history and the new items' live counts at that moment (as
`NewItemCases.live_new_counts`). The models are the ones fitted on the interactions up to
the cutoff. For each place (0: none) the system's shown list is its candidates in fused
order with the place (`shown_items`); NDCG@10 and Recall@10 are averaged per user, then
bootstrapped over users, each place paired against none. Pure numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from training.candidates import CandidateGenerator
from training.evaluation.bootstrap import confidence_interval, paired_bootstrap
from training.evaluation.new_items import NewItemCases
from training.new_item_place import shown_items

#: places measured: none, the list's last of 10, its middle, its top three
PLACES = (0, 10, 5, 3)
PER_USER = 5
SHOWN = 10


def after_cutoff_cases(
    cases: NewItemCases, per_user: int = PER_USER, seed: int = 0
) -> list[tuple[int, int, float]]:
    """(user, position in the user's sequence, time) of up to `per_user` seeded interactions
    per user after the cutoff, each with at least one interaction before it."""
    d, rng, out = cases.full, np.random.default_rng(seed), []
    for u in range(d.n_users):
        lo, hi = d.seq_indptr[u], d.seq_indptr[u + 1]
        after = np.flatnonzero(d.seq_times[lo:hi] > cases.cutoff)
        after = after[after >= 1]
        for p in np.sort(rng.permutation(after)[:per_user]):
            out.append((u, int(p), float(d.seq_times[lo + p])))
    return out


def evaluate_place(
    cases: NewItemCases,
    gen: CandidateGenerator,
    places: tuple[int, ...] = PLACES,
    per_user: int = PER_USER,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """NDCG@10 and Recall@10 of the shown 10 for each new-item place, on every interaction
    after the cutoff, with the share of cases whose answer was a new item and each place's
    results on those cases and on the rest."""
    d = cases.full
    sampled = after_cutoff_cases(cases, per_user, seed)
    users, is_new = np.zeros(len(sampled), np.int64), np.zeros(len(sampled), bool)
    ndcg = {p: np.zeros(len(sampled)) for p in places}
    recall = {p: np.zeros(len(sampled)) for p in places}
    exposure = {p: np.zeros(len(sampled)) for p in places}
    saved = gen.live_counts
    try:
        for c, (u, pos, t) in enumerate(sampled):
            lo = d.seq_indptr[u]
            history, target = d.seq_items[lo : lo + pos], int(d.seq_items[lo + pos])
            gen.live_counts = cases.live_new_counts_at(t)
            cand = gen.generate(u, history, n=gen.config.n)
            users[c], is_new[c] = u, cases.new[target]
            for p in places:
                shown = shown_items(cand.items, cand.new_events, SHOWN, p)[:SHOWN]
                hit = np.flatnonzero(shown == target)
                ndcg[p][c] = 1 / np.log2(hit[0] + 2) if len(hit) else 0.0
                recall[p][c] = float(len(hit) > 0)
                exposure[p][c] = cases.new[shown].mean() if len(shown) else 0.0
    finally:
        gen.live_counts = saved

    # Each user's mean over their cases: users count once, however many cases they have.
    _, of_user = np.unique(users, return_inverse=True)
    per_case = np.bincount(of_user)
    by_user = {
        name: {p: np.bincount(of_user, weights=v[p]) / per_case for p in places}
        for name, v in (("NDCG@10", ndcg), ("Recall@10", recall))
    }

    def ci(v: np.ndarray) -> dict[str, float]:
        return vars(confidence_interval(v, resamples))

    rows = {}
    for p in places:
        row: dict[str, Any] = {name: ci(means[p]) for name, means in by_user.items()}
        row["new_share@10"] = float(exposure[p].mean())
        row["new-item cases Recall@10"] = ci(recall[p][is_new])
        row["other cases Recall@10"] = ci(recall[p][~is_new])
        if p != places[0]:
            for name, means in by_user.items():
                test = paired_bootstrap(means[p], means[places[0]], resamples)
                row[f"{name} vs none"] = vars(test)
        rows[str(p)] = row
    return {
        "cases": len(sampled),
        "users": len(np.unique(users)),
        "new_item_cases": int(is_new.sum()),
        "per_user": per_user,
        "places": rows,
    }


def print_place_report(report: dict[str, Any], console) -> None:
    from rich.table import Table

    t = Table(
        title=f"the shown list's new-item place, on every interaction after the cutoff: "
        f"{report['cases']} cases of {report['users']} users, {report['new_item_cases']} of "
        f"them a new item (95% CIs over users; paired against no place)"
    )
    for col in (
        "place",
        "NDCG@10",
        "vs none",
        "Recall@10",
        "vs none",
        "Recall@10, new-item cases",
        "Recall@10, other cases",
        "new@10",
    ):
        t.add_column(col, justify="left" if col == "place" else "right")

    def cell(x: dict[str, float] | None) -> str:
        if x is None:
            return "—"
        mean = x.get("mean", x.get("mean_difference"))
        return f"{mean:+.4f} [{x['low']:+.4f}, {x['high']:+.4f}]"

    for p, row in report["places"].items():
        t.add_row(
            "none" if p == "0" else p,
            cell(row["NDCG@10"]),
            cell(row.get("NDCG@10 vs none")),
            cell(row["Recall@10"]),
            cell(row.get("Recall@10 vs none")),
            cell(row["new-item cases Recall@10"]),
            cell(row["other cases Recall@10"]),
            f"{row['new_share@10']:.1%}",
        )
    console.print(t)
