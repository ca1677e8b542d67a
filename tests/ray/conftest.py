"""The multi-node cluster fixtures, for the whole session: starting nodes and running the
batch stages as jobs takes minutes, so every cluster test shares them."""

from __future__ import annotations

import pytest

from pipelines.artifact import load_dataset
from tests.ray.cluster_nodes import (
    NAME,
    Head,
    Worker,
    assert_succeeded,
    publish_job,
    submit,
)
from tests.tiny_models import tiny_causal


@pytest.fixture(scope="session")
def head():
    h = Head()
    yield h
    h.stop()


@pytest.fixture(scope="session")
def worker(head):
    """A second node of the head's cluster, marked by the custom resource `models`."""
    w = Worker(head)
    yield w
    w.stop()


@pytest.fixture(scope="session")
def batch(head, tmp_path_factory):
    """prepare -> tiny train -> publish v1, each a `ray job submit` of its stage."""
    work = tmp_path_factory.mktemp("cluster")
    data, rr, models = work / "ds", work / "reranker", work / "models"
    assert_succeeded(
        submit(
            head,
            "prepare",
            "--dataset",
            "synthetic",
            "--synthetic-interactions",
            "3000",
            "--out",
            str(data),
        )
    )
    ds = load_dataset(str(data), expected_name=NAME)
    base = tiny_causal(work / "tiny-lm", ds.items["text"].to_pylist())
    proc = submit(
        head,
        "train",
        "--dataset",
        NAME,
        "--data",
        str(data),
        "--out",
        str(rr),
        "--mode",
        "lm",
        "--base-model",
        str(base),
        "--max-examples",
        "48",
        "--epochs",
        "1",
        "--val-users",
        "20",
        "--cpus-per-worker",
        "1",
        "--storage",
        str(work / "runs"),
    )
    assert_succeeded(proc)
    assert "best checkpoint" in proc.stdout and (rr / "reranker.json").exists()
    proc = publish_job(head, NAME, data, rr, models, "v1")
    assert_succeeded(proc)
    return work, data, rr, models
