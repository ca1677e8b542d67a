"""A model version: what serving loads, as one folder at a local path or any pyarrow URI.

    <root>/<version>/
        version.json     dataset URI and version, when, what is inside
        stack/           the retrieval stack fitted on every interaction (training.stack)
        reranker/        a copy of the trained re-ranker (optional)
    <root>/CURRENT       the version serving should run (replaced in one write)

Versions are immutable once published, so a replica on another machine downloads one once
(`pipelines.storage.cached_copy`). Serving picks a new version up through its `user_config`,
or, with `version: latest`, by watching CURRENT.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines import storage
from pipelines.artifact import Dataset
from pipelines.errors import ArtifactError
from pipelines.schema import Split
from training.fit_steps import FitSteps
from training.full_fit import FullFit
from training.reranker.model import read_meta
from training.retrieval.fusion import LearnedFusion
from training.stack import RetrievalStack, StackSpec, fit_stack, source_spec

VERSION_FILE = "version.json"
CURRENT = "CURRENT"


@dataclass
class ModelVersion:
    path: Path  # a local folder (a cached copy when the root is remote)
    version: str
    dataset_uri: str
    dataset_version: str
    reranker: Path | None
    uri: str = ""

    def stack(self) -> RetrievalStack:
        return RetrievalStack.load(self.path / "stack", self.dataset_version)


def aggregate_budget(stack_meta: dict[str, Any]) -> dict[str, Any] | None:
    """The (epsilon, delta) a version's released counts spend together: the segment
    popularity release and the "also watched" release touch the same users, so their
    budgets add up. None: no noised release."""
    parts = {}
    segment = stack_meta.get("segment_release")
    if segment:
        parts["segment popularity"] = segment["privacy"]
    covisits = stack_meta.get("covisit_release")
    if covisits and covisits.get("epsilon") is not None:
        parts["also watched"] = covisits
    if not parts:
        return None
    return {
        "epsilon": sum(p["epsilon"] for p in parts.values()),
        "delta": sum(p["delta"] for p in parts.values()),
        "releases": {n: {"epsilon": p["epsilon"], "delta": p["delta"]} for n, p in parts.items()},
        "composition": "basic (epsilons and deltas add up)",
    }


def fit_retrievers(
    ds: Dataset,
    out: str | Path,
    progress: bool = True,
    spec: StackSpec | None = None,
    steps: FitSteps | None = None,
    full_fit: FullFit | str = FullFit.auto,
) -> RetrievalStack:
    """The "fit retrievers" stage: the stack of `spec` (default: `DEFAULT_SOURCES`) fitted
    on every interaction, written to `out` (a folder or URI) for `publish_version(stack=...)`.
    `steps`: told as each step of the fit starts and ends; `full_fit`: how its second pass
    starts (`FullFit`)."""
    stack, _ = fit_stack(
        ds, Split.TEST, progress=progress, spec=spec, steps=steps, full_fit=full_fit
    )
    with storage.staged_output(out) as folder:
        tmp = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        stack.save(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return stack


def publish_version(
    ds: Dataset,
    root: str | Path,
    reranker: str | Path | None = None,
    version: str | None = None,
    progress: bool = True,
    stack: str | Path | None = None,
    spec: StackSpec | None = None,
    point: bool = True,
    extra: dict | None = None,
    fusion_from_reranker: bool = False,
    full_fit: FullFit | str = FullFit.auto,
) -> ModelVersion:
    """Bundle the retrieval stack (fitted here, or the `fit_retrievers` output `stack`) with
    the re-ranker as a new version under `root` (a folder or URI), then point CURRENT at it
    (unless `point` is False: a retrain points it only once its gate passes). `extra` is
    recorded in version.json. `fusion_from_reranker`: the stack fitted here takes the
    fusion the re-ranker was trained with instead of learning its own on held-out items,
    which saves one fit of every source (what it costs in quality: docs/BENCHMARKS.md).
    `full_fit`: how the second pass of a fit here starts (`FullFit`).

    Everything is checked before anything is written: a failed publish leaves the root as
    it was."""
    root = str(root)
    version = version or time.strftime("v%Y%m%d-%H%M%S")
    fs, base = storage.resolve(root)
    if storage.exists(fs, f"{base}/{version}"):
        raise ArtifactError(
            f"model version '{storage.join(root, version)}' exists already; pick another --version"
        )
    with tempfile.TemporaryDirectory(prefix="llmrec-publish-") as scratch:
        tmp = Path(scratch) / version
        tmp.mkdir()
        fusion = None
        if fusion_from_reranker and (reranker is None or stack is not None):
            raise ArtifactError(
                "the re-ranker's fusion applies to a stack fitted here with a re-ranker: "
                "give --reranker and no --stack"
            )
        if reranker is not None:
            with storage.staged_input(reranker) as rr:
                meta = read_meta(rr)
                if meta.get("dataset_version") not in (None, ds.manifest.version):
                    raise ArtifactError(
                        f"re-ranker '{reranker}' was trained on dataset version "
                        f"{meta.get('dataset_version')}, not {ds.manifest.version}; retrain it"
                    )
                shutil.copytree(rr, tmp / "reranker")
                if fusion_from_reranker:
                    fusion = recorded_fusion(meta, str(reranker), spec)
        if stack is not None:
            with storage.staged_input(stack) as st:
                RetrievalStack.load(st, ds.manifest.version)  # refuses another dataset's
                shutil.copytree(st, tmp / "stack")
        else:
            fit, _ = fit_stack(
                ds, Split.TEST, fusion, progress=progress, spec=spec, full_fit=full_fit
            )
            fit.save(tmp / "stack")
        stack_meta = json.loads((tmp / "stack" / "stack.json").read_text())
        info = {
            "version": version,
            "dataset_uri": str(ds.uri),
            "dataset_version": ds.manifest.version,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "reranker": "reranker" if reranker is not None else None,
            # Which history lengths the LM sees (measured when the re-ranker was trained).
            "routing": routes(tmp / "reranker"),
            # The privacy budget the version's released counts spent: segment popularity,
            # and the "also watched" pairs of similar items (each its own release).
            "privacy": stack_meta.get("segment_release"),
            "covisit_privacy": stack_meta.get("covisit_release"),
            # What they spend together: the same users are in both (basic composition).
            "aggregates_privacy": aggregate_budget(stack_meta),
            # What the re-ranker's trained parameters spent (None: trained without DP).
            "reranker_privacy": read_meta(tmp / "reranker").get("privacy")
            if reranker is not None
            else None,
            **(extra or {}),
        }
        (tmp / VERSION_FILE).write_text(json.dumps(info, indent=2))
        fs.create_dir(base, recursive=True)
        storage.upload_dir(tmp, storage.join(root, version))
    if point:
        point_current(root, version)
    return load_version(root, version)


def routes(reranker: Path) -> dict[str, str] | None:
    from training.reranker.routing import RoutingTable

    table = RoutingTable.load(reranker) if reranker.exists() else None
    return {s.label: s.route for s in table.slices} if table is not None else None


def point_current(root: str | Path, version: str) -> None:
    fs, base = storage.resolve(str(root))
    tmp = f"{base}/.{CURRENT}.{time.time_ns()}.tmp"
    storage.write_bytes(fs, tmp, (version + "\n").encode())
    fs.move(tmp, f"{base}/{CURRENT}")  # a rename on local disks and NFS


def current_version(root: str | Path) -> str:
    """The version CURRENT names (what `version: latest` serves)."""
    fs, base = storage.resolve(str(root))
    pointer = f"{base}/{CURRENT}"
    if not storage.exists(fs, pointer):
        raise ArtifactError(
            f"no model version at '{root}' ({CURRENT} missing): run `llmrec publish` first"
        )
    return storage.read_bytes(fs, pointer).decode().strip()


def recorded_fusion(meta: dict, where: str, spec: StackSpec | None) -> LearnedFusion:
    """The fusion a re-ranker was trained with, checked against the stack's sources."""
    if not meta.get("fusion"):
        raise ArtifactError(
            f"re-ranker '{where}' does not record the fusion it was trained with; "
            "retrain it, or publish without --fusion reranker"
        )
    fusion = LearnedFusion.from_json(meta["fusion"])
    names = list(source_spec(spec))
    if fusion.sources != names:
        raise ArtifactError(
            f"re-ranker '{where}' was trained on the sources {fusion.sources}, not this "
            f"stack's {names}; give the --stack-spec it was trained with"
        )
    return fusion


def load_version(root: str | Path, version: str = "latest") -> ModelVersion:
    root = str(root)
    if version == "latest":
        version = current_version(root)
    fs, base = storage.resolve(root)
    if not storage.exists(fs, f"{base}/{version}/{VERSION_FILE}"):
        raise ArtifactError(f"no model version '{version}' in '{root}'")
    uri = storage.join(root, version)
    path = storage.cached_copy(uri)
    info = json.loads((path / VERSION_FILE).read_text())
    return ModelVersion(
        path,
        info["version"],
        info["dataset_uri"],
        info["dataset_version"],
        path / info["reranker"] if info.get("reranker") else None,
        uri,
    )
