"""The evaluation harness on real ML-100k reproduces independently measured numbers.

Reference (issue 3, same protocol): most popular NDCG@10 0.025, transitions 0.095; the
standard error of NDCG@10 there is about 0.008, so +-2 SE bounds.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.artifact import load_dataset, write_dataset
from pipelines.prepare import PrepareConfig, run_local
from pipelines.schema import Split
from pipelines.sources import load_source
from training.evaluation import harness
from training.evaluation.harness import ModelSpec, Phase, evaluate, grid
from training.evaluation.metrics import metrics_from_ranks
from training.retrieval import MostPopular, SelfAttentive, Transitions

TRANSITIONS = {"window": 3, "recent": 3, "recency_decay": 0.5, "pop_damping": 0.0}

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


def test_one_fit_tests_the_validation_fit_with_the_validation_item_in_the_history(ml100k):
    specs = [ModelSpec("transitions", lambda p: Transitions(**p), [TRANSITIONS])]
    report = evaluate(ml100k, specs, resamples=200, progress=False, one_fit=True)
    assert report["one_fit"] and "one fit on train" in report["protocol"]
    # By hand: fitted on train only, scored on histories through validation.
    val, test = Phase.build(ml100k, Split.VALIDATION), Phase.build(ml100k, Split.TEST)
    by_hand = test.ranks(test.score_matrix(Transitions(**TRANSITIONS).fit(val.fit)))
    ndcg = report["models"]["transitions"]["test"]["NDCG@10"]["mean"]
    assert ndcg == pytest.approx(float(metrics_from_ranks(by_hand)["NDCG@10"].mean()))
    refit = evaluate(ml100k, specs, resamples=200, progress=False)
    assert not refit["one_fit"]
    assert refit["models"]["transitions"]["test"]["NDCG@10"]["mean"] != pytest.approx(ndcg)


@pytest.mark.slow
def test_one_fit_keeps_sasrecs_best_epoch_on_validation(ml100k, monkeypatch):
    monkeypatch.setattr(harness, "EPOCH_CHECK_EVERY", 1)
    val = Phase.build(ml100k, Split.VALIDATION)
    small = {"dim": 16, "layers": 1, "heads": 1, "batch_size": 256, "learning_rate": 1e-2}
    # Seeded: a fit of e epochs is the first e epochs of a longer one.
    per_epoch = [
        float(
            metrics_from_ranks(
                val.ranks(val.score_matrix(SelfAttentive(**small, epochs=e).fit(val.fit)))
            )["NDCG@10"].mean()
        )
        for e in (1, 2, 3)
    ]
    model, params, scores = harness.best_epoch(SelfAttentive(**small, epochs=3), small, val)
    assert params["epochs"] == 1 + int(np.argmax(per_epoch))
    assert np.array_equal(scores, val.score_matrix(model))
    chosen = float(metrics_from_ranks(val.ranks(scores))["NDCG@10"].mean())
    assert chosen == pytest.approx(max(per_epoch))
