"""How the re-ranker trains: the one definition `llmrec train`'s options, the job
entrypoints and the benchmarks read (a light module: the CLI imports it at start-up)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TrainSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(2, ge=1, le=1000)
    batch_size: int = Field(8, ge=1, le=4096)
    grad_accum: int = Field(1, ge=1, le=1024)
    lr_lora: float = Field(5e-4, gt=0, description="learning rate of the LoRA adapters")
    lr_heads: float = Field(
        1e-3, gt=0, description="learning rate of the feature layer and the scoring head"
    )
    weight_decay: float = Field(0.0, ge=0)
    holdout: int = Field(10, ge=1, le=50, description="training positions per user")
    insert_target: bool = Field(
        False,
        description="insert the true item when retrieval missed it; off by default: the "
        "inserted item's features give it away (measured in docs/BENCHMARKS.md)",
    )
    max_examples: int | None = Field(
        2400,
        ge=1,
        description="cap on the examples an LM trains on (the CPU default keeps it to "
        "minutes); the feature layer alone takes them all",
    )
    val_users: int | None = Field(
        400, ge=1, description="validation users per epoch when an LM trains (features: all)"
    )
    example_users: int | None = Field(
        20_000,
        ge=1,
        description="users the training and validation examples come from (a seeded sample "
        "when there are more): each example is a retrieval over the whole catalogue, so "
        "every user's examples would take days at a million users",
    )
    routing_users: int = Field(
        400,
        ge=0,
        description="validation users kept out of early stopping to measure, after training, "
        "where the LM pays (the routing table; never more than half of them; 0: no table, "
        "every request takes the LM)",
    )
    patience: int = Field(2, ge=1, description="epochs without improvement before stopping")
    max_steps_per_epoch: int | None = Field(None, ge=1)
    workers: int = Field(1, ge=1, description="Ray Train workers (DDP)")
    cpus_per_worker: int = Field(2, ge=1)
    use_gpu: bool = Field(False, description="one GPU per worker, bf16")
    bf16: bool = Field(True, description="bf16 autocast on GPUs")
    seed: int = 0
    init_features_from: str | None = Field(
        None, description="a trained re-ranker whose feature layer starts this one (hybrid)"
    )
    init_from: str | None = Field(
        None,
        description="a trained re-ranker (same mode, base model, template and sources) whose "
        "adapter and heads start this one: a warm start",
    )
    dp_epsilon: float | None = Field(
        None,
        gt=0,
        description="train with DP-SGD to user-level (epsilon, dp_delta): one example per "
        "user, per-example clipping and Gaussian noise (Opacus), fixed epochs, the last "
        "one published; one worker, from the pretrained base (docs/PRIVACY.md)",
    )
    dp_delta: float = Field(1e-5, gt=0, lt=1, description="delta of --dp-epsilon")
    dp_max_grad_norm: float = Field(
        1.0, gt=0, description="per-example gradient clipping norm under --dp-epsilon"
    )
    dp_batch_size: int = Field(
        64, ge=1, description="expected batch under --dp-epsilon (Poisson sampling of users)"
    )

    @model_validator(mode="after")
    def _dp_applies(self) -> TrainSettings:
        if self.dp_epsilon is None:
            return self
        if self.workers > 1:
            raise ValueError(
                "dp_epsilon (--dp-epsilon) trains on one worker: set workers (--workers) to 1"
            )
        if self.init_from:
            raise ValueError(
                "dp_epsilon trains from the pretrained base (and a feature layer trained with "
                "dp_epsilon): a warm start from another re-ranker would carry what it "
                "memorised (drop init_from)"
            )
        return self
