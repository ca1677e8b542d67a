"""A model version: what serving loads, as one folder.

    <root>/<version>/
        version.json     dataset URI and version, when, what is inside
        stack/           the retrieval stack fitted on every interaction (training.stack)
        reranker/        a copy of the trained re-ranker (optional)
    <root>/CURRENT       the version serving should run (swapped atomically)

Serving picks a new version up through its `user_config` (`version: latest` reads CURRENT).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.artifact import Dataset
from pipelines.errors import ArtifactError
from pipelines.schema import Split
from training.reranker.model import read_meta
from training.stack import RetrievalStack, fit_stack

VERSION_FILE = "version.json"
CURRENT = "CURRENT"


@dataclass
class ModelVersion:
    path: Path
    version: str
    dataset_uri: str
    dataset_version: str
    reranker: Path | None

    def stack(self) -> RetrievalStack:
        return RetrievalStack.load(self.path / "stack", self.dataset_version)


def publish_version(
    ds: Dataset,
    root: str | Path,
    reranker: str | Path | None = None,
    version: str | None = None,
    progress: bool = True,
) -> ModelVersion:
    """Fit the stack on all interactions, bundle it with the re-ranker, point CURRENT at it."""
    root = Path(root)
    version = version or time.strftime("v%Y%m%d-%H%M%S")
    if reranker is not None:
        meta = read_meta(reranker)
        if meta.get("dataset_version") not in (None, ds.manifest.version):
            raise ArtifactError(
                f"re-ranker '{reranker}' was trained on dataset version "
                f"{meta.get('dataset_version')}, not {ds.manifest.version}; retrain it"
            )
    target = root / version
    if target.exists():
        raise ArtifactError(f"model version '{target}' exists already; pick another --version")
    tmp = root / f".{version}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        stack, _ = fit_stack(ds, Split.TEST, progress=progress)
        stack.save(tmp / "stack")
        if reranker is not None:
            shutil.copytree(reranker, tmp / "reranker")
        info = {
            "version": version,
            "dataset_uri": str(ds.uri),
            "dataset_version": ds.manifest.version,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "reranker": "reranker" if reranker is not None else None,
        }
        (tmp / VERSION_FILE).write_text(json.dumps(info, indent=2))
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    point_current(root, version)
    return load_version(root, version)


def point_current(root: Path, version: str) -> None:
    tmp = root / f".{CURRENT}.tmp"
    tmp.write_text(version + "\n")
    os.replace(tmp, root / CURRENT)


def load_version(root: str | Path, version: str = "latest") -> ModelVersion:
    root = Path(root)
    if version == "latest":
        pointer = root / CURRENT
        if not pointer.exists():
            raise ArtifactError(
                f"no model version at '{root}' ({CURRENT} missing): run `llmrec publish` first"
            )
        version = pointer.read_text().strip()
    path = root / version
    if not (path / VERSION_FILE).exists():
        raise ArtifactError(f"no model version '{version}' in '{root}'")
    info = json.loads((path / VERSION_FILE).read_text())
    return ModelVersion(
        path,
        info["version"],
        info["dataset_uri"],
        info["dataset_version"],
        path / info["reranker"] if info.get("reranker") else None,
    )
