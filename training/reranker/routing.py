"""Which requests the re-ranker's language model sees: a table by history length, measured
when a hybrid re-ranker is trained, copied into the model version with it, read by serving.

Each slice compares three orders of the same candidates for held-back validation users
(users early stopping never looked at): retrieval's fused order, the hybrid's feature layer
alone (no LM forward pass), and the full hybrid (feature layer + LM). The rule, per slice:

- ``lm`` when the LM's gain over the feature layer alone has its 95% interval above zero;
- otherwise ``retrieval`` when the feature layer alone is significantly worse than the fused
  order (interval below zero);
- otherwise ``features``: the feature layer ranks, at a few microseconds a request.

So the LM is paid for only where it has been shown to pay, and a slice too small to show
anything gets the cheaper stage. Pure numpy; the measurement itself (scoring the rows) is
`training.reranker.evaluate.measure_routing`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from training.evaluation.bootstrap import paired_bootstrap

Route = Literal["lm", "features", "retrieval"]
ROUTING_FILE = "routing.json"
#: the history lengths of the sparse path (`CandidateConfig.sparse_below`), each its own
#: slice: what a sign-up's first events are worth to the LM changes from one to the next
#: (the new-user protocol measures it per event count), and the routing measurement replays
#: every kept-back user at each of them.
SPARSE_LENGTHS = (1, 2, 3, 4)
#: lower bounds of the history-length slices (the last one is open): one per sparse length,
#: then warm users split by how much they did.
EDGES = (*SPARSE_LENGTHS, 5, 20, 50, 100)
ORDERS = ("fused", "features", "lm")


class Gain(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mean: float
    low: float
    high: float
    p: float = Field(description="one-sided: share of resamples where the first is not better")


class RoutingSlice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    low: int = Field(description="shortest history in the slice")
    high: int | None = Field(description="first length past the slice (None: open)")
    users: int
    route: Route
    reason: str
    ndcg10: dict[str, float | None] = Field(
        description="mean NDCG@10 of each order in the slice (None: no users)"
    )
    lm_vs_features: Gain | None
    features_vs_fused: Gain | None

    def holds(self, history_len: int) -> bool:
        return history_len >= self.low and (self.high is None or history_len < self.high)

    @property
    def label(self) -> str:
        if self.high is None:
            return f"{self.low}+"
        return str(self.low) if self.high == self.low + 1 else f"{self.low}-{self.high - 1}"


class RoutingTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int = 1
    metric: str = "NDCG@10"
    measured_on: str = Field(description="which users and rows the slices hold")
    slices: list[RoutingSlice]
    ms_per_request: dict[str, float] | None = Field(
        None,
        description="milliseconds to rank one request's head with the full model (lm) and "
        "the feature layer alone, and the torch threads it ran with",
    )

    def slice_for(self, history_len: int) -> RoutingSlice | None:
        return next((s for s in self.slices if s.holds(history_len)), None)

    def route(self, history_len: int) -> Route:
        """The stage for a request whose user has `history_len` items; a length no slice
        holds (shorter than the first) goes through the LM, as without a table."""
        s = self.slice_for(history_len)
        return s.route if s is not None else "lm"

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / ROUTING_FILE
        path.write_text(self.model_dump_json(indent=2))
        return path

    @classmethod
    def load(cls, folder: str | Path | None) -> RoutingTable | None:
        """The table of a re-ranker folder; None when it has none (trained without a
        measurement, or a features-only re-ranker): every request then takes the LM."""
        if folder is None or not (Path(folder) / ROUTING_FILE).exists():
            return None
        return cls.model_validate_json((Path(folder) / ROUTING_FILE).read_text())


def request_stage(table: RoutingTable | None, path: str, history_len: int) -> Route | None:
    """The stage that orders a request's head when serving follows `table`: None for a
    cold start (its list is the cold-start one, never re-ranked); otherwise the table's
    slice, and the LM without a table. Serving (`RetrievalService.route`) and the cold
    protocols' routed list (`training.evaluation.cold_rerank`) both apply this one rule."""
    if path == "cold_start":
        return None
    return table.route(history_len) if table is not None else "lm"


