"""What the model commands print about a trained re-ranker and a fitted stack: the
training history, the routing table, a fit's steps as they end, and what differential
privacy spent (`train`, `fit`, `publish`)."""

from __future__ import annotations

from pathlib import Path

from rich.status import Status
from rich.table import Table

from cluster.commands.common import console
from training.fit_steps import FitSteps


def fit_progress(status: Status) -> FitSteps:
    """A stack fit's steps shown as they run: the spinner names the step in progress, and
    each step prints its seconds as it ends (in a log file too, where no spinner shows)."""

    def started(label: str) -> None:
        status.update(f"fitting the retrieval stack: {label}")

    def ended(label: str, seconds: float) -> None:
        console.print(f"  {label}: {seconds:.1f} s")

    return FitSteps(on_start=started, on_end=ended)


def print_routing(folder: str | Path) -> None:
    """The routing table a hybrid was trained with (`train`, `publish`)."""
    from training.reranker.routing import RoutingTable, describe

    routing = RoutingTable.load(folder)
    if routing is None:
        return
    rows = describe(routing)
    table = Table(
        title="routing by history length: NDCG@10 of each order", caption=routing.measured_on
    )
    for c in rows[0]:
        table.add_column(c, justify="left" if c == "route" else "right")
    for r in rows:
        table.add_row(*(str(v) for v in r.values()))
    console.print(table)


def print_history(title: str, history: list[dict]) -> None:
    table = Table(title=f"re-ranker training ({title})")
    for c in ("epoch", "train loss", "val NDCG@10", "examples/s", "seconds"):
        table.add_column(c, justify="right")
    for h in history:
        table.add_row(
            str(h["epoch"]),
            f"{h['train_loss']:.4f}",
            f"{h['val_ndcg10']:.4f}",
            f"{h['examples_per_s']:.1f}",
            f"{h['train_seconds']:.0f}",
        )
    console.print(table)


def privacy_line(release: dict | None) -> str:
    """What the released segment counts spent (`fit`, `publish`)."""
    if not release:
        return "exact counts (no differential privacy)"
    p = release["privacy"]
    withheld = sum(len(v) for v in release["segments_withheld"].values())
    return (
        f"user-level differential privacy, epsilon {p['epsilon']:g}, delta {p['delta']:g} "
        f"(Gaussian noise sigma {p['sigma']:.1f}, each user's first {p['cap']} items); "
        f"{withheld} segments under {p['min_users']} users withheld"
    )


def covisit_line(release: dict | None, similar: list[str]) -> str:
    """What the "also watched" pairs of `/items/{id}/similar` spent, and what similar items
    rank by (`similar`: `RetrievalStack.similar_models`) (`fit`, `publish`)."""
    ranked_by = f"similar items rank by {', '.join(similar)}"
    if not release:
        return f"no release; {ranked_by}"
    if release.get("epsilon") is None:
        return (
            f"exact counts, no differential privacy ({release['pairs_released']} pairs); "
            + ranked_by
        )
    return (
        f"user-level differential privacy, epsilon {release['epsilon']:g}, delta "
        f"{release['delta']:g} (sigma {release['sigma']:.1f}, pairs among each user's first "
        f"{release['max_items_per_user']} items, released above {release['threshold']:.0f}): "
        f"{release['pairs_released']} pairs; {ranked_by}"
    )


def training_privacy_line(plan: dict | None) -> str:
    """What a re-ranker's training spent (`train`, `publish`)."""
    if not plan:
        return "trained without differential privacy"
    stages = plan.get("stages")
    split = (
        " (" + " + ".join(f"{s['stage']} {s['epsilon']:.2f}" for s in stages) + ")"
        if stages
        else ""
    )
    return (
        f"DP-SGD, user-level epsilon {plan['total_epsilon']:.2f}{split}, delta "
        f"{plan['total_delta']:g}: {plan['users']} users, one example each, noise multiplier "
        f"{plan['noise_multiplier']:.2f}, clipping norm {plan['max_grad_norm']:g}, "
        f"{plan['steps']} steps at sample rate {plan['sample_rate']:.3f}"
    )
