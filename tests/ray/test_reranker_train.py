"""Ray Train fine-tuning of the re-ranker on a real local Ray cluster: loss goes down, the
checkpoint round-trips, a re-run resumes, 2 DDP workers give the same shapes as 1, and the
offline MiniLM trains through the same path."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.artifact import load_dataset, write_dataset
from pipelines.prepare import PrepareConfig, run_local
from pipelines.sources import load_source
from tests.tiny_models import tiny_causal
from training.reranker.evaluate import rerank_ranks
from training.reranker.model import RerankerConfig, load_reranker
from training.reranker.prepared import prepare_examples
from training.reranker.prompt import PromptTemplate
from training.reranker.routing import SPARSE_LENGTHS, RoutingTable
from training.reranker.train import TrainSettings, train_reranker

pytestmark = pytest.mark.ray

TEMPLATE = PromptTemplate(candidates=8, history_items=5, item_tokens=6)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rr")
    src = load_source("synthetic", synthetic_interactions=4000, seed=3, cache=root / "cache")
    write_dataset(run_local(src, PrepareConfig()), str(root / "ds"))
    ds = load_dataset(str(root / "ds"))
    settings = TrainSettings(
        holdout=2, insert_target=True, max_examples=64, val_users=40, epochs=3, batch_size=8
    )
    cfg = RerankerConfig(template=TEMPLATE, mode="hybrid")
    prepared = prepare_examples(ds, cfg, settings, progress=False)
    causal = tiny_causal(root / "causal", prepared.item_texts)
    return root, ds, prepared, settings, cfg.model_copy(update={"base_model": str(causal)})


def test_examples_come_from_at_most_example_users_users(setup):
    _, ds, prepared, settings, _ = setup
    cfg = RerankerConfig(template=TEMPLATE, mode="hybrid")
    few = prepare_examples(
        ds, cfg, settings.model_copy(update={"example_users": 25}), progress=False
    )
    # Half of a hybrid's validation users (at most `routing_users`) are kept back from early
    # stopping to measure the routing table, each with the whole history and replayed at
    # each sparse length.
    assert len({r.user for r in few.train}) <= 25
    assert few.val_total + len({r.user for r in few.routing if r.user is not None}) == 25
    assert {r.user for r in few.train} <= {r.user for r in prepared.train}
    routed = {r.user for r in prepared.routing if r.user is not None}
    assert prepared.val_total + len(routed) == ds.manifest.n_users > 25  # every user here
    assert len(routed) == ds.manifest.n_users // 2 and routed.isdisjoint(prepared.val_ids)
    # Each kept-back user's whole history, then a replay at each sparse length it reaches.
    pairs = zip(prepared.routing, prepared.routing_lengths, strict=True)
    whole = [n for r, n in pairs if r.user is not None]
    assert len(whole) == len(routed)
    replays = sum(1 + sum(k <= n for k in SPARSE_LENGTHS) for n in whole)
    assert len(prepared.routing) == len(prepared.routing_lengths) == replays
    assert set(SPARSE_LENGTHS) <= set(prepared.routing_lengths)
    assert min(prepared.routing_lengths) >= 1 and max(prepared.routing_lengths) > 4
    features = prepare_examples(
        ds, cfg.model_copy(update={"mode": "features"}), settings, progress=False
    )
    assert not features.routing and features.val_total == ds.manifest.n_users


def test_loss_goes_down_and_the_checkpoint_round_trips(ray_cluster, setup):
    root, _, prepared, settings, cfg = setup
    assert len(prepared.train) > 64 and prepared.val
    res = train_reranker(prepared, cfg, settings, root / "out", root / "runs", "loss")
    assert res.history[0]["examples"] == 64  # the LM's cap
    losses = [h["train_loss"] for h in res.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    _, meta, info = load_reranker(res.path)
    assert info.kind == "causal" and meta["base_fingerprint"] == info.fingerprint
    assert not (root / "out" / "train_state.pt").exists()  # adapter + heads only
    ranks, _ = rerank_ranks(res.path, prepared.val, prepared.item_texts, miss=99)
    assert ranks.min() >= 1 and ranks.max() <= TEMPLATE.candidates


def test_a_rerun_with_the_same_name_resumes(ray_cluster, setup):
    root, _, prepared, settings, cfg = setup
    one = settings.model_copy(update={"epochs": 1})
    first = train_reranker(prepared, cfg, one, root / "r1", root / "runs", "resume")
    assert [h["epoch"] for h in first.history] == [0]
    two = settings.model_copy(update={"epochs": 2, "patience": 5})
    second = train_reranker(prepared, cfg, two, root / "r2", root / "runs", "resume")
    epochs = [h["epoch"] for h in second.history]
    # Epoch 0 came from the first run's checkpoint, not from training it again.
    assert epochs[0] == 0 and second.history[0] == first.history[0]
    assert max(epochs) <= 1
    from training.reranker.train import RerankerError

    # Another LoRA shape under the same name is refused on the driver, not in a worker.
    other = cfg.model_copy(update={"lora_r": cfg.lora_r * 2})
    with pytest.raises(RerankerError, match="differs in lora_r"):
        train_reranker(prepared, other, two, root / "r3", root / "runs", "resume")
    assert not (root / "r3").exists()


def test_two_workers_give_the_same_shapes_as_one(ray_cluster, setup):
    root, _, prepared, settings, cfg = setup
    s1 = settings.model_copy(update={"epochs": 1, "cpus_per_worker": 1})
    s2 = s1.model_copy(update={"workers": 2})
    one = train_reranker(prepared, cfg, s1, root / "w1", root / "runs", "w1")
    two = train_reranker(prepared, cfg, s2, root / "w2", root / "runs", "w2")
    assert one.history[0]["examples"] == two.history[0]["examples"] == 64
    a, _, _ = load_reranker(one.path)
    b, _, _ = load_reranker(two.path)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(sa[k].shape == sb[k].shape for k in sa)
    ra, _ = rerank_ranks(one.path, prepared.val, prepared.item_texts, miss=99)
    rb, _ = rerank_ranks(two.path, prepared.val, prepared.item_texts, miss=99)
    assert ra.shape == rb.shape


def test_the_offline_minilm_trains_through_the_same_path(ray_cluster, setup):
    root, _, prepared, settings, cfg = setup
    minilm = cfg.model_copy(update={"base_model": None})
    s = settings.model_copy(update={"epochs": 1, "max_steps_per_epoch": 2})
    res = train_reranker(prepared, minilm, s, root / "minilm", root / "runs", "minilm")
    _, meta, info = load_reranker(res.path)
    assert info.kind == "encoder" and meta["model_type"] == "bert"
    assert res.history[0]["examples"] == 16
    ranks, _ = rerank_ranks(res.path, prepared.val, prepared.item_texts, miss=99)
    assert np.all(ranks >= 1)


def test_the_hybrid_starts_from_a_trained_feature_layer(ray_cluster, setup):
    """The warm start travels to the workers inside the run's config (workers on other nodes
    cannot read the driver's folders): with a near-zero head learning rate the hybrid ends
    with the feature layer it started from."""
    import torch

    root, _, prepared, settings, cfg = setup
    one = settings.model_copy(update={"epochs": 1, "max_steps_per_epoch": 2})
    features = cfg.model_copy(update={"mode": "features"})
    whole = settings.model_copy(update={"epochs": 1})
    warm = train_reranker(prepared, features, whole, root / "f", root / "runs", "f")
    # The feature layer alone is not held to the LM's cap.
    assert warm.history[0]["examples"] == len(prepared.train) > settings.max_examples
    start = {
        k: v
        for k, v in torch.load(root / "f" / "heads.pt", weights_only=True).items()
        if k.startswith("features.")
    }
    assert start
    frozen = one.model_copy(update={"init_features_from": warm.path, "lr_heads": 1e-12})
    hybrid = train_reranker(prepared, cfg, frozen, root / "h", root / "runs", "h")
    heads = torch.load(root / "h" / "heads.pt", weights_only=True)
    for k, v in start.items():
        assert torch.allclose(heads[k], v, atol=1e-6), k
    assert hybrid.history
    # The hybrid measured where its LM pays, on the users kept back; the layer alone did not.
    table = RoutingTable.load(hybrid.path)
    assert RoutingTable.load(warm.path) is None
    assert sum(s.users for s in table.slices) == len(prepared.routing)
    assert {s.route for s in table.slices} <= {"lm", "features", "retrieval"}


def test_a_warm_start_begins_from_a_trained_adapter_and_heads(ray_cluster, setup):
    """`init_from` (what `llmrec retrain` passes): the run starts from another re-ranker's
    adapter and heads, sent inside the run's config; with near-zero learning rates it ends
    where it started. Another mode is refused before any training."""
    import torch
    from safetensors.torch import load_file

    from training.reranker.train import RerankerError

    root, _, prepared, settings, cfg = setup
    quick = settings.model_copy(update={"epochs": 1, "max_steps_per_epoch": 2})
    live = train_reranker(prepared, cfg, quick, root / "live", root / "runs", "live")
    still = quick.model_copy(
        update={"init_from": live.path, "lr_heads": 1e-12, "lr_lora": 1e-12, "seed": 7}
    )
    warm = train_reranker(prepared, cfg, still, root / "warm", root / "runs", "warm")
    for name in ("heads.pt",):
        a = torch.load(root / "live" / name, weights_only=True)
        b = torch.load(root / "warm" / name, weights_only=True)
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    (adapter,) = (root / "live" / "adapter").glob("*.safetensors")
    a, b = load_file(adapter), load_file(root / "warm" / "adapter" / adapter.name)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert warm.history
    features = cfg.model_copy(update={"mode": "features"})
    with pytest.raises(RerankerError, match=r"cannot (warm-)?start from it"):
        train_reranker(prepared, features, still, root / "x", root / "runs", "x")


@pytest.mark.timeout(240)
def test_workers_that_hold_every_cpu_still_get_their_examples(ray_cluster, setup):
    """On a 2-core machine `--workers 2 --cpus-per-worker 1` leaves no CPU for Ray Data's
    tasks; the examples are built before the workers start, so training does not wait
    forever (it did). Here the workers take every CPU the test cluster has free."""
    root, _, prepared, settings, cfg = setup
    free = int(ray_cluster.available_resources().get("CPU", 0))
    assert 2 <= free <= 4, f"the test cluster should have 2-4 free CPUs, has {free}"
    s = settings.model_copy(
        update={"epochs": 1, "workers": free, "cpus_per_worker": 1, "max_steps_per_epoch": 1}
    )
    res = train_reranker(prepared, cfg, s, root / "all", root / "runs", "all-cpus")
    assert res.history[0]["examples"] > 0


def test_dp_training_releases_its_last_epoch_with_the_budget_it_spent(
    ray_cluster, setup, monkeypatch
):
    """`dp_epsilon`: one list per user, Poisson-sampled DP-SGD steps, every epoch run (no
    early stopping) and the last one released, the plan recorded with the weights; the
    hybrid's feature layer trains privately first, each stage on half the budget, and the
    record adds them up. A non-private feature layer is refused as a start."""
    import json

    from training.reranker import recipe
    from training.reranker.recipe import train_recipe
    from training.reranker.train import RerankerError

    monkeypatch.setattr(recipe, "DP_FEATURE_EPOCHS", 2)  # 20 by default: a minute more here
    root, _, prepared, settings, cfg = setup
    dp = settings.model_copy(
        update={"dp_epsilon": 8.0, "dp_batch_size": 16, "epochs": 3, "patience": 1}
    )
    res = train_recipe(prepared, cfg, dp, root / "dp", str(root / "runs"), "dp")
    assert [h["epoch"] for h in res.history] == [0, 1, 2]
    meta = json.loads((root / "dp" / "reranker.json").read_text())
    assert meta["metrics"]["epoch"] == 2
    plan = meta["privacy"]
    users = len({r.user for r in prepared.train})
    assert plan["users"] == min(users, settings.max_examples) and plan["unit"] == "user"
    assert 0 < plan["epsilon"] <= 4.0 and plan["noise_multiplier"] > 0.3
    assert plan["steps"] == 3 * plan["steps_per_epoch"]
    features = json.loads((root / "dp-features" / "reranker.json").read_text())["privacy"]
    assert features["users"] == users and features["epsilon"] <= 4.0
    assert [s["stage"] for s in plan["stages"]] == ["features", "hybrid"]
    assert plan["total_epsilon"] == pytest.approx(features["epsilon"] + plan["epsilon"])
    assert plan["total_epsilon"] <= 8.0 and plan["total_delta"] <= dp.dp_delta
    # Poisson sampling: each epoch sees about one pass over the users, not a fixed count
    seen = [h["examples"] for h in res.history]
    assert all(0.4 * plan["users"] < n < 1.6 * plan["users"] for n in seen)
    ranks, _ = rerank_ranks(res.path, prepared.val, prepared.item_texts, miss=99)
    assert ranks.min() >= 1
    plain = settings.model_copy(update={"epochs": 1, "max_steps_per_epoch": 1})
    features_cfg = cfg.model_copy(update={"mode": "features"})
    public = train_reranker(prepared, features_cfg, plain, root / "pub", root / "runs", "pub")
    leaky = dp.model_copy(update={"init_features_from": public.path})
    with pytest.raises(RerankerError, match="without differential privacy"):
        train_reranker(prepared, cfg, leaky, root / "x", root / "runs", "leaky")


def test_a_reranker_trained_before_the_new_item_cutoff_reorders_the_new_item_cases(
    ray_cluster, setup
):
    """`llmrec train --new-items-cutoff`'s examples never name a new item as the answer
    (it would have seen them), the re-ranker records the view it was trained on, and the
    new-item protocol ranks with it: its rows beside the system's, with their cost."""
    from training.evaluation.cold_rerank import cutoff_version, prepare_before_cutoff
    from training.evaluation.new_items import fit_and_evaluate, new_item_cases
    from training.retrieval import ALS, Transitions

    root, _, _, settings, cfg = setup
    # Synthetic users start at random times: 20,000 interactions leave 72 items first seen
    # after the 10% cutoff, 308 cases, and 1,427 interactions before it to train on.
    src = load_source("synthetic", synthetic_interactions=20_000, seed=3, cache=root / "c20k")
    write_dataset(run_local(src, PrepareConfig()), str(root / "ds20k"))
    ds = load_dataset(str(root / "ds20k"))
    spec = {"transitions": (Transitions, {"window": 3}), "ALS": (ALS, {"factors": 8})}
    features = cfg.model_copy(update={"mode": "features"})
    prepared = prepare_before_cutoff(ds, features, settings, 0.1, progress=False, spec=spec)
    assert prepared.dataset_version == cutoff_version(ds, 0.1) != ds.manifest.version
    cases = new_item_cases(ds, 0.1)
    answers = [r.candidates[r.label] for r in prepared.train + prepared.val if r.label >= 0]
    assert len(answers) > 30 and not cases.new[answers].any() and cases.new.any()
    res = train_reranker(prepared, features, settings, root / "cut", root / "runs", "cut")
    report = fit_and_evaluate(
        ds, spec, 0.1, resamples=100, progress=False, rerankers={"rr": str(res.path)}
    )
    row, system = report["models"]["system + rr"], report["models"]["system (fused candidates)"]
    # It reorders the head of the same candidates: nothing enters or leaves the 50.
    assert row["Recall@50"]["mean"] == system["Recall@50"]["mean"]
    assert 0 <= row["new_share@10"] <= 1 and report["list_ms_per_case"]["system + rr"] > 0


