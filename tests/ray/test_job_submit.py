"""`ray job submit` of the prepare job on a real single-node cluster (`ray start --head`)."""

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

import pytest

from pipelines.artifact import load_dataset
from tests.datafiles import write_ml100k

pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head():
    """A head node in its own process group; SIGTERM to `--block` takes everything down."""
    tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    bin_dir = os.path.dirname(sys.executable)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",  # jobs run the venv's python
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    gcs, dash = free_port(), free_port()
    proc = subprocess.Popen(
        [
            os.path.join(bin_dir, "ray"),
            "start",
            "--head",
            "--block",
            f"--port={gcs}",
            "--node-ip-address=127.0.0.1",
            f"--dashboard-port={dash}",
            "--num-cpus=2",
            "--include-dashboard=true",
            f"--temp-dir={tmp}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=2):
                break
        except OSError:
            assert proc.poll() is None, "ray start --head exited"
            time.sleep(1)
    else:
        pytest.fail("the job server did not come up in 120 s")
    yield address, env
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    shutil.rmtree(tmp, ignore_errors=True)


def submit(head, *args: str) -> subprocess.CompletedProcess:
    address, env = head
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "ray"),
        "job",
        "submit",
        f"--address={address}",
        f"--working-dir={REPO}",
        "--",
        "python",
        "-m",
        "cluster.cli",
        "prepare",
        *args,
    ]
    # The job agent can come up seconds after the dashboard on a loaded machine.
    for _ in range(30):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if "No available agent to submit job" not in proc.stderr:
            return proc
        time.sleep(2)
    return proc


def test_prepare_as_a_ray_job(head, tmp_path):
    src = write_ml100k(tmp_path / "ml")
    out = tmp_path / "ds"
    proc = submit(head, "--dataset", "movielens", "--path", str(src), "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "succeeded" in proc.stdout and "5/5-core" in proc.stdout
    ds = load_dataset(str(out), verify=True)
    assert ds.manifest.engine == "ray" and ds.manifest.n_users == 8


def test_a_bad_job_fails_with_a_clear_message(head, tmp_path):
    proc = submit(head, "--dataset", "movielens", "--path", str(tmp_path / "missing"))
    assert proc.returncode != 0
    logs = proc.stdout + proc.stderr
    assert "error:" in logs and "not a folder" in logs
    assert "Traceback" not in logs
    assert "failed" in logs.lower()
