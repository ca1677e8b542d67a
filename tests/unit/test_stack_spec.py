"""One stack definition: what `llmrec eval` chose is what fit, train and publish fit, and the
fitted stack records it."""

from __future__ import annotations

import json

import pytest

from pipelines.errors import ArtifactError
from training.retrieval import ItemKNN, Transitions
from training.retrieval.base import RetrievalError
from training.stack import (
    DEFAULT_SOURCES,
    load_spec,
    spec_from_eval,
    spec_from_json,
    spec_to_json,
)


def test_a_spec_round_trips_through_json():
    assert spec_from_json(json.loads(json.dumps(spec_to_json(DEFAULT_SOURCES)))) == DEFAULT_SOURCES


def test_a_bad_spec_is_refused_before_any_fit():
    with pytest.raises(ArtifactError, match="unknown kind"):
        spec_from_json({"x": {"kind": "nope", "params": {}}})
    with pytest.raises(RetrievalError, match="unknown parameter"):
        spec_from_json({"x": {"kind": Transitions.kind, "params": {"windw": 3}}})


def test_the_evaluation_report_chooses_the_parameters():
    report = {
        "models": {
            "item-kNN BM25": {"params": {"neighbours": 400}},
            "transitions": {"params": {"window": 1, "recent": 5}},
            "most popular": {"params": {}},  # a baseline, not a source of the stack
        }
    }
    spec = spec_from_eval(report)
    assert list(spec) == list(DEFAULT_SOURCES)
    assert spec["item-kNN BM25"] == (ItemKNN, {"similarity": "bm25", "neighbours": 400})
    assert spec["transitions"][1]["window"] == 1 and spec["transitions"][1]["recent"] == 5
    assert spec["ALS"] == DEFAULT_SOURCES["ALS"]  # not in the report: unchanged


def test_load_spec_reads_a_spec_file_or_an_eval_report(tmp_path):
    assert load_spec(None) is DEFAULT_SOURCES
    chosen = spec_from_eval({"models": {"BPR": {"params": {"factors": 32}}}})
    (tmp_path / "stack-spec.json").write_text(json.dumps({"sources": spec_to_json(chosen)}))
    assert load_spec(tmp_path / "stack-spec.json") == chosen
    (tmp_path / "eval.json").write_text(
        json.dumps({"models": {"BPR": {"params": {"factors": 32}}}})
    )
    assert load_spec(tmp_path / "eval.json") == chosen
    with pytest.raises(ArtifactError, match="no stack spec"):
        load_spec(tmp_path / "missing.json")


def test_the_published_stack_records_the_spec_it_was_fitted_from(published):
    from tests.serving_setup import TEST_SOURCES
    from training.publish import load_version
    from training.retrieval import SegmentPopular
    from training.stack import COVISIT_ENTRY, SEGMENT_ENTRY, source_spec

    _, models = published
    stack = json.loads((load_version(models).path / "stack" / "stack.json").read_text())
    recorded = spec_from_json(stack["spec"])
    assert source_spec(recorded) == {
        n: (k, {**k.default_params(), **p}) for n, (k, p) in TEST_SOURCES.items()
    }
    assert recorded[SEGMENT_ENTRY] == (SegmentPopular, SegmentPopular.default_params())
    # A stack with SASRec makes no "also watched" release: SASRec and content rank
    # similar items, and the version spends only the segment release.
    assert COVISIT_ENTRY not in recorded and stack["covisit_release"] is None
    version = json.loads((load_version(models).path / "version.json").read_text())
    assert version["covisit_privacy"] is None
    total = version["aggregates_privacy"]
    assert list(total["releases"]) == ["segment popularity"] and total["epsilon"] == 8.0


