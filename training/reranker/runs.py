"""A re-ranker training run on disk: Ray Train resumes a run by its name, from the latest
checkpoint under `<storage>/<name>`. Resuming one whose weights have another shape (another
base model, template, LoRA shape or feature set) would fail inside a training worker with a
list of every missing weight; `check_resumable` says so on the driver, before anything
starts, with what differs and what to do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.reranker.model import RerankerConfig, RerankerError

#: what a checkpoint's weights depend on besides the config: the feature heads' inputs
SHAPED_BY = ("features",)


def latest_checkpoint_meta(storage: str | Path, name: str) -> dict[str, Any] | None:
    """The `reranker.json` of the newest checkpoint of run `name` under a local `storage`;
    None when there is none (a new run, or storage at a URI, which is not looked into)."""
    if "://" in str(storage):
        return None
    run = Path(storage) / name
    if not run.is_dir():
        return None
    metas = sorted(run.rglob("checkpoint_*/reranker.json"), key=lambda p: p.stat().st_mtime)
    if not metas:
        return None
    try:
        return json.loads(metas[-1].read_text())
    except (OSError, ValueError):
        return None  # a checkpoint being written or damaged: Ray Train decides


def _local(cfg: RerankerConfig) -> RerankerConfig:
    # Training hands workers a local base model by its absolute path, and saves it so.
    if cfg.base_model and Path(cfg.base_model).exists():
        return cfg.model_copy(update={"base_model": str(Path(cfg.base_model).resolve())})
    return cfg


def check_resumable(
    storage: str | Path, name: str, cfg: RerankerConfig, meta: dict[str, Any] | None = None
) -> None:
    """Raise when run `name` has a checkpoint this configuration (and, given the
    checkpoint metadata training will write, `meta`: its feature set) cannot resume from."""
    saved = latest_checkpoint_meta(storage, name)
    if saved is None or "config" not in saved:
        return
    before, cfg = _local(RerankerConfig.model_validate(saved["config"])), _local(cfg)
    differs = [
        field
        for field in RerankerConfig.model_fields
        if field != "threads" and getattr(before, field) != getattr(cfg, field)
    ]
    if meta is not None:
        differs += [key for key in SHAPED_BY if saved.get(key) != meta.get(key)]
    if differs:
        raise RerankerError(
            f"run '{name}' in {storage} holds a checkpoint of another configuration "
            f"(differs in {', '.join(differs)}), which this one cannot resume: pass another "
            "--name, or leave --name out (the default name carries the configuration's hash)"
        )
