"""A published model version on real ML-100k for the serving tests: a test-sized retrieval
stack (every production source, SASRec trained briefly) fitted on all interactions and a
hybrid re-ranker on a tiny random causal LM (a real checkpoint, saved the way training saves
one; its weights are untrained)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipelines.artifact import load_dataset, write_dataset
from pipelines.prepare import PrepareConfig, run_local
from pipelines.schema import Split
from pipelines.sources import load_source
from tests.tiny_models import tiny_causal
from training.publish import VERSION_FILE, point_current, publish_version
from training.reranker.features import feature_names
from training.reranker.model import (
    RerankerConfig,
    build_model,
    inspect_base,
    load_tokenizer,
    make_renderer,
    save_reranker,
)
from training.reranker.prompt import PromptTemplate
from training.retrieval import SelfAttentive
from training.stack import DEFAULT_SOURCES, StackSpec, fit_stack

#: The production sources with SASRec trained for 2 epochs instead of 40: the same code
#: paths and names (the re-ranker's features), fitted in seconds.
TEST_SOURCES: StackSpec = {
    **DEFAULT_SOURCES,
    "SASRec": (SelfAttentive, {"epochs": 2, "batch_size": 128}),
}


def tiny_reranker(root: Path, texts: list[str], dataset_version: str) -> Path:
    base = tiny_causal(root / "tiny-lm", texts)
    cfg = RerankerConfig(
        base_model=str(base),
        mode="hybrid",
        template=PromptTemplate(candidates=20, history_items=12, item_tokens=8),
    )
    info = inspect_base(str(base))
    renderer = make_renderer(info, load_tokenizer(info), cfg.template, texts)
    features = feature_names(list(DEFAULT_SOURCES))
    model = build_model(cfg, info, len(features), renderer.index_ids)
    meta = {
        "config": cfg.model_dump(mode="json"),
        "base_model": info.path,
        "base_fingerprint": info.fingerprint,
        "kind": info.kind,
        "model_type": info.model_type,
        "index_ids": renderer.index_ids,
        "features": features,
        "sources": list(DEFAULT_SOURCES),
        "dataset_version": dataset_version,
    }
    save_reranker(model, root / "reranker", meta)
    return root / "reranker"


def ml100k_version(root: Path, versions: tuple[str, ...] = ("v1",)):
    """(dataset, model root) with the given versions published, the last one CURRENT."""
    write_dataset(run_local(load_source("ml-100k"), PrepareConfig()), str(root / "ds"))
    ds = load_dataset(str(root / "ds"))
    texts = ds.items["text"].to_pylist()
    rr = tiny_reranker(root, texts, ds.manifest.version)
    stack, _ = fit_stack(ds, Split.TEST, progress=False, spec=TEST_SOURCES)
    stack.save(root / "stack")
    models = root / "models"
    first = publish_version(
        ds, models, rr, version=versions[0], progress=False, stack=root / "stack"
    )
    for v in versions[1:]:  # the same models under another version name (a republish)
        shutil.copytree(first.path, models / v)
        info = json.loads((models / v / VERSION_FILE).read_text())
        (models / v / VERSION_FILE).write_text(json.dumps({**info, "version": v}))
        point_current(models, v)
    return ds, models
