"""Connecting to Ray: an existing cluster when there is one, a quiet local one otherwise."""

from __future__ import annotations

import logging
import os

_started_here = False


def connect(
    address: str | None = None, num_cpus: int | None = None, dashboard: bool = False
) -> bool:
    """`address` (or $RAY_ADDRESS, or the job's cluster) if set; otherwise start locally.
    Returns True when this process started its own local cluster (it ends with the process)."""
    global _started_here
    import ray

    if ray.is_initialized():
        return _started_here
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or os.environ["RAY_ADDRESS"], **kwargs)
        return False
    # Ray Train logs a warning per poll without the dashboard: stages that train want it.
    ray.init(num_cpus=num_cpus, include_dashboard=dashboard, **kwargs)
    _started_here = True
    return True
