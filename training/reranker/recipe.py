"""The hybrid re-ranker's training recipe: the feature layer alone first (it trains in a
minute), then the hybrid (LoRA + feature layer) started from it, so the LM only has to learn
what the features miss. `llmrec train`, the job entrypoint and the benchmarks share it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.reranker.model import RerankerConfig
from training.reranker.settings import TrainSettings

#: The feature layer's own schedule in stage 1: many cheap epochs, a larger step size.
FEATURE_STAGE = {"epochs": 40, "patience": 5, "lr_heads": 3e-3, "use_gpu": False}
#: Under DP the feature layer's epochs are fixed (no early stopping): fewer, since every
#: step spends privacy (20 lose 0.003 NDCG@10 at epsilon 8 on ML-100k, docs/BENCHMARKS.md)
DP_FEATURE_EPOCHS = 20


def train_recipe(
    prepared: Any,
    cfg: RerankerConfig,
    settings: TrainSettings,
    target: Path,
    runs: str,
    run_name: str,
    on_stage: Callable[[str, Any], None] | None = None,
) -> Any:
    """Train `cfg.mode`'s re-ranker into `target`; a hybrid without `init_features_from`
    first trains its feature layer into `<target>-features`. `on_stage(name, result)` is
    told of each finished stage. Returns the last stage's result."""
    from training.reranker.train import train_reranker

    if cfg.mode == "hybrid" and settings.init_features_from is None and not settings.init_from:
        warm = target.with_name(f"{target.name}-features")
        stage = settings.model_copy(update=FEATURE_STAGE)
        if settings.dp_epsilon is not None:
            # Under DP each stage gets half the budget (they add up: basic composition),
            # the feature layer with DP_FEATURE_EPOCHS fixed epochs.
            half = {"dp_epsilon": settings.dp_epsilon / 2, "dp_delta": settings.dp_delta / 2}
            stage = stage.model_copy(update=half | {"epochs": DP_FEATURE_EPOCHS})
            settings = settings.model_copy(update=half)
        first = train_reranker(
            prepared,
            cfg.model_copy(update={"mode": "features"}),
            stage,
            warm,
            runs,
            f"{run_name}-features",
        )
        if on_stage is not None:
            on_stage(f"feature layer -> {warm}", first)
        settings = settings.model_copy(update={"init_features_from": str(warm)})
    result = train_reranker(prepared, cfg, settings, target, runs, run_name)
    if on_stage is not None:
        on_stage(cfg.mode, result)
    return result
