"""One definition of a retrieval stack: which sources it fits, with which parameters (a
`StackSpec`), how a spec is read and written (`stack-spec.json`, an `eval.json`), and the
entries that configure the stack's released counts rather than a source."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.errors import ArtifactError
from training.retrieval import (
    ALS,
    BPR,
    RETRIEVERS,
    Content,
    ItemKNN,
    MostPopular,
    PrivateCoVisits,
    Retriever,
    SegmentPopular,
    SelfAttentive,
    Transitions,
)

#: Which sources a stack fits, by name, each a retriever class and its parameters.
StackSpec = dict[str, tuple[type[Retriever], dict[str, Any]]]

#: The sources of the warm path, with the parameters selected on ML-100k validation by
#: `llmrec eval` (benchmarks/results/eval-ml-100k/eval.json).
DEFAULT_SOURCES: StackSpec = {
    "transitions": (
        Transitions,
        {"window": 3, "recent": 3, "recency_decay": 0.5, "pop_damping": 0.0},
    ),
    "transitions (recall)": (
        Transitions,
        {"window": 10, "recent": 10, "recency_decay": 0.8, "pop_damping": 0.3, "both_ways": False},
    ),
    "SASRec": (SelfAttentive, {}),
    "BPR": (BPR, {"factors": 64, "learning_rate": 0.01}),
    "ALS": (ALS, {"factors": 32, "regularization": 1.0, "alpha": 1.0}),
    "item-kNN BM25": (ItemKNN, {"similarity": "bm25", "neighbours": 100}),
    "content": (Content, {"recent": 1, "recency_decay": 0.8}),
    "recent popular": (MostPopular, {"window_days": 7}),
}


def segment_params(spec: StackSpec | None) -> dict[str, Any]:
    """The segment popularity's parameters: a spec entry of kind `segment_popular`
    configures the stack's segment model (the cold-start counts and their differential
    privacy: `epsilon`, `delta`, `min_users`, `max_items_per_user`, ...), not a source.
    None of them: `SegmentPopular`'s defaults."""
    found = [p for k, p in (spec or {}).values() if issubclass(k, SegmentPopular)]
    if len(found) > 1:
        raise ArtifactError("stack spec: more than one segment_popular entry")
    return dict(found[0]) if found else {}


#: The name a stack's recorded spec gives its segment model's entry.
SEGMENT_ENTRY = "segment popularity"
#: ... and its private "also watched" release (`/items/{id}/similar`).
COVISIT_ENTRY = "also watched"


def covisit_params(spec: StackSpec | None) -> dict[str, Any] | None:
    """The "also watched" release's parameters (`PrivateCoVisits`: `epsilon`, `delta`,
    `max_items_per_user`) from a spec entry of kind `private_covisits`; without one, its
    defaults where the stack has no SASRec source, and None (no release) where it has one:
    SASRec and content rank similar items better than they do with the release
    (docs/BENCHMARKS.md, "Similar items")."""
    spec = spec if spec is not None else DEFAULT_SOURCES
    found = [p for k, p in spec.values() if issubclass(k, PrivateCoVisits)]
    if len(found) > 1:
        raise ArtifactError("stack spec: more than one private_covisits entry")
    if found:
        return dict(found[0])
    has_sasrec = any(issubclass(k, SelfAttentive) for k, _ in spec.values())
    return None if has_sasrec else {}


def source_spec(spec: StackSpec | None) -> StackSpec:
    """The retrieval sources of `spec` (default `DEFAULT_SOURCES`): its entries but the
    segment model's and the "also watched" release's."""
    return {
        n: e
        for n, e in (spec or DEFAULT_SOURCES).items()
        if e[0] not in (SegmentPopular, PrivateCoVisits)
    }


def spec_to_json(spec: StackSpec) -> dict[str, dict[str, Any]]:
    return {name: {"kind": klass.kind, "params": params} for name, (klass, params) in spec.items()}


def spec_from_json(obj: dict[str, Any]) -> StackSpec:
    out: StackSpec = {}
    for name, entry in obj.items():
        klass = RETRIEVERS.get(entry.get("kind"))
        if klass is None:
            raise ArtifactError(
                f"stack spec: source '{name}' has an unknown kind {entry.get('kind')!r}"
            )
        klass(**entry.get("params", {}))  # unknown parameters fail here, before any fit
        out[name] = (klass, dict(entry.get("params", {})))
    return out


def spec_from_eval(report: dict[str, Any], base: StackSpec | None = None) -> StackSpec:
    """The stack `llmrec eval` chose: each source of `base` (default: `DEFAULT_SOURCES`)
    with the parameters validation selected for it in the report."""
    models = report.get("models", {})
    return {
        name: (klass, {**params, **(models.get(name, {}).get("params") or {})})
        for name, (klass, params) in (base or DEFAULT_SOURCES).items()
    }


def load_spec(path: str | Path | None) -> StackSpec:
    """A stack definition from a file: `llmrec eval`'s `stack-spec.json` (or any file in its
    format), or an evaluation report (`eval.json`), whose chosen parameters are taken. None:
    `DEFAULT_SOURCES`."""
    if path is None:
        return DEFAULT_SOURCES
    from pipelines import storage

    fs, where = storage.resolve(str(path))
    if not storage.exists(fs, where):
        raise ArtifactError(f"no stack spec at '{path}'")
    obj = json.loads(storage.read_bytes(fs, where))
    if "models" in obj:
        return spec_from_eval(obj)
    return spec_from_json(obj.get("sources", obj))


def with_text_model(spec: StackSpec | None, model: str | None) -> StackSpec:
    """`spec` (default `DEFAULT_SOURCES`) with every content source encoding text with
    `model` (unchanged when None)."""
    spec = spec or DEFAULT_SOURCES
    if model is None:
        return spec
    return {
        name: (klass, {**params, "model_path": model} if issubclass(klass, Content) else params)
        for name, (klass, params) in spec.items()
    }
