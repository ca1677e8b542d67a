"""The evaluation harness on real ML-100k reproduces independently measured numbers.

Reference (issue 3, same protocol): most popular NDCG@10 0.025, transitions 0.095; the
standard error of NDCG@10 there is about 0.008, so +-2 SE bounds.
"""

from __future__ import annotations

import pytest

from pipelines.artifact import load_dataset, write_dataset
from pipelines.prepare import PrepareConfig, run_local
from pipelines.sources import load_source
from training.evaluation.harness import ModelSpec, evaluate, grid
from training.retrieval import MostPopular, Transitions

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    out = tmp_path_factory.mktemp("ml") / "ml-100k"
    write_dataset(run_local(load_source("ml-100k"), PrepareConfig()), str(out))
    return load_dataset(str(out))


def test_reproduces_reference_numbers(ml100k):
    specs = [
        ModelSpec("most popular", lambda p: MostPopular(**p), [{}]),
        ModelSpec(
            "transitions",
            lambda p: Transitions(**p),
            grid(window=[2, 3], recent=[3], recency_decay=[0.5], pop_damping=[0.0]),
        ),
    ]
    report = evaluate(ml100k, specs, resamples=200, progress=False)
    models = report["models"]
    pop = models["most popular"]["test"]["NDCG@10"]
    trans = models["transitions"]["test"]["NDCG@10"]
    assert 0.025 - 0.016 <= pop["mean"] <= 0.025 + 0.016
    assert 0.095 - 0.016 <= trans["mean"] <= 0.095 + 0.016
    assert pop["low"] < pop["mean"] < pop["high"]
    assert report["users"] == 943 and report["items"] == 1348
    # transitions beats most popular, and the paired test says so
    assert trans["mean"] > pop["mean"]
    fusion = models["fusion (learned, of sources)"]
    assert fusion["candidate_recall"]["fused top-100"] >= fusion["candidate_recall"]["fused top-50"]