def test_a_reranker_trained_without_the_new_users_reorders_their_sign_ups(ray_cluster, setup):
    """`llmrec train --without-new-users` never sees a held-out user (no example, validation
    or routing row is theirs), records the view it was trained on, and the new-user protocol
    ranks with it: its rows and its feature layer's beside the system's, paired, with cost."""
    from training.evaluation.cold_rerank import prepare_without_new_users, without_users_version
    from training.evaluation.new_users import fit_and_evaluate, new_user_cases
    from training.retrieval import ALS, Transitions

    root, ds, _, settings, cfg = setup
    spec = {"transitions": (Transitions, {"window": 3}), "ALS": (ALS, {"factors": 8})}
    prepared = prepare_without_new_users(ds, cfg, settings, progress=False, spec=spec)
    assert prepared.dataset_version == without_users_version(ds) != ds.manifest.version
    held = set(new_user_cases(ds).users.tolist())
    rows = prepared.train + prepared.val + prepared.routing
    seen = {r.user for r in rows if r.user is not None}
    assert held and len(seen) > 20 and seen.isdisjoint(held)
    one = settings.model_copy(update={"epochs": 1})
    res = train_reranker(prepared, cfg, one, root / "nu", root / "runs", "without-new-users")
    report = fit_and_evaluate(
        ds, spec, resamples=100, progress=False, rerankers={"rr": str(res.path)}
    )
    recall = {(r["list"], r["events"], r["attributes"]): r["Recall@50"] for r in report["rows"]}
    alone = "system + rr (feature layer alone)"
    for (name, events, stated), m in recall.items():
        if name in ("system + rr", alone):  # the head reordered: the same 50 candidates
            system = recall[("system (50 candidates)", events, stated)]
            assert m["mean"] == system["mean"]
    assert {"system + rr", alone} <= {name for name, _, _ in recall}
    assert ("system + rr", alone) in {(p["a"], p["b"]) for p in report["paired_ndcg10"]}
    assert report["list_ms_per_case"]["system + rr"] > 0
    # As serving follows the routing table: a cold start keeps the system's order, every
    # other length the order of the stage its slice names.
    routed, table = "system + rr (as routed)", RoutingTable.load(res.path)
    assert (routed, alone) in {(p["a"], p["b"]) for p in report["paired_ndcg10"]}
    ndcg = {(r["list"], r["events"], r["attributes"]): r["NDCG@10"] for r in report["rows"]}
    by_route = {"lm": "system + rr", "features": alone, "retrieval": "system (50 candidates)"}
    for events in report["lengths"]:
        want = by_route[table.route(events)] if events else "system (50 candidates)"
        for stated in (False, True):
            assert ndcg[(routed, events, stated)]["mean"] == ndcg[(want, events, stated)]["mean"]
