"""The dataset artifact: round trip, validation on load, and never a half-written folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines import artifact
from pipelines.artifact import load_dataset, write_dataset
from pipelines.errors import ArtifactError
from pipelines.prepare import PrepareConfig, run_local
from pipelines.schema import SCHEMA_VERSION, Split
from pipelines.sources import load_source
from tests.datafiles import dense_log, write_ml1m, write_ml100k


@pytest.fixture
def prepared(tmp_path):
    return run_local(
        load_source("movielens", path=str(write_ml100k(tmp_path / "src"))), PrepareConfig()
    )


def test_round_trip(tmp_path, prepared):
    out = tmp_path / "ds"
    manifest = write_dataset(prepared, str(out))
    ds = load_dataset(str(out), verify=True)
    assert ds.manifest == manifest
    assert ds.manifest.schema_version == SCHEMA_VERSION
    assert ds.interactions.equals(prepared.interactions)
    m = ds.matrix("train")
    assert m.shape == (8, 7) and m.nnz == (ds.interactions["split"].to_numpy() == 0).sum()
    assert ds.matrix("train_val").nnz == m.nnz + 8
    seq = ds.sequences
    assert len(seq.of(0)) == 7 and seq.splits[seq.indptr[1] - 1] == Split.TEST
    # Sequences are chronological with item-id tie-break.
    t = seq.timestamps[seq.indptr[0] : seq.indptr[1]]
    assert np.all(np.diff(t) >= 0)
    assert {p.name for p in out.iterdir()} == {"manifest.json", *artifact.FILES.values()}


def test_same_dataset_is_replaced_different_is_refused(tmp_path, prepared):
    out = tmp_path / "ds"
    write_dataset(prepared, str(out))
    write_dataset(prepared, str(out))  # same source: rebuilt in place
    other = run_local(
        load_source("movielens", path=str(write_ml1m(tmp_path / "m1"))), PrepareConfig()
    )
    before = (out / "manifest.json").read_text()
    with pytest.raises(ArtifactError, match="already holds a different dataset"):
        write_dataset(other, str(out))
    assert (out / "manifest.json").read_text() == before
    write_dataset(other, str(out), overwrite=True)
    assert load_dataset(str(out)).manifest.source.kind == "ml-1m"


def test_non_dataset_folder_is_refused(tmp_path, prepared):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="holds no llmrec dataset"):
        write_dataset(prepared, str(out))
    assert (out / "notes.txt").read_text() == "mine"


def test_failure_mid_write_leaves_old_artifact_and_no_temp(tmp_path, prepared, monkeypatch):
    out = tmp_path / "ds"
    write_dataset(prepared, str(out))
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(artifact, "save_npz", boom)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(prepared, str(out))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "src"]


def test_load_refuses_other_schema_version_and_missing_files(tmp_path, prepared):
    out = tmp_path / "ds"
    write_dataset(prepared, str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["schema_version"] = SCHEMA_VERSION + 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="schema version"):
        load_dataset(str(out))
    manifest["schema_version"] = SCHEMA_VERSION
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="expected 'ml-1m'"):
        load_dataset(str(out), expected_name="ml-1m")
    (out / "matrix_train.npz").unlink()
    with pytest.raises(ArtifactError, match="incomplete"):
        load_dataset(str(out))
    with pytest.raises(ArtifactError, match="run `llmrec prepare"):
        load_dataset(str(tmp_path / "nothing"))


def test_corrupt_file_fails_verification(tmp_path, prepared):
    out = tmp_path / "ds"
    write_dataset(prepared, str(out))
    (out / "items.parquet").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="does not match"):
        load_dataset(str(out), verify=True)


def test_version_depends_on_params(tmp_path):
    src = load_source("movielens", path=str(write_ml100k(tmp_path / "src", dense_log())))
    a = write_dataset(run_local(src, PrepareConfig()), str(tmp_path / "a"))
    b = write_dataset(run_local(src, PrepareConfig(min_item_interactions=4)), str(tmp_path / "b"))
    assert a.version != b.version and a.source.fingerprint == b.source.fingerprint
