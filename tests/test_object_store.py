"""Every batch stage reads and writes object-store URIs (S3 here, through a local endpoint):
the same commands a cluster runs against shared storage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from pipelines import storage
from pipelines.artifact import load_dataset, write_dataset
from pipelines.errors import ArtifactError
from pipelines.prepare import PrepareConfig, run_local
from pipelines.sources import load_source
from tests.serving_setup import TEST_SOURCES, tiny_reranker
from training.publish import current_version, load_version, publish_version
from training.stack import spec_to_json

pytestmark = pytest.mark.s3

NAME = "synthetic-4000-u80-i100-t20-s0"  # the synthetic source names its artifact by its spec


def listing(uri: str) -> list[str]:
    fs, path = storage.resolve(uri)
    sel = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    return sorted(i.path[len(path) + 1 :] for i in fs.get_file_info(sel) if i.is_file)


def llmrec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_folders_round_trip_and_replace_cleanly(s3_uri, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.json").write_text("1")
    (src / "sub" / "b.bin").write_bytes(b"\x00\x01")
    target = storage.join(s3_uri, "roundtrip", "x")
    assert storage.local_path(target) is None
    storage.upload_dir(src, target)
    (src / "a.json").unlink()
    (src / "c.txt").write_text("new")
    storage.upload_dir(src, target)  # a replacement leaves none of the old files behind
    assert listing(target) == ["c.txt", "sub/b.bin"]
    with storage.staged_input(target) as local:
        assert (local / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    with storage.staged_output(target, merge=True) as out:
        out.mkdir()
        (out / "d.txt").write_text("merged")
    assert listing(target) == ["c.txt", "d.txt", "sub/b.bin"]
    with (
        pytest.raises(ArtifactError, match="not a folder"),
        storage.staged_input(storage.join(s3_uri, "missing")),
    ):
        pass


@pytest.fixture(scope="module")
def batch_on_s3(s3_uri, tmp_path_factory):
    """prepare -> re-ranker -> fit -> publish, every artifact on S3."""
    tmp = tmp_path_factory.mktemp("s3batch")
    root = storage.join(s3_uri, "batch")
    source = load_source("synthetic", synthetic_interactions=4_000, cache=tmp / "cache")
    data = storage.join(root, "datasets", "synthetic")
    write_dataset(run_local(source, PrepareConfig()), data)
    ds = load_dataset(data, expected_name=NAME)
    rr = tiny_reranker(tmp, ds.items["text"].to_pylist(), ds.manifest.version)
    storage.upload_dir(rr, storage.join(root, "rerankers", "hybrid"))
    return ds, root


def test_fit_and_publish_jobs_on_s3(batch_on_s3, tmp_path):
    ds, root = batch_on_s3
    data, stack, models = (
        storage.join(root, "datasets", "synthetic"),
        storage.join(root, "stacks", "synthetic"),
        storage.join(root, "models"),
    )
    spec = tmp_path / "stack-spec.json"  # the test-sized stack, through --stack-spec
    spec.write_text(json.dumps({"sources": spec_to_json(TEST_SOURCES)}))
    proc = llmrec(
        "fit", "--dataset", NAME, "--data", data, "--out", stack, "--stack-spec", str(spec)
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "stack.json" in listing(stack)
    proc = llmrec(
        "publish",
        "--dataset",
        NAME,
        "--data",
        data,
        "--stack",
        stack,
        "--reranker",
        storage.join(root, "rerankers", "hybrid"),
        "--root",
        models,
        "--version",
        "v1",
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert current_version(models) == "v1"
    files = listing(models)
    assert {
        "CURRENT",
        "v1/version.json",
        "v1/stack/stack.json",
        "v1/reranker/reranker.json",
    } <= set(files)
    mv = load_version(models)  # what a replica does: a local copy, downloaded once
    assert mv.version == "v1" and storage.local_path(mv.uri) is None
    assert mv.path.is_dir() and mv.reranker is not None and (mv.reranker / "heads.pt").exists()
    assert mv.stack().dataset_version == ds.manifest.version
    fitted = json.loads((mv.path / "stack" / "stack.json").read_text())["spec"]
    assert fitted["SASRec"]["params"]["epochs"] == TEST_SOURCES["SASRec"][1]["epochs"]
    assert load_version(models).path == mv.path

    # A second version fitted in the publish job itself; CURRENT follows it.
    v2 = publish_version(ds, models, version="v2", progress=False, spec=TEST_SOURCES)
    assert current_version(models) == "v2" and v2.reranker is None


def test_a_publish_with_an_incompatible_input_changes_nothing(batch_on_s3, tmp_path):
    ds, root = batch_on_s3
    models = storage.join(root, "models-bad")
    publish_version(ds, models, version="v1", progress=False, spec=TEST_SOURCES)
    before = listing(models)
    other = tmp_path / "other-reranker"
    storage.download_dir(storage.join(root, "rerankers", "hybrid"), other)
    meta = json.loads((other / "reranker.json").read_text())
    (other / "reranker.json").write_text(json.dumps({**meta, "dataset_version": "0000"}))
    bad = storage.join(root, "rerankers", "stale")
    storage.upload_dir(other, bad)
    with pytest.raises(ArtifactError, match="retrain it"):
        publish_version(ds, models, reranker=bad, version="v2", progress=False)
    with pytest.raises(ArtifactError, match="exists already"):
        publish_version(ds, models, version="v1", progress=False)
    assert listing(models) == before and current_version(models) == "v1"
    proc = llmrec(
        "publish",
        "--dataset",
        NAME,
        "--data",
        storage.join(root, "datasets", "synthetic"),
        "--reranker",
        storage.join(root, "nothing-here"),
        "--root",
        models,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not a folder" in proc.stderr
    assert listing(models) == before


def test_a_missing_uri_is_one_clear_line(s3_uri):
    proc = llmrec("fit", "--dataset", NAME, "--data", storage.join(s3_uri, "no-such-data"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith("error:"), proc.stderr


def test_model_path_helpers_keep_local_paths_local(tmp_path):
    assert storage.local_path(tmp_path) == str(tmp_path)
    assert storage.local_path(f"file://{tmp_path}") == str(tmp_path)
    assert storage.cached_copy(tmp_path) == Path(tmp_path)
    assert storage.join("s3://b/p?x=1", "v1", "CURRENT") == "s3://b/p/v1/CURRENT?x=1"