def _gain(a: np.ndarray, b: np.ndarray, resamples: int, seed: int) -> Gain | None:
    if len(a) < 2:
        return None
    t = paired_bootstrap(a, b, resamples, seed)
    return Gain(mean=t.mean_difference, low=t.low, high=t.high, p=t.p_value)


def decide(lm: Gain | None, features: Gain | None) -> tuple[Route, str]:
    """The rule of the module docstring, with the reason a response and `publish` show."""
    if lm is not None and lm.low > 0:
        return "lm", f"the LM adds {lm.mean:+.4f} NDCG@10 [{lm.low:+.4f}, {lm.high:+.4f}]"
    if features is not None and features.high < 0:
        return "retrieval", (
            f"the feature layer loses {features.mean:+.4f} NDCG@10 to retrieval order "
            f"[{features.low:+.4f}, {features.high:+.4f}]"
        )
    if lm is None:
        return "features", "too few users measured to show the LM pays"
    return "features", (
        f"the LM's gain is not shown: {lm.mean:+.4f} NDCG@10 [{lm.low:+.4f}, {lm.high:+.4f}]"
    )


def routing_table(
    lengths: np.ndarray,
    ndcg: dict[str, np.ndarray],
    measured_on: str,
    edges: tuple[int, ...] = EDGES,
    resamples: int = 2000,
    seed: int = 0,
) -> RoutingTable:
    """Slices by history length of per-row NDCG@10 under each of `ORDERS`."""
    lengths = np.asarray(lengths)
    missing = [o for o in ORDERS if o not in ndcg]
    if missing:
        raise ValueError(f"routing needs NDCG of every order; missing {missing}")
    slices = []
    for i, low in enumerate(edges):
        high = edges[i + 1] if i + 1 < len(edges) else None
        inside = (lengths >= low) & (lengths < high if high is not None else True)
        v = {o: np.asarray(ndcg[o], dtype=np.float64)[inside] for o in ORDERS}
        lm = _gain(v["lm"], v["features"], resamples, seed)
        feats = _gain(v["features"], v["fused"], resamples, seed)
        route, reason = decide(lm, feats)
        slices.append(
            RoutingSlice(
                low=low,
                high=high,
                users=int(inside.sum()),
                route=route,
                reason=reason,
                ndcg10={o: float(x.mean()) if len(x) else None for o, x in v.items()},
                lm_vs_features=lm,
                features_vs_fused=feats,
            )
        )
    return RoutingTable(measured_on=measured_on, slices=slices)


class FeatureLayer:
    """The hybrid's feature layer (Linear, ReLU, Linear over each candidate's retrieval
    features) in numpy: what a request routed to ``features`` is ranked with, in the
    retrieval replica, with no hop to the re-ranker and no LM."""

    def __init__(self, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray):
        self.w1, self.b1 = w1.astype(np.float32), b1.astype(np.float32)
        self.w2, self.b2 = w2.astype(np.float32), b2.astype(np.float32)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FeatureLayer:
        def arr(key: str) -> np.ndarray:
            v = state[f"features.{key}"]
            return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)

        return cls(arr("0.weight"), arr("0.bias"), arr("2.weight"), arr("2.bias"))

    @classmethod
    def load(cls, folder: str | Path) -> FeatureLayer:
        import torch

        state = torch.load(Path(folder) / "heads.pt", map_location="cpu", weights_only=True)
        return cls.from_state(state)

    def score(self, features: np.ndarray) -> np.ndarray:
        """One score per candidate row of `features` (n, n_features)."""
        h = np.maximum(np.asarray(features, dtype=np.float32) @ self.w1.T + self.b1, 0.0)
        return (h @ self.w2.T + self.b2)[:, 0]


def describe(table: RoutingTable) -> list[dict[str, Any]]:
    """One row per slice for the CLI tables: mean NDCG@10 of each order, the paired
    differences with their 95% intervals."""
    return [
        {
            "history": s.label,
            "users": s.users,
            "route": s.route,
            **{o: None if s.ndcg10[o] is None else round(s.ndcg10[o], 4) for o in ORDERS},
            "lm - features": _ci(s.lm_vs_features),
            "features - fused": _ci(s.features_vs_fused),
        }
        for s in table.slices
    ]


def _ci(g: Gain | None) -> str:
    return "-" if g is None else f"{g.mean:+.4f} [{g.low:+.4f},{g.high:+.4f}]"
