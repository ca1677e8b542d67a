"""Differentially private fine-tuning of the re-ranker (`llmrec train --dp-epsilon E`):
DP-SGD with Opacus's optimizer, sampler and accountant, at the level of users.

- **One record per user.** Each user contributes exactly one training list (a seeded
  choice among theirs), so the example-level guarantee of DP-SGD is a user-level one.
- **Poisson sampling** (`UniformWithReplacementSampler`): every list joins a step with
  probability q = batch / users, the sampling the accountant's amplification assumes.
- **Per-example gradients by micro-batches.** Opacus's `GradSampleModule` computes them
  with hooks on supported layers and falls back to functorch for any module holding its
  own parameters; the ranker holds one (`lm_scale`) beside a buffer (`index_ids`), and the
  fallback refuses modules with buffers. Each example's gradient is therefore taken by its
  own backward pass and handed to Opacus's `DPOptimizer` as `grad_sample`, which clips
  each to `max_grad_norm`, sums, adds N(0, (sigma * max_grad_norm)^2) and divides by the
  expected batch: the library's own formulas (tested against a hand computation).
- **The accountant** (RDP) picks the smallest noise multiplier that keeps the planned
  steps within (epsilon, delta), and states the epsilon actually spent.

What it covers: the parameters this training changes (LoRA adapters, the feature layer and
the heads). The retrieval models whose scores are the ranker's features, and the validation
NDCG reported per epoch, are not private; the epochs are fixed and the last one is
published, so validation never chooses the released weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipelines.errors import LlmrecError
from training.reranker.examples import Row

ACCOUNTANT = "rdp"
#: Renyi orders the accountant searches: Opacus's defaults (up to 63) and higher ones, which
#: are the tightest at large epsilon over few steps
ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 128, 256, 512]


@dataclass(frozen=True)
class DpPlan:
    """The privacy side of a DP-SGD run, fixed before it starts."""

    target_epsilon: float
    delta: float
    max_grad_norm: float
    noise_multiplier: float
    sample_rate: float
    expected_batch: int
    steps_per_epoch: int
    epochs: int
    users: int
    #: epsilon the accountant gives for every planned step (<= target_epsilon)
    epsilon: float

    @property
    def steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DpPlan:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {
            "steps": self.steps,
            # a later stage that starts from this one adds its own (basic composition)
            "total_epsilon": self.epsilon,
            "total_delta": self.delta,
            "unit": "user",
            "examples_per_user": 1,
            "accountant": ACCOUNTANT,
            "mechanism": "DP-SGD (Opacus DPOptimizer), Poisson sampling",
            "covers": "the trained parameters (LoRA adapters, feature layer, heads); not the "
            "retrieval features the ranker reads, nor the per-epoch validation metrics",
        }


def one_per_user(rows: Sequence[Row], seed: int) -> list[Row]:
    """A seeded choice of one training list per user: what makes each DP-SGD record a user."""
    rng = np.random.default_rng(seed)
    by_user: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_user.setdefault(r.user, []).append(i)
    return [rows[ids[int(rng.integers(len(ids)))]] for _, ids in sorted(by_user.items())]


def spent_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(noise_multiplier, sample_rate, steps)]
    return float(acc.get_epsilon(delta, alphas=ALPHAS))


def plan_dp(
    users: int,
    epsilon: float,
    delta: float,
    max_grad_norm: float,
    batch: int,
    epochs: int,
) -> DpPlan:
    """The noise multiplier for `epochs` passes of Poisson-sampled steps over `users`
    records that stays within (epsilon, delta)."""
    from opacus.accountants.utils import get_noise_multiplier

    if users < 2:
        raise LlmrecError("DP training needs at least 2 users with a training example")
    if delta >= 1 / users:
        raise LlmrecError(
            f"dp_delta {delta:g} is not below 1/users ({1 / users:.2g}): such a delta lets "
            "a mechanism publish one user's data outright; lower --dp-delta"
        )
    batch = min(batch, users)
    q = batch / users
    steps_per_epoch = max(1, round(1 / q))
    sigma = get_noise_multiplier(
        target_epsilon=epsilon,
        target_delta=delta,
        sample_rate=q,
        steps=steps_per_epoch * epochs,
        accountant=ACCOUNTANT,
        alphas=ALPHAS,
    )
    eps = spent_epsilon(sigma, q, steps_per_epoch * epochs, delta)
    return DpPlan(
        epsilon, delta, max_grad_norm, sigma, q, batch, steps_per_epoch, epochs, users, eps
    )


def dp_optimizer(optimizer, plan: DpPlan, seed: int):
    """Opacus's DPOptimizer around `optimizer`: clipping, noise and scaling per step."""
    import torch
    from opacus.optimizers import DPOptimizer

    return DPOptimizer(
        optimizer,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=plan.max_grad_norm,
        expected_batch_size=plan.expected_batch,
        loss_reduction="mean",
        generator=torch.Generator().manual_seed(seed),
    )


def poisson_batches(n: int, plan: DpPlan, seed: int) -> list[list[int]]:
    """One epoch of Poisson-sampled index lists (some may be empty)."""
    import torch
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    sampler = UniformWithReplacementSampler(
        num_samples=n,
        sample_rate=plan.sample_rate,
        generator=torch.Generator().manual_seed(seed),
        steps=plan.steps_per_epoch,
    )
    return [list(b) for b in sampler]


def dp_step(opt, params: list, examples: Sequence[Any], loss_of: Callable[[Any], Any]) -> list:
    """One DP-SGD step over `examples` (possibly none): each example's gradient from its
    own backward pass becomes the `grad_sample` Opacus clips and noises. Returns the losses."""
    import torch

    per_param: list[list] = [[] for _ in params]
    losses = []
    for ex in examples:
        loss = loss_of(ex)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for acc, g, p in zip(per_param, grads, params, strict=True):
            acc.append(torch.zeros_like(p) if g is None else g.detach())
        losses.append(float(loss.detach()))
    for acc, p in zip(per_param, params, strict=True):
        p.grad_sample = torch.stack(acc) if acc else p.new_zeros((0, *p.shape))
    opt.step()
    opt.zero_grad(set_to_none=True)
    return losses


def composed(plan: DpPlan, earlier: dict[str, Any] | None, stage: str) -> dict[str, Any]:
    """The privacy record of a run that starts from an earlier DP run's parameters (the
    hybrid from its private feature layer): both touched the same users, so the budgets add
    up (basic composition: epsilons and deltas sum)."""
    out = plan.to_json() | {"stage": stage}
    if earlier is None:
        return out
    stages = earlier.get("stages") or [
        {k: earlier[k] for k in ("stage", "epsilon", "delta") if k in earlier}
    ]
    return out | {
        "total_epsilon": earlier["total_epsilon"] + plan.epsilon,
        "total_delta": earlier["total_delta"] + plan.delta,
        "stages": [*stages, {"stage": stage, "epsilon": plan.epsilon, "delta": plan.delta}],
        "composition": "basic (epsilons and deltas add up)",
    }
