"""The cluster path on a real single-node cluster (`ray start --head` on loopback): batch
stages as `ray job submit` jobs with cluster/runtime_env.yaml, the Serve config through
`serve deploy`, a newly published version picked up while serving, bad jobs failing with a
clear message, and a clean stop that leaves no process behind."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import requests

from pipelines.artifact import load_dataset
from tests.datafiles import write_ml100k
from tests.tiny_models import tiny_causal
from training.publish import current_version

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[2]
BIN = os.path.dirname(sys.executable)
NAME = "synthetic-3000-u60-i100-t20-s0"  # the synthetic source names its artifact by its spec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return out


class Head:
    """A head node in its own process group, started from the venv (jobs use its python)."""

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
        self.env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.dash = free_port()
        self.address = f"http://127.0.0.1:{self.dash}"
        self.proc = subprocess.Popen(
            [
                f"{BIN}/ray",
                "start",
                "--head",
                "--block",
                f"--port={free_port()}",
                "--node-ip-address=127.0.0.1",
                f"--dashboard-port={self.dash}",
                "--num-cpus=4",
                "--include-dashboard=true",
                f"--temp-dir={self.tmp}",
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.address}/api/version", timeout=2):
                    return
            except OSError:
                assert self.proc.poll() is None, "ray start --head exited"
                time.sleep(1)
        pytest.fail("the job server did not come up in 120 s")

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        """`ray start --block` takes the whole node down on SIGTERM."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def head():
    h = Head()
    yield h
    h.stop()


def submit(head: Head, *args: str) -> subprocess.CompletedProcess:
    """`ray job submit` of one `llmrec` stage with the project's runtime environment."""
    cmd = [
        f"{BIN}/ray",
        "job",
        "submit",
        f"--address={head.address}",
        "--runtime-env=cluster/runtime_env.yaml",
        "--",
        "llmrec",
        *args,
    ]
    # The job agent can come up seconds after the dashboard on a loaded machine.
    for _ in range(30):
        proc = subprocess.run(
            cmd, env=head.env, cwd=REPO, capture_output=True, text=True, timeout=600
        )
        if "No available agent to submit job" not in proc.stderr:
            return proc
        time.sleep(2)
    return proc


def publish_job(head: Head, name: str, data, rr, models, version: str):
    return submit(
        head,
        "publish",
        *("--dataset", name, "--data", str(data), "--reranker", str(rr)),
        *("--root", str(models), "--version", version),
    )


def assert_succeeded(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout


def assert_failed_cleanly(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    logs = proc.stdout + proc.stderr
    assert proc.returncode != 0, logs[-2000:]
    assert "failed" in logs.lower()
    assert "error:" in logs and "Traceback" not in logs, logs[-2000:]
    for f in fragments:
        assert f in logs, logs[-2000:]


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


@pytest.fixture(scope="module")
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


def test_serve_deploy_then_publish_a_new_version_and_stop_cleanly(head, batch, tmp_path):
    work, data, rr, models = batch
    port = free_port()
    cfg = tmp_path / "serve.yaml"
    proc = subprocess.run(
        [
            f"{BIN}/llmrec",
            "serve-config",
            "--out",
            str(cfg),
            "--root",
            str(models),
            "--store",
            f"sqlite://{work / 'events.db'}",
            "--port",
            str(port),
            "--watch-s",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    deploy = subprocess.run(
        [f"{BIN}/serve", "deploy", str(cfg), "-a", head.address],
        env=head.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert deploy.returncode == 0, deploy.stderr
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            if requests.get(f"{base}/readyz", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(1)
    else:
        status = subprocess.run(
            [f"{BIN}/serve", "status", "-a", head.address],
            env=head.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        pytest.fail(f"the deployed application never became ready:\n{status.stdout[-3000:]}")
    user = load_dataset(str(data)).users["user_id"][0].as_py()
    stages = []
    for _ in range(10):  # the first calls may miss the deadline while replicas warm up
        out = requests.get(f"{base}/recommend/{user}", params={"k": 5}, timeout=30).json()
        assert out["versions"]["model"] == "v1" and len(out["items"]) == 5
        stages.append(out["stage"])
        if out["stage"] == "rerank":
            break
    assert stages[-1] == "rerank", stages

    # Publish v2 as a job while serving: replicas on `version: latest` swap to it.
    proc = publish_job(head, NAME, data, rr, models, "v2")
    assert_succeeded(proc)
    seen, errors = [], []
    deadline = time.time() + 60
    while time.time() < deadline and seen[-3:] != ["v2"] * 3:
        r = requests.get(f"{base}/recommend/{user}", params={"k": 5}, timeout=30)
        if r.status_code == 200:
            seen.append(r.json()["versions"]["model"])
        else:
            errors.append(r.status_code)
        time.sleep(0.3)
    assert seen[-3:] == ["v2"] * 3, seen
    assert not errors

    # Stop: Serve first, then the node; nothing it started may survive.
    procs = head.processes()
    assert len(procs) > 5
    down = subprocess.run(
        [f"{BIN}/serve", "shutdown", "-y", "-a", head.address],
        env=head.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert down.returncode == 0, down.stderr
    head.stop()
    deadline = time.time() + 60
    while alive(procs) and time.time() < deadline:
        time.sleep(1)
    assert alive(procs) == []
    with pytest.raises(requests.RequestException):
        requests.get(f"{base}/healthz", timeout=2)


def test_llmrec_serve_stops_on_ctrl_c(published, tmp_path):
    """The quick start serves "until Ctrl-C": SIGINT must end the command and its local
    cluster promptly, leaving no process behind."""
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
        assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
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
