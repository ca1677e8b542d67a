"""DP-SGD for the re-ranker (`training.reranker.private_training`): the per-example
gradients handed to Opacus match its own hook-computed ones, the update is the library's
clip-sum-noise-divide, the noise has the calibrated spread, the plan's noise is the least
that meets the budget, and each user is one record."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.errors import LlmrecError
from training.reranker.examples import Row
from training.reranker.private_training import (
    DpPlan,
    composed,
    dp_optimizer,
    dp_step,
    one_per_user,
    plan_dp,
    poisson_batches,
    spent_epsilon,
)
from training.reranker.settings import TrainSettings


def _plan(sigma: float, clip: float, batch: int) -> DpPlan:
    return DpPlan(8.0, 1e-5, clip, sigma, 0.1, batch, 10, 1, 100, 8.0)


def _data(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g) * 3, torch.randint(0, 3, (n,), generator=g)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


def test_per_example_gradients_match_opacus_hooks():
    from opacus import GradSampleModule

    x, y = _data()
    model = _model()
    params = list(model.parameters())
    ours = []
    for i in range(len(x)):
        loss = torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        ours.append(torch.autograd.grad(loss, params))
    gsm = GradSampleModule(_model(), loss_reduction="sum")
    torch.nn.functional.cross_entropy(gsm(x), y, reduction="sum").backward()
    for j, p in enumerate(gsm.parameters()):
        assert torch.allclose(torch.stack([g[j] for g in ours]), p.grad_sample, atol=1e-6)


def test_a_step_is_clip_sum_divide_without_noise():
    x, y = _data()
    model = _model()
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    grads = []
    for i in range(len(x)):
        loss = torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads.append(torch.autograd.grad(loss, params))
    clip, batch = 0.5, 8
    expected = [torch.zeros_like(p) for p in params]
    for g in grads:
        norm = torch.sqrt(sum((t**2).sum() for t in g))
        assert norm > clip  # every example is clipped here: the test sees the clipping
        for e, t in zip(expected, g, strict=True):
            e += t * min(1.0, clip / (float(norm) + 1e-6))
    opt = dp_optimizer(torch.optim.SGD(params, lr=1.0), _plan(0.0, clip, batch), seed=0)

    def loss_of(i):
        return torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])

    losses = dp_step(opt, params, list(range(len(x))), loss_of)
    assert len(losses) == len(x)
    for p, b, e in zip(params, before, expected, strict=True):
        # SGD at lr 1: the parameter moved by exactly the clipped sum over the expected batch
        assert torch.allclose(b - p.detach(), e / batch, atol=1e-6)


def test_the_noise_has_the_calibrated_spread_even_on_an_empty_batch():
    layer = torch.nn.Linear(200, 50)
    params = list(layer.parameters())
    before = [p.detach().clone() for p in params]
    sigma, clip, batch = 2.0, 0.7, 16
    opt = dp_optimizer(torch.optim.SGD(params, lr=1.0), _plan(sigma, clip, batch), seed=3)
    dp_step(opt, params, [], lambda _: None)  # Poisson sampling can draw no one
    moved = torch.cat([(b - p.detach()).flatten() for p, b in zip(params, before, strict=True)])
    std = float(moved.std())
    assert std == pytest.approx(sigma * clip / batch, rel=0.05)
    assert abs(float(moved.mean())) < 4 * std / np.sqrt(moved.numel())


def test_the_plan_takes_the_least_noise_within_the_budget():
    plan = plan_dp(800, epsilon=8.0, delta=1e-5, max_grad_norm=1.0, batch=64, epochs=5)
    assert plan.sample_rate == pytest.approx(64 / 800)
    assert plan.steps == 5 * round(800 / 64)
    assert plan.epsilon <= 8.0 + 1e-9
    assert spent_epsilon(plan.noise_multiplier * 0.97, plan.sample_rate, plan.steps, 1e-5) > 8.0
    tighter = plan_dp(800, epsilon=1.0, delta=1e-5, max_grad_norm=1.0, batch=64, epochs=5)
    assert tighter.noise_multiplier > plan.noise_multiplier
    assert DpPlan.from_json(plan.to_json()) == plan
    assert plan.to_json()["unit"] == "user"


def test_a_delta_at_one_over_users_is_refused():
    with pytest.raises(LlmrecError, match="dp_delta"):
        plan_dp(1000, epsilon=8.0, delta=1e-3, max_grad_norm=1.0, batch=64, epochs=1)


def test_poisson_batches_cover_an_epoch_at_the_sample_rate():
    plan = plan_dp(1000, epsilon=8.0, delta=1e-5, max_grad_norm=1.0, batch=50, epochs=1)
    batches = poisson_batches(1000, plan, seed=0)
    assert len(batches) == 20
    sizes = np.array([len(b) for b in batches])
    assert 30 < sizes.mean() < 70 and len(set(sizes)) > 1  # random sizes, mean 50
    assert batches == poisson_batches(1000, plan, seed=0) != poisson_batches(1000, plan, 1)


def test_each_user_is_one_record():
    rows = [Row(u, np.array([1]), np.array([2, 3]), np.zeros((2, 1)), 0) for u in [3, 1, 3, 3, 2]]
    rows = [Row(r.user, r.history, r.candidates, r.features + i, 0) for i, r in enumerate(rows)]
    one = one_per_user(rows, seed=0)
    assert [r.user for r in one] == [1, 2, 3]
    assert [r.features[0, 0] for r in one] == [r.features[0, 0] for r in one_per_user(rows, 0)]
    assert {float(r.features[0, 0]) for s in range(20) for r in one_per_user(rows, s)} >= {
        0.0,
        2.0,
        3.0,
    }


def test_settings_refuse_what_would_break_the_guarantee():
    with pytest.raises(ValueError, match="one worker"):
        TrainSettings(dp_epsilon=8, workers=2)
    with pytest.raises(ValueError, match="drop init_from"):
        TrainSettings(dp_epsilon=8, init_from="x")
    assert TrainSettings(dp_epsilon=8).dp_delta == 1e-5


def test_a_stage_started_from_a_private_one_adds_its_budget():
    first = plan_dp(800, epsilon=4.0, delta=5e-6, max_grad_norm=1.0, batch=64, epochs=20)
    second = plan_dp(800, epsilon=4.0, delta=5e-6, max_grad_norm=1.0, batch=64, epochs=2)
    alone = composed(first, None, "features")
    assert alone["total_epsilon"] == first.epsilon and alone["stage"] == "features"
    both = composed(second, alone, "hybrid")
    assert both["total_epsilon"] == pytest.approx(first.epsilon + second.epsilon)
    assert both["total_delta"] == pytest.approx(1e-5) and both["total_epsilon"] <= 8.0
    assert [s["stage"] for s in both["stages"]] == ["features", "hybrid"]
