"""Shared fixtures. One Ray cluster per test session, started only by tests that need it."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray instance for the whole session (short temp path: unix sockets)."""
    import ray
    import ray.data as rd

    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
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
