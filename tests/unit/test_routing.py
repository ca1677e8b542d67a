"""The routing table: which history lengths the LM re-ranks, decided from measurements."""

from __future__ import annotations

import numpy as np
import pytest

from training.reranker.routing import (
    FeatureLayer,
    Gain,
    RoutingTable,
    decide,
    describe,
    request_stage,
    routing_table,
)


def gain(mean: float, low: float, high: float) -> Gain:
    return Gain(mean=mean, low=low, high=high, p=0.5)


def test_the_lm_is_chosen_only_when_its_gain_is_shown():
    assert decide(gain(0.02, 0.001, 0.04), gain(0.01, -0.01, 0.03))[0] == "lm"
    route, why = decide(gain(0.02, -0.001, 0.04), gain(0.01, -0.01, 0.03))
    assert route == "features" and "not shown" in why
    # A feature layer that loses to retrieval order hands the slice back to retrieval.
    assert decide(gain(0.0, -0.01, 0.01), gain(-0.03, -0.05, -0.01))[0] == "retrieval"
    # ...unless the LM on top of it pays.
    assert decide(gain(0.05, 0.02, 0.08), gain(-0.03, -0.05, -0.01))[0] == "lm"
    assert decide(None, None) == ("features", "too few users measured to show the LM pays")


def test_slices_by_history_length_route_where_the_measurements_say():
    rng = np.random.default_rng(0)
    n = 600
    lengths = np.repeat([2, 10, 30], n // 3)
    fused = rng.random(n) * 0.5
    features = fused + 0.05
    lm = features.copy()
    lm[lengths == 2] += 0.1  # the LM pays for short histories only
    features[lengths == 30] = fused[lengths == 30] - 0.2  # and the layer fails the longest
    lm[lengths == 30] = features[lengths == 30]
    table = routing_table(
        lengths, {"fused": fused, "features": features, "lm": lm}, "test", edges=(1, 5, 20)
    )
    assert [s.route for s in table.slices] == ["lm", "features", "retrieval"]
    assert [s.users for s in table.slices] == [200, 200, 200]
    assert [s.label for s in table.slices] == ["1-4", "5-19", "20+"]
    assert (
        table.route(3) == "lm" and table.route(7) == "features" and table.route(500) == "retrieval"
    )
    assert table.route(0) == "lm"  # shorter than every slice: as without a table
    assert table.slices[0].ndcg10["lm"] == pytest.approx(lm[:200].mean())
    assert describe(table)[1]["route"] == "features"


def test_serving_and_the_cold_protocols_route_a_request_by_one_rule():
    v = np.linspace(0, 1, 60)
    lengths = np.repeat([1, 30], 30)
    lm = v + np.where(lengths == 1, 0.2, 0.0)  # the LM pays for one-event histories only
    table = routing_table(lengths, {"fused": v, "features": v, "lm": lm}, "test", edges=(1, 2))
    assert request_stage(table, "sparse", 1) == "lm"
    assert request_stage(table, "warm", 30) == "features"
    assert request_stage(table, "cold_start", 0) is None  # never re-ranked, table or not
    assert request_stage(None, "cold_start", 0) is None
    assert request_stage(None, "warm", 30) == "lm"  # no table: every request to the LM


def test_an_empty_slice_takes_the_cheaper_stage():
    n = 50
    v = np.linspace(0, 1, n)
    table = routing_table(np.full(n, 3), {"fused": v, "features": v, "lm": v}, "test", edges=(1, 5))
    assert table.slices[1].users == 0 and table.slices[1].route == "features"
    assert table.slices[1].lm_vs_features is None


def test_every_order_is_needed():
    with pytest.raises(ValueError, match="missing"):
        routing_table(np.ones(3), {"fused": np.ones(3)}, "test")


def test_the_table_round_trips_through_the_reranker_folder(tmp_path):
    assert RoutingTable.load(tmp_path) is None and RoutingTable.load(None) is None
    n = 40
    v = np.linspace(0, 1, n)
    table = routing_table(np.arange(n), {"fused": v, "features": v, "lm": v + 0.1}, "test")
    table.save(tmp_path)
    assert RoutingTable.load(tmp_path) == table


def test_ndcg_of_one_held_out_item():
    """What the table's slices average: NDCG@10 of one target at each rank (past 10: 0)."""
    from training.evaluation.metrics import metrics_from_ranks

    ranks = np.array([1, 3, 10, 11, 99])
    assert metrics_from_ranks(ranks)["NDCG@10"] == pytest.approx(
        [1.0, 0.5, 1 / np.log2(11), 0.0, 0.0]
    )


def test_the_numpy_feature_layer_is_the_trained_one(tmp_path):
    """Serving ranks a `features` slice in numpy: the same numbers as the torch module."""
    import torch

    from training.reranker.model import RerankerConfig, build_model

    torch.manual_seed(0)
    model = build_model(RerankerConfig(mode="features", feature_hidden=16), None, 7)
    x = np.random.default_rng(1).normal(size=(20, 7)).astype(np.float32)
    with torch.no_grad():
        want = model.features(torch.from_numpy(x)).squeeze(-1).numpy()
    layer = FeatureLayer.from_state(model.state_dict())
    assert layer.score(x) == pytest.approx(want, abs=1e-5)
    torch.save(model.state_dict(), tmp_path / "heads.pt")
    assert FeatureLayer.load(tmp_path).score(x) == pytest.approx(want, abs=1e-5)


def test_a_model_version_records_its_routes(tmp_path):
    from training.publish import routes

    assert routes(tmp_path / "none") is None and routes(tmp_path) is None
    v = np.linspace(0, 1, 40)
    lengths = np.r_[np.full(20, 2), np.full(20, 30)]
    routing_table(lengths, {"fused": v, "features": v, "lm": v}, "test").save(tmp_path)
    # The sparse path's lengths are a slice each, so a sign-up's route is set per event.
    assert routes(tmp_path) == {
        "1": "features",
        "2": "features",
        "3": "features",
        "4": "features",
        "5-19": "features",
        "20-49": "features",
        "50-99": "features",
        "100+": "features",
    }
