"""Connecting to Ray: an existing cluster when there is one, a quiet local one otherwise."""

from __future__ import annotations

import logging
import os


def connect(
    address: str | None = None, num_cpus: int | None = None, dashboard: bool = False
) -> None:
    """`address` (or $RAY_ADDRESS, or the job's cluster) if set; otherwise start locally."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or os.environ["RAY_ADDRESS"], **kwargs)
    else:
        # Ray Train logs a warning per poll without the dashboard: stages that train want it.
        ray.init(num_cpus=num_cpus, include_dashboard=dashboard, **kwargs)
