"""`llmrec eval` end to end on ML-100k: the table, the JSON and the PNG (slow tier, ~5 min)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipelines.artifact import write_dataset
from pipelines.prepare import PrepareConfig, run_local
from pipelines.sources import load_source

pytestmark = pytest.mark.slow

BASELINES = (
    "most popular",
    "recent popular",
    "ALS",
    "BPR",
    "item-kNN BM25",
    "transitions",
    "transitions (recall)",
    "SASRec",
)


def test_llmrec_eval_on_ml100k(tmp_path):
    data = tmp_path / "ml-100k"
    write_dataset(run_local(load_source("ml-100k"), PrepareConfig()), str(data))
    out = tmp_path / "eval"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cluster.cli",
            "eval",
            "--data",
            str(data),
            "--out",
            str(out),
            "--resamples",
            "200",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in (*BASELINES, "fusion (learned", "candidate recall", "paired bootstrap"):
        assert name in proc.stdout, name
    report = json.loads((out / "eval.json").read_text())
    assert set(BASELINES) <= set(report["models"])
    for m in report["models"].values():
        ci = m["test"]["NDCG@10"]
        assert ci["low"] <= ci["mean"] <= ci["high"]
    rec = report["models"]["fusion (learned, of sources)"]["candidate_recall"]
    assert rec["fused top-20"] <= rec["fused top-50"] <= rec["fused top-100"]
    # A regression guard below the measured 0.543 (docs/BENCHMARKS.md; SASRec's numerics
    # vary by CPU), above the 0.457 the fusion reached before SASRec.
    assert rec["fused top-50"] >= 0.48
    assert (out / "eval.png").stat().st_size > 10_000