def test_a_segment_popular_entry_configures_the_segment_release_not_a_source():
    """`{"kind": "segment_popular", "params": {"epsilon": 2, ...}}` in a stack spec sets the
    cold-start counts' privacy: the stack's segment model takes it, no source is fitted."""
    import numpy as np

    from training.retrieval import SegmentPopular
    from training.stack import segment_params, source_spec, stack_from_data

    spec = spec_from_json(
        {
            "transitions": {"kind": "transitions", "params": {}},
            "segments": {"kind": "segment_popular", "params": {"epsilon": 2.0, "min_users": 3}},
        }
    )
    assert list(source_spec(spec)) == ["transitions"]
    assert segment_params(spec) == {"epsilon": 2.0, "min_users": 3}
    assert segment_params(None) == {} and "segments" not in source_spec(None)
    from tests.fit_data import fit_data

    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(60), 8)
    items = rng.integers(0, 30, len(users))
    data = fit_data(users, items, {"gender": (np.arange(60) % 2).astype(np.int64)}, 30)
    stack = stack_from_data(data, None, np.zeros((30, 4), np.float32), "train", False, spec)
    assert list(stack.sources) == ["transitions"] and isinstance(stack.segment, SegmentPopular)
    release = stack.segment.fit_info["privacy"]
    assert release["epsilon"] == 2.0 and release["min_users"] == 3
    double = {**spec, "more": (SegmentPopular, {})}
    with pytest.raises(ArtifactError, match="more than one"):
        segment_params(double)


def test_the_fallback_list_ranks_by_the_released_first_items_counts(tmp_path):
    """Serving's last-resort popularity list: the segment model's private first-items
    histogram (what the cold-start list shows), exact counts only without such a model."""
    import numpy as np

    from tests.fit_data import fit_data
    from training.retrieval import MostPopular, SegmentPopular
    from training.stack import fallback_popularity

    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(80), 30)
    items = rng.integers(0, 40, len(users))
    data = fit_data(users, items, {"gender": (np.arange(80) % 2).astype(np.int64)}, 40)
    MostPopular().fit(data).save(tmp_path / "popularity")
    exact = fallback_popularity(tmp_path)
    assert np.array_equal(exact, np.bincount(items, minlength=40))
    seg = SegmentPopular(seed=0).fit(data)
    seg.save(tmp_path / "segment")
    released = fallback_popularity(tmp_path)
    assert np.allclose(released, seg.overall) and not np.allclose(released, exact / exact.sum())
    SegmentPopular(max_items_per_user=None, epsilon=None).fit(data).save(tmp_path / "segment")
    assert np.array_equal(fallback_popularity(tmp_path), exact)


def test_a_private_covisits_entry_configures_the_similar_items_release(tmp_path):
    """`{"kind": "private_covisits", ...}` sets the "also watched" release's privacy; the
    stack saves and loads it, and stack.json records what it spent."""
    import numpy as np

    from tests.fit_data import fit_data
    from training.retrieval import PrivateCoVisits
    from training.stack import RetrievalStack, covisit_params, source_spec, stack_from_data

    spec = spec_from_json(
        {
            "transitions": {"kind": "transitions", "params": {}},
            "pairs": {"kind": "private_covisits", "params": {"epsilon": 1.0}},
        }
    )
    assert list(source_spec(spec)) == ["transitions"]
    assert covisit_params(spec) == {"epsilon": 1.0}
    # Without an entry: a release only where no SASRec source ranks similar items.
    assert covisit_params(None) is None
    sasrec = spec_from_json({"s": {"kind": "sasrec", "params": {}}})
    assert covisit_params(sasrec) is None
    assert covisit_params(spec_from_json({"t": {"kind": "transitions"}})) == {}
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(60), 8)
    data = fit_data(users, rng.integers(0, 30, len(users)), {}, 30)
    stack = stack_from_data(data, None, np.zeros((30, 4), np.float32), "train", False, spec)
    assert stack.covisits.fit_info["epsilon"] == 1.0
    assert list(stack.similar_models()) == ["also watched"]  # transitions counts: never
    stack.save(tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "stack.json").read_text())
    assert meta["covisit_release"] == stack.covisits.fit_info
    loaded = RetrievalStack.load(tmp_path / "s")
    assert isinstance(loaded.covisits, PrivateCoVisits)
    assert (loaded.covisits.matrix != stack.covisits.matrix).nnz == 0
    # A stack saved before the release, without SASRec: its count-based sources.
    loaded.covisits = None
    assert list(loaded.similar_models()) == ["transitions"]
    with pytest.raises(ArtifactError, match="more than one"):
        covisit_params({**spec, "more": (PrivateCoVisits, {})})
