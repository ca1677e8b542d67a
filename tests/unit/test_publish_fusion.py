"""`publish --fusion reranker`: the model version serves the fusion its re-ranker was trained
with, and refuses a re-ranker whose fusion does not fit the stack."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pipelines.errors import ArtifactError
from pipelines.schema import Split
from training.publish import load_version, publish_version
from training.retrieval import FitData
from training.stack import DEFAULT_SOURCES, holdout_fusion

#: Two cheap sources: fitted in milliseconds on ML-100k.
SPEC = {name: DEFAULT_SOURCES[name] for name in ("transitions", "recent popular")}


def _reranker_with_fusion(published, tmp_path, fusion: dict | None):
    rr = tmp_path / "reranker"
    shutil.copytree(published[1].parent / "reranker", rr)
    meta = json.loads((rr / "reranker.json").read_text())
    (rr / "reranker.json").write_text(json.dumps({**meta, "fusion": fusion}))
    return rr


def test_the_version_serves_the_fusion_its_reranker_was_trained_with(published, tmp_path):
    ds = published[0]
    data = FitData.from_dataset(ds, Split.TRAIN)
    trained = holdout_fusion(data, 1, np.zeros((data.n_items, 4), np.float32), False, SPEC)
    rr = _reranker_with_fusion(published, tmp_path, trained.to_json())
    mv = publish_version(
        ds, tmp_path / "models", rr, "v1", progress=False, spec=SPEC, fusion_from_reranker=True
    )
    served = json.loads((mv.path / "stack" / "stack.json").read_text())["fusion"]
    assert served == json.loads(json.dumps(trained.to_json()))
    assert load_version(tmp_path / "models").stack().source_names == list(SPEC)


def test_a_reranker_without_a_fitting_fusion_is_refused_before_anything_is_written(
    published, tmp_path
):
    ds = published[0]
    models = tmp_path / "models"
    rr = _reranker_with_fusion(published, tmp_path, None)
    with pytest.raises(ArtifactError, match="does not record the fusion"):
        publish_version(ds, models, rr, "v1", spec=SPEC, fusion_from_reranker=True)
    other = {"sources": ["ALS"], "depth": 100, "mean": [0], "std": [1], "weights": [1], "bias": 0}
    rr = _reranker_with_fusion(published, tmp_path / "other", other)
    with pytest.raises(ArtifactError, match="trained on the sources"):
        publish_version(ds, models, rr, "v1", spec=SPEC, fusion_from_reranker=True)
    with pytest.raises(ArtifactError, match="give --reranker and no --stack"):
        publish_version(ds, models, None, "v1", spec=SPEC, fusion_from_reranker=True)
    assert not models.exists()
