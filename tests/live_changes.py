"""A change of every live setting at once: what the tests of live changes deploy."""

from __future__ import annotations

from typing import Any

from serving.config import LiveSettings

#: Fields that pick what is served rather than how: each has tests of its own.
NOT_CHANGED = {"model_root", "version", "experiment"}


def _other(name: str, value: Any) -> Any:
    """Another valid value of the field `name`, near its current `value`."""
    special = {
        "store": None,  # set by the caller: a path of its own
        "compression": {"int8": True, "layers": 1, "item_tokens": 6},
        "drills": {"rerank_delay_ms": 1.0, "retrieval_delay_ms": 1.0, "loop_stall_ms": 1.0},
        "warm_users": 5,
        "reflect_ms": 7.0,
        "retention_days": 3650.0,
        "shed_inflight": 150,
        "deadline_margin_ms": 25.0,
        "ready_warm_share": 0.5,
        "admit_share": 0.5,
        "dislike_similarity": 0.7,
        "k_default": 9,
        "api_keys": "env:LLMREC_TEST_KEYS",  # a secret in the environment instead of a file
    }
    if name in special:
        return special[name]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.5
    raise AssertionError(f"no changed value for the live setting {name}: add one here")


def every_field_changed(base: LiveSettings, store: str) -> dict[str, Any]:
    """A user_config that changes every field of `base` but those in NOT_CHANGED."""
    dump = base.model_dump()
    out = {n: _other(n, dump[n]) for n in LiveSettings.model_fields if n not in NOT_CHANGED}
    out["store"] = store
    changed = LiveSettings.model_validate({**dump, **out})
    same = [n for n in out if getattr(changed, n) == getattr(base, n)]
    assert not same, f"not changed: {same}"
    return out
