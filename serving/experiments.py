"""A/B experiments: named variants with traffic shares, assigned by a salted hash of the user
id (deterministic, so a user stays in one variant across requests and replicas).

A variant changes live settings for the requests of its users: the model version that serves
them, the number of retrieval candidates, the re-ranker on or off, the latency budget, the
nearline cache. It lives in the Serve config's `experiment:` setting,
so starting, changing or ending an experiment is a `serve deploy` of the config."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: the live settings a variant may change (each is read per request by the Api)
VARIANT_SETTINGS = ("version", "candidates", "rerank", "routing", "deadline_ms", "cache")


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    share: float = Field(gt=0, le=1, description="fraction of users")
    settings: dict[str, Any] = Field(default_factory=dict)

    @field_validator("settings")
    @classmethod
    def _known(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(set(v) - set(VARIANT_SETTINGS))
        if bad:
            raise ValueError(f"a variant may set {', '.join(VARIANT_SETTINGS)}; not {bad}")
        return v


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    salt: str = Field(min_length=1, description="change it to reshuffle users")
    variants: list[Variant] = Field(min_length=2)

    @model_validator(mode="after")
    def _shares(self) -> Experiment:
        total = sum(v.share for v in self.variants)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"variant shares must add up to 1, not {total:g}")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique: {names}")
        return self

    def versions(self) -> set[str]:
        """The model versions the variants name besides the base one."""
        return {v.settings["version"] for v in self.variants if "version" in v.settings}

    @property
    def control(self) -> Variant:
        """The first variant: the one every other is compared with."""
        return self.variants[0]


def bucket(salt: str, user_id: str) -> float:
    """A uniform number in [0, 1) fixed by (salt, user id)."""
    digest = hmac.new(salt.encode(), user_id.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(experiment: Experiment, user_id: str) -> Variant:
    u = bucket(f"{experiment.name}:{experiment.salt}", user_id)
    edge = 0.0
    for v in experiment.variants:
        edge += v.share
        if u < edge:
            return v
    return experiment.variants[-1]  # u within rounding of 1.0


@dataclass(frozen=True)
class Impression:
    """What one response showed: the list in order, to whom, under which variant."""

    request_id: str
    user_id: str
    items: list[str]
    stage: str
    model: str
    timestamp: float
    experiment: str | None = None
    variant: str | None = None
