"""The local multi-node Ray cluster the cluster tests run on: a head node and a worker node
started with `ray start` on this machine (each in its own process group, from the venv, so
jobs use its python), and the `ray job submit` calls of the batch stages."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from cluster.local_redis import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = os.path.dirname(sys.executable)
NAME = "synthetic-3000-u60-i100-t20-s0"  # the synthetic source names its artifact by its spec


def alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return out


class Node:
    """A `ray start --block` process in its own process group, with its session folder."""

    proc: subprocess.Popen
    tmp: str

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


class Head(Node):
    """A head node in its own process group, started from the venv (jobs use its python),
    marked by the custom resource `ingress` (the cluster profile's Api and EventStore)."""

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
        self.env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.dash, self.gcs = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dash}"
        self.proc = subprocess.Popen(
            [
                f"{BIN}/ray",
                "start",
                "--head",
                "--block",
                f"--port={self.gcs}",
                "--node-ip-address=127.0.0.1",
                f"--dashboard-port={self.dash}",
                "--num-cpus=4",
                "--resources=" + json.dumps({"ingress": 100}),
                "--include-dashboard=true",
                # Free ports, not the defaults: another local cluster of the test run (the
                # session's, or one `llmrec serve` started) may hold them.
                f"--dashboard-agent-listen-port={free_port()}",
                f"--metrics-export-port={free_port()}",
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


class Worker(Node):
    """A second node joining the head's cluster (`ray start --address`), marked by the custom
    resource `models`; on this machine, so its agent and metrics ports are chosen free."""

    def __init__(self, head: Head) -> None:
        self.head = head
        # Its own session folder, as a separate machine has: two nodes sharing one would
        # delete each other's runtime-env packages.
        self.tmp = tempfile.mkdtemp(prefix="rw", dir="/tmp")
        self.proc = subprocess.Popen(
            [
                f"{BIN}/ray",
                "start",
                "--block",
                f"--address=127.0.0.1:{head.gcs}",
                "--node-ip-address=127.0.0.1",
                "--num-cpus=2",
                "--resources=" + json.dumps({"models": 100}),
                f"--dashboard-agent-listen-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                f"--temp-dir={self.tmp}",
            ],
            env=head.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            status = subprocess.run(
                [f"{BIN}/ray", "status", f"--address=127.0.0.1:{head.gcs}"],
                env=head.env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if "models" in status.stdout:
                return
            assert self.proc.poll() is None, "ray start --address exited"
            time.sleep(2)
        pytest.fail("the worker node did not join in 120 s")


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
