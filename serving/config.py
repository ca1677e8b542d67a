"""Live settings of the Serve graph: the `user_config` every deployment's `reconfigure()`
receives (the Serve config YAML is their single source of truth).

Each field has one owner: production settings at the top level, the re-ranker's CPU
compression in `compression`, injected faults in `drills`. A field declared with
`reload=True` changes what a replica loads (the model objects are rebuilt); every other
field is applied to the loaded objects in place."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.experiments import Experiment
from training.new_item_place import DEFAULT_RANK, ShownNewItemRank
from training.reranker.compression import Compression


def _reload(**kw: Any) -> Any:
    """A field whose change rebuilds the replica's model objects."""
    return Field(json_schema_extra={"reload": True}, **kw)


class Drills(BaseModel):
    """Injected faults for the deadline tests and drills; never set in production profiles."""

    model_config = ConfigDict(extra="forbid")

    rerank_delay_ms: float = Field(0.0, ge=0, description="each re-rank batch sleeps this long")
    retrieval_delay_ms: float = Field(0.0, ge=0, description="each retrieval sleeps this long")
    rerank_fail: bool = Field(False, description="every re-rank batch raises")
    loop_stall_ms: float = Field(
        0.0,
        ge=0,
        le=10_000,
        description="the Api's event loop is blocked this long, 20 times a second",
    )


class LiveSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_root: str = Field("artifacts/models/ml-100k", description="published model versions")
    version: str = Field("latest", description="a version folder name, or latest (CURRENT)")
    watch_s: float = Field(
        5.0, ge=0, le=3600, description="with latest: seconds between CURRENT checks; 0 = off"
    )
    store: str = _reload(
        default="sqlite://artifacts/serving/events.db", description="event store URL"
    )
    deadline_ms: float = Field(200.0, gt=0, le=60_000, description="per-request budget")
    deadline_margin_ms: float = Field(
        20.0,
        ge=0,
        description="kept back from the deadline for answering: a stage still running this "
        "close to it is given up, since a loaded event loop wakes late",
    )
    margin_lag_factor: float = Field(
        1.5,
        ge=0,
        le=10,
        description="the margin also covers this many times the largest event-loop lag of "
        "the last 2 s, at most half the deadline (0: the fixed margin only): under load "
        "the loop resumes a request well after its stage gave up",
    )
    rerank: bool = _reload(default=True, description="use the re-ranker when the version has one")
    candidates: int = Field(50, ge=1, le=1000, description="retrieval candidates per request")
    shown_new_item_rank: ShownNewItemRank = DEFAULT_RANK
    retrieval_in_api: bool = Field(
        True,
        description="the Api replica retrieves in its own process, so a request answered from "
        "retrieval makes one hop (proxy to Api) instead of two; false: through the Retrieval "
        "deployment, which then scales apart from the ingress",
    )
    k_default: int = Field(10, ge=1, le=100, description="k when a request names none")
    # Who may call: API keys (serving/auth.py). The limits of a request's size are part of
    # the HTTP contract, not settings (serving/api_models.py).
    api_keys: str | None = Field(
        "artifacts/serving/api-keys.json",
        description="the key file (llmrec keys create), or env:NAME for a secret injected as "
        "an environment variable; re-read when it changes and on every reconfigure. No file: "
        "no key, so every protected endpoint answers 401",
    )
    insecure_local: bool = Field(
        False,
        description="no key checking at all; only with the proxy on 127.0.0.1 "
        "(llmrec serve --insecure-local)",
    )
    key_rate: float = Field(
        200.0,
        gt=0,
        le=1e6,
        description="requests/s one key may make on one Api replica (a key's own rate in the "
        "key file wins); with N Api replicas a key may make N times this",
    )
    key_burst: float = Field(400.0, ge=1, le=1e7, description="requests a key may save up")
    cache: bool = Field(
        True,
        description="nearline: serve lists computed after events and by the precompute "
        "(re-ranked where the version has a re-ranker, else in retrieval order)",
    )
    warm: bool = Field(
        True,
        description="precompute: once a model version is loaded, compute (re-rank, where the "
        "version has a re-ranker) and cache the lists of the users the dataset knows (up to "
        "warm_users), most recently active first, while no request is in flight, so that a "
        "returning user is answered from the cache without retrieval or the re-ranker (the "
        "lists of users with events are replaced by the nearline step as before)",
    )
    warm_users: int | None = Field(
        2_000,
        ge=0,
        description="precompute at most this many users, the most recently active first "
        "(None: all of them); every other user's list is computed at their request, within "
        "the deadline. The precompute re-ranks about 15-20 users a second per replica on 2 "
        "cores, and readiness waits for it (ready_warm_share)",
    )
    ready_warm_share: float = Field(
        1.0,
        ge=0,
        le=1,
        description="with warm: /readyz says ready once this share of the precompute is done "
        "(1: all of it), so that the first requests after ready are answered normally",
    )
    warm_quiet_ms: float = Field(
        50.0,
        ge=0,
        le=60_000,
        description="the precompute takes its next user only when no request came in this long",
    )
    rerank_threads: int = _reload(default=1, ge=1, le=64, description="torch threads per re-ranker")
    rerank_batch_size: int = Field(
        8, ge=1, le=256, description="re-rank requests a Reranker replica scores in one pass"
    )
    rerank_batch_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="how long a batch waits to fill before it runs"
    )
    compression: Compression = _reload(default_factory=Compression)
    drills: Drills = Field(default_factory=Drills)
    reflect_ms: float | None = Field(
        None,
        gt=0,
        le=60_000,
        description="a request that finds its user's nearline list still being computed "
        "waits this long for it, then answers from that computation's fresh retrieval, "
        "flagged nearline_pending (None: wait up to 60% of the deadline)",
    )
    admit_share: float = Field(
        0.6,
        gt=0,
        le=1,
        description="a retrieval or re-rank is queued when the queue's estimate of its finish "
        "is within this share of the time left (the estimate is an average; the late jobs "
        "are the slow ones); otherwise the stage before answers at once",
    )
    shed_inflight: int | None = Field(
        None,
        ge=1,
        description="above this many requests in flight in one Api replica, new requests "
        "skip the re-ranker: answered from retrieval, flagged overload (None: never)",
    )
    rerank_min_history: int = Field(
        0, ge=0, description="users with shorter histories get retrieval order (routing)"
    )
    routing: bool = Field(
        True,
        description="follow the model version's routing table: the LM re-ranks only the "
        "history lengths where it was measured to pay, the feature layer alone the others "
        "(False: every warm and sparse request goes through the LM)",
    )
    # "Not interested": look-alikes of recently disliked items are demoted for a while.
    dislike_similarity: float = Field(
        0.8, ge=-1, le=1, description="cosine similarity that makes an item a look-alike"
    )
    dislike_window_s: float = Field(
        7 * 86400, ge=0, description="how long a dislike demotes look-alikes; 0 = off"
    )
    retention_days: float | None = Field(
        None, gt=0, description="delete raw events and impressions older than this"
    )
    # A/B testing and impressions (serving/experiments.py).
    experiment: Experiment | None = Field(None, description="variants and traffic shares")
    log_impressions: bool = Field(True, description="record what each response showed")

    @model_validator(mode="after")
    def _margin_leaves_time(self) -> LiveSettings:
        if self.deadline_margin_ms >= self.deadline_ms:
            raise ValueError(
                f"deadline_margin_ms: must be below deadline_ms ({self.deadline_ms:g}), "
                f"got {self.deadline_margin_ms:g}"
            )
        return self

    @model_validator(mode="after")
    def _variants_are_valid_settings(self) -> LiveSettings:
        if self.experiment is not None:
            base = self.model_dump(exclude={"experiment"})
            for v in self.experiment.variants:
                type(self).model_validate({**base, **v.settings})
        return self

    @classmethod
    def reload_fields(cls) -> list[str]:
        """The fields whose change rebuilds a replica's model objects."""
        return [
            name
            for name, f in cls.model_fields.items()
            if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("reload")
        ]

    def load_key(self) -> str:
        """What a loaded model object depends on besides its files: equal keys, kept."""
        return json.dumps(self.model_dump(mode="json", include=set(self.reload_fields())))
