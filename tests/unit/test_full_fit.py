"""A fit's second pass (every source on all the data) from scratch or warm from its own
held-out fit (`--full-fit`), and which one `auto` picks."""

from __future__ import annotations

import pytest

from pipelines.artifact import load_dataset, write_dataset
from pipelines.prepare import PrepareConfig, run_local
from pipelines.schema import Split
from pipelines.sources import load_source
from training.full_fit import WARM_FULL_FIT_INTERACTIONS, FullFit, full_fit_is_warm
from training.retrieval import ALS, BPR, SelfAttentive, Transitions
from training.stack import fit_stack

SPEC = {
    "transitions": (Transitions, {}),
    "SASRec": (SelfAttentive, {"dim": 8, "max_len": 10, "epochs": 20, "batch_size": 256}),
    "BPR": (BPR, {"factors": 8, "iterations": 40}),
    "ALS": (ALS, {"factors": 8, "iterations": 20}),
}


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("full-fit")
    src = load_source("synthetic", synthetic_interactions=6_000, cache=root)
    write_dataset(run_local(src, PrepareConfig()), str(root / "ds"))
    return load_dataset(str(root / "ds"))


def test_auto_starts_warm_from_its_threshold_and_the_modes_are_what_they_say():
    assert not full_fit_is_warm("auto", WARM_FULL_FIT_INTERACTIONS - 1)
    assert full_fit_is_warm(FullFit.auto, WARM_FULL_FIT_INTERACTIONS)
    assert full_fit_is_warm("warm", 10) and not full_fit_is_warm("scratch", 10**9)
    with pytest.raises(ValueError):
        full_fit_is_warm("lukewarm", 10)


def test_a_warm_second_pass_starts_every_trainable_source_from_the_held_out_fit(ds):
    warm, emb = fit_stack(ds, Split.VALIDATION, progress=False, spec=SPEC, full_fit="warm")
    assert warm.sources["SASRec"].fit_info["warm_epochs"] == 1  # 5% of 20 epochs
    assert warm.sources["BPR"].fit_info == {"warm_iterations": 2}
    assert warm.sources["ALS"].fit_info == {"warm_iterations": 1}
    # auto: 6,000 interactions are far below the threshold, so from scratch.
    cold, _ = fit_stack(ds, Split.VALIDATION, progress=False, spec=SPEC, embeddings=emb)
    assert "warm_epochs" not in cold.sources["SASRec"].fit_info
    assert cold.sources["BPR"].fit_info is None and cold.sources["ALS"].fit_info is None
    # The warm stack ranks a user's candidates like any other.
    history = ds.sequences.items[ds.sequences.indptr[0] : ds.sequences.indptr[1]][:-2]
    assert len(warm.generator().generate(0, history, n=10).items) == 10
