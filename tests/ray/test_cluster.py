"""The batch path on a real cluster (`ray start` on loopback): stages as `ray job submit`
jobs with cluster/runtime_env.yaml, bad jobs failing with a clear message, and `llmrec
serve` stopping on Ctrl-C. Serving across the cluster's nodes: test_cluster_two_nodes.py."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest
import requests

from pipelines.artifact import load_dataset
from tests.datafiles import write_ml100k
from tests.ray.cluster_nodes import (
    BIN,
    NAME,
    alive,
    assert_failed_cleanly,
    assert_succeeded,
    free_port,
    publish_job,
    submit,
)
from training.publish import current_version

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]


def test_prepare_as_a_ray_job(head, tmp_path):
    src = write_ml100k(tmp_path / "ml")
    out = tmp_path / "ds"
    proc = submit(head, "prepare", "--dataset", "movielens", "--path", str(src), "--out", str(out))
    assert_succeeded(proc)
    assert "5/5-core" in proc.stdout
    ds = load_dataset(str(out), verify=True)
    assert ds.manifest.engine == "ray" and ds.manifest.n_users == 8


def test_a_bad_job_fails_with_a_clear_message(head, tmp_path):
    proc = submit(head, "prepare", "--dataset", "movielens", "--path", str(tmp_path / "missing"))
    assert_failed_cleanly(proc, "not a folder")


def test_jobs_pointed_at_missing_or_incompatible_artifacts_fail_fast(head, batch, tmp_path):
    _, _, rr, models = batch
    before = sorted(p.relative_to(models) for p in models.rglob("*"))
    start = time.perf_counter()
    proc = submit(head, "train", "--dataset", NAME, "--data", str(tmp_path / "nothing"))
    assert_failed_cleanly(proc, "no dataset at", "llmrec prepare")
    other = tmp_path / "ml"
    assert_succeeded(
        submit(
            head,
            "prepare",
            "--dataset",
            "movielens",
            "--path",
            str(write_ml100k(other)),
            "--out",
            str(tmp_path / "other-ds"),
        )
    )
    # ("ml": a MovieLens artifact is named after its folder)
    proc = publish_job(head, "ml", tmp_path / "other-ds", rr, models, "v9")
    assert_failed_cleanly(proc, "was trained on dataset version", "retrain it")
    assert time.perf_counter() - start < 240  # fails before any fitting or training
    assert sorted(p.relative_to(models) for p in models.rglob("*")) == before
    assert current_version(models) == "v1"


def test_llmrec_serve_is_safe_by_default_and_stops_on_ctrl_c(published, tmp_path):
    """`llmrec serve` with no key configured starts, says how to create one, and refuses
    every protected call until a key is created (taken while serving). The quick start
    serves "until Ctrl-C": SIGINT must end the command and its local cluster promptly,
    leaving no process behind."""
    _, models = published
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [
                f"{BIN}/llmrec",
                "serve",
                "--root",
                str(models),
                "--port",
                str(port),
                "--store",
                f"sqlite://{tmp_path / 'events.db'}",
                "--api-keys",
                str(tmp_path / "api-keys.json"),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RAY_AUTH_MODE": "disabled"},
            start_new_session=True,
        )
    try:
        deadline = time.time() + 240
        while "Ctrl-C stops serving" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            if time.time() > deadline:
                pytest.fail("llmrec serve never became ready")
            time.sleep(1)
        base = f"http://127.0.0.1:{port}"
        assert requests.get(f"{base}/readyz", timeout=10).status_code == 200
        started = log.read_text()
        assert "no API key in" in started and "llmrec keys create" in started, started[-2000:]
        r = requests.get(f"{base}/recommend/1?k=3", timeout=10)
        assert r.status_code == 401 and "Authorization: Bearer" in r.json()["detail"]
        made = subprocess.run(
            [
                f"{BIN}/llmrec",
                "keys",
                "create",
                "--name",
                "me",
                "--scope",
                "recommend",
                "--file",
                str(tmp_path / "api-keys.json"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        auth = {"Authorization": f"Bearer {made.stdout.strip().splitlines()[-1]}"}
        deadline = time.time() + 15
        while (
            r := requests.get(f"{base}/recommend/1?k=3", headers=auth, timeout=10)
        ).status_code != 200:
            assert time.time() < deadline, r.text
            time.sleep(0.5)
        children = psutil.Process(proc.pid).children(recursive=True)
        start = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 60 s after SIGINT:\n{log.read_text()[-3000:]}")
        took = time.perf_counter() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = log.read_text()
    assert proc.returncode == 0, out[-3000:]
    assert "stopping" in out and "Traceback" not in out
    assert took < 30, took
    deadline = time.time() + 30
    while alive(children) and time.time() < deadline:
        time.sleep(1)
    assert alive(children) == []
