"""The CLI as a user runs it: bad input gets one line, exit status 2, and nothing written."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.datafiles import write_ml1m, write_ml100k


def llmrec(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture
def tiny(tmp_path):
    return write_ml100k(tmp_path / "ml")


def test_help_lists_the_stages():
    proc = llmrec("--help")
    assert proc.returncode == 0
    assert "prepare" in proc.stdout and "demo" in proc.stdout


def test_prepare_movielens_folder_prints_counts(tmp_path, tiny):
    out = tmp_path / "out"
    proc = llmrec(
        "prepare",
        "--dataset",
        "movielens",
        "--path",
        str(tiny),
        "--out",
        str(out),
        "--engine",
        "local",
    )
    assert proc.returncode == 0, proc.stderr
    for step in ("raw", "cleaned", "deduplicated", "5/5-core", "split: test"):
        assert step in proc.stdout
    assert (out / "manifest.json").exists()


def test_missing_files(tmp_path):
    proc = llmrec(
        "prepare",
        "--dataset",
        "generic",
        "--interactions",
        str(tmp_path / "nope.csv"),
        "--columns",
        "user=u,item=i,timestamp=t",
        "--engine",
        "local",
    )
    assert_user_error(proc, "interactions not found", "nope.csv")


def test_movielens_folder_without_files(tmp_path):
    proc = llmrec("prepare", "--dataset", "movielens", "--path", str(tmp_path), "--engine", "local")
    assert_user_error(proc, "no MovieLens files found")


def test_wrong_column_names(tmp_path):
    pq.write_table(pa.table({"a": [1], "b": [2], "c": [3]}), tmp_path / "x.parquet")
    proc = llmrec(
        "prepare",
        "--dataset",
        "generic",
        "--interactions",
        str(tmp_path / "x.parquet"),
        "--columns",
        "user=a,item=b,timestamp=when",
        "--engine",
        "local",
    )
    assert_user_error(proc, "no column 'when'", "it has: a, b, c", "--columns")


def test_generic_without_mapping(tmp_path):
    pq.write_table(pa.table({"a": [1]}), tmp_path / "x.parquet")
    proc = llmrec("prepare", "--dataset", "generic", "--interactions", str(tmp_path / "x.parquet"))
    assert_user_error(proc, "--columns")


def test_non_numeric_timestamps(tmp_path):
    (tmp_path / "x.csv").write_text("u,i,t\n1,1,yesterday\n2,2,soon\n")
    proc = llmrec(
        "prepare",
        "--dataset",
        "generic",
        "--interactions",
        str(tmp_path / "x.csv"),
        "--columns",
        "user=u,item=i,timestamp=t",
        "--engine",
        "local",
    )
    assert_user_error(proc, "no timestamp in column 't' could be parsed")


def test_empty_after_filtering(tmp_path, tiny):
    out = tmp_path / "out"
    proc = llmrec(
        "prepare",
        "--dataset",
        "movielens",
        "--path",
        str(tiny),
        "--out",
        str(out),
        "--min-user-interactions",
        "50",
        "--engine",
        "local",
    )
    assert_user_error(proc, "no interactions left after 50/5-core", "lower")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ml"]  # no temporary folder left behind


def test_unknown_dataset_name():
    proc = llmrec("prepare", "--dataset", "ml-200k")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "ml-200k" in proc.stderr and "ml-100k" in proc.stderr


def test_bad_parameter_value(tiny):
    proc = llmrec(
        "prepare",
        "--dataset",
        "movielens",
        "--path",
        str(tiny),
        "--min-user-interactions",
        "0",
        "--engine",
        "local",
    )
    assert_user_error(proc, "invalid parameters", "greater than or equal to 1")


def test_output_folder_with_a_different_dataset(tmp_path, tiny):
    out = tmp_path / "out"
    first = llmrec(
        "prepare",
        "--dataset",
        "movielens",
        "--path",
        str(tiny),
        "--out",
        str(out),
        "--engine",
        "local",
    )
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = write_ml1m(tmp_path / "m1")
    proc = llmrec(
        "prepare",
        "--dataset",
        "movielens",
        "--path",
        str(other),
        "--out",
        str(out),
        "--engine",
        "local",
    )
    assert_user_error(proc, "already holds a different dataset", "--overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_eval_refuses_a_missing_artifact(tmp_path):
    proc = llmrec("eval", "--dataset", "shop", "--data", str(tmp_path / "none"))
    assert_user_error(proc, "no dataset at", "llmrec prepare")


def test_eval_refuses_another_dataset(tmp_path, tiny):
    out = tmp_path / "out"
    assert (
        llmrec(
            "prepare",
            "--dataset",
            "movielens",
            "--path",
            str(tiny),
            "--out",
            str(out),
            "--engine",
            "local",
        ).returncode
        == 0
    )
    proc = llmrec("eval", "--dataset", "ml-100k", "--data", str(out))
    assert_user_error(proc, "is 'ml', expected 'ml-100k'")


@pytest.fixture
def prepared(tmp_path, tiny):
    out = tmp_path / "ds"
    proc = llmrec(
        "prepare",
        "--dataset",
        "movielens",
        "--path",
        str(tiny),
        "--out",
        str(out),
        "--engine",
        "local",
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_train_refuses_a_missing_base_model_before_training(tmp_path, prepared):
    proc = llmrec(
        "train",
        "--dataset",
        "ml",
        "--data",
        str(prepared),
        "--base-model",
        str(tmp_path / "nope"),
        "--out",
        str(tmp_path / "rr"),
    )
    assert_user_error(proc, "is not a folder")
    assert not (tmp_path / "rr").exists()


@pytest.mark.slow  # a whole command (the unit test of the message: test_base_models.py)
def test_train_refuses_an_unknown_model_name(tmp_path, prepared):
    args = ("--dataset", "ml", "--data", str(prepared), "--out", str(tmp_path / "rr"))
    proc = llmrec("train", *args, "--base-model", "smollm3")
    assert_user_error(proc, "unknown model 'smollm3'", "smollm2-135m")
    assert not (tmp_path / "rr").exists()


@pytest.mark.slow
def test_eval_refuses_a_reranker_that_has_seen_the_new_items_or_users(tmp_path, prepared):
    """A re-ranker trained on every interaction has seen the new items' answers and the new
    users: each cold protocol takes only one trained on its view, and says how to train it."""
    import json

    from pipelines.artifact import load_dataset
    from training.evaluation.cold_rerank import cutoff_version, without_users_version
    from training.reranker.model import FORMAT

    rr = tmp_path / "rr"
    rr.mkdir()
    version = load_dataset(str(prepared)).manifest.version
    meta = {"format": FORMAT, "dataset_version": version, "config": {"mode": "features"}}
    (rr / "reranker.json").write_text(json.dumps(meta))
    args = ("eval", "--dataset", "ml", "--data", str(prepared), "--reranker", f"x={rr}")
    out = ("--out", str(tmp_path / "ev"))
    proc = llmrec(*args, "--protocol", "new-items", "--cutoff-quantile", "0.3", *out)
    assert_user_error(
        proc, f"trained on {version}", cutoff_version(load_dataset(str(prepared)), 0.3),
        "llmrec train --new-items-cutoff 0.3",
    )  # fmt: skip
    proc = llmrec(*args, "--protocol", "new-users", *out)
    assert_user_error(
        proc, without_users_version(load_dataset(str(prepared))), "llmrec train --without-new-users"
    )
    assert not (tmp_path / "ev").exists()


def test_train_refuses_to_resume_a_run_of_another_configuration(tmp_path, prepared):
    """An explicit --name whose checkpoint holds other weights is a user error at once,
    before any example is built (it used to fail inside a Ray Train worker)."""
    import json

    ckpt = tmp_path / "runs" / "mine" / "TorchTrainer_0" / "checkpoint_000000"
    ckpt.mkdir(parents=True)
    (ckpt / "reranker.json").write_text(json.dumps({"config": {"mode": "hybrid"}}))
    args = ("train", "--dataset", "ml", "--data", str(prepared), "--out", str(tmp_path / "rr"))
    proc = llmrec(
        *args, "--storage", str(tmp_path / "runs"), "--name", "mine", "--mode", "features"
    )
    assert_user_error(proc, "run 'mine'", "differs in mode", "pass another --name")
    assert not (tmp_path / "rr").exists()


def test_train_takes_one_cold_view_at_a_time(tmp_path, prepared):
    args = ("train", "--dataset", "ml", "--data", str(prepared), "--out", str(tmp_path / "rr"))
    proc = llmrec(*args, "--new-items-cutoff", "0.2", "--without-new-users")
    assert_user_error(proc, "one protocol's view at a time")
    assert not (tmp_path / "rr").exists()


def test_train_refuses_k_beyond_the_alphabet(tmp_path, prepared):
    proc = llmrec("train", "--dataset", "ml", "--data", str(prepared), "--candidates", "100")
    assert_user_error(proc, "candidates: Input should be less than or equal to 62")


def test_train_refuses_a_tokenizer_without_room_for_the_index_tokens(tmp_path, prepared):
    from tests.tiny_models import tiny_causal

    base = tiny_causal(tmp_path / "lm", ["movie"], letters="ABC")
    proc = llmrec(
        "train",
        "--dataset",
        "ml",
        "--data",
        str(prepared),
        "--base-model",
        str(base),
        "--candidates",
        "5",
    )
    assert_user_error(proc, "only 3 distinct single-token index labels")


def test_eval_refuses_a_folder_without_a_reranker(tmp_path, prepared):
    proc = llmrec(
        "eval",
        "--dataset",
        "ml",
        "--data",
        str(prepared),
        "--reranker",
        f"x={tmp_path}",
    )
    assert_user_error(proc, "reranker.json missing")
    proc = llmrec("eval", "--dataset", "ml", "--data", str(prepared), "--no-retrievers")
    assert_user_error(proc, "nothing to evaluate")


@pytest.mark.slow  # fits a stack through the command: seconds
def test_fit_takes_the_stack_llmrec_eval_chose_for_the_dataset(tmp_path, prepared):
    """Without --stack-spec, `fit` fits what `llmrec eval` wrote for the dataset (the stack
    validation chose), says so, and the fitted stack records it."""
    import json

    from training.retrieval import ALS, PrivateCoVisits, Transitions
    from training.stack import COVISIT_ENTRY, source_spec, spec_from_json, spec_to_json

    chosen = {"transitions": (Transitions, {"window": 1}), "ALS": (ALS, {"factors": 8})}
    spec = tmp_path / "artifacts" / "eval" / "ml" / "stack-spec.json"
    spec.parent.mkdir(parents=True)
    spec.write_text(json.dumps({"sources": spec_to_json(chosen)}))
    out = tmp_path / "stack"
    proc = llmrec(
        "fit", "--dataset", "ml", "--data", str(prepared), "--out", str(out), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "artifacts/eval/ml/stack-spec.json" in proc.stdout
    fitted = spec_from_json(json.loads((out / "stack.json").read_text())["spec"])
    assert list(source_spec(fitted)) == ["transitions", "ALS"]
    assert fitted["transitions"][1]["window"] == 1 and fitted["ALS"][1]["factors"] == 8
    # No SASRec in that stack: similar items get the private "also watched" release.
    assert fitted[COVISIT_ENTRY][0] is PrivateCoVisits
    # Each step of the fit is printed as it ends and saved with the stack, in order.
    steps = json.loads((out / "stack.json").read_text())["fit_seconds"]
    assert list(steps) == [
        "interactions",
        "item text embeddings",
        "held-out interactions",
        "held-out transitions",
        "held-out ALS",
        "fusion",
        "transitions",
        "ALS",
        "popularity, segments, co-visits",
    ]
    assert all(s >= 0 for s in steps.values())
    assert "  held-out ALS: " in proc.stdout and "  fusion: " in proc.stdout


def test_keys_create_prints_the_key_once_and_list_never_shows_it(tmp_path):
    file = str(tmp_path / "keys.json")
    made = llmrec("keys", "create", "--name", "web", "--scope", "recommend", "--file", file)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("llmrec_")
    listed = llmrec("keys", "list", "--file", file)
    assert "web" in listed.stdout and "recommend" in listed.stdout
    assert key not in listed.stdout and key not in (tmp_path / "keys.json").read_text()
    assert llmrec("keys", "revoke", "web", "--file", file).returncode == 0
    assert_user_error(llmrec("keys", "revoke", "web", "--file", file), "no active key")


def test_keys_create_refuses_an_unknown_scope(tmp_path):
    proc = llmrec(
        "keys", "create", "--name", "x", "--scope", "admin", "--file", str(tmp_path / "k")
    )
    assert_user_error(proc, "scope", "recommend, events, catalog, users, ops")
    assert not (tmp_path / "k").exists()


SYNTHETIC = "synthetic-4000-u80-i100-t20-s3"


@pytest.fixture(scope="module")
def synthetic_and_spec(tmp_path_factory):
    """A small synthetic dataset and a stack with a quick SASRec (seconds per protocol)."""
    import json

    from pipelines.artifact import write_dataset
    from pipelines.prepare import PrepareConfig, run_local
    from pipelines.sources import load_source
    from training.retrieval import SelfAttentive
    from training.stack import DEFAULT_SOURCES, spec_to_json

    root = tmp_path_factory.mktemp("cold")
    src = load_source("synthetic", synthetic_interactions=4000, seed=3, cache=root / "cache")
    write_dataset(run_local(src, PrepareConfig()), str(root / "ds"))
    quick = {**DEFAULT_SOURCES, "SASRec": (SelfAttentive, {"epochs": 2, "dim": 16, "max_len": 20})}
    (root / "spec.json").write_text(json.dumps({"sources": spec_to_json(quick)}))
    return root / "ds", root / "spec.json"


@pytest.mark.slow  # whole commands, end to end
@pytest.mark.parametrize("protocol", ["new-items", "new-users"])
def test_eval_runs_the_cold_protocols_end_to_end(tmp_path, synthetic_and_spec, protocol):
    import json

    data, spec = synthetic_and_spec
    proc = llmrec(
        "eval", "--dataset", SYNTHETIC, "--data", str(data), "--stack-spec", str(spec),
        "--protocol", protocol, "--resamples", "100", "--out", str(tmp_path / "ev"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "ev" / f"{protocol}.json").read_text())
    assert report["protocol"] == protocol and (tmp_path / "ev" / f"{protocol}.png").exists()
    if protocol == "new-items":
        assert report["cases"] > 0 and "system (fused candidates)" in report["models"]
    else:
        assert {r["events"] for r in report["rows"]} == {0, 1, 3, 10}


@pytest.mark.slow
def test_eval_says_when_a_cutoff_leaves_no_new_item(tmp_path, synthetic_and_spec):
    data, spec = synthetic_and_spec
    proc = llmrec(
        "eval", "--dataset", SYNTHETIC, "--data", str(data), "--stack-spec", str(spec),
        "--protocol", "new-items", "--cutoff-quantile", "0.5", "--out", str(tmp_path / "ev"),
    )  # fmt: skip
    assert_user_error(proc, "choose an earlier --cutoff-quantile")
