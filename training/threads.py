"""How many threads a stage computes with: set once per process, explicitly, for torch and
for the BLAS/OpenMP pools. Left to their defaults, each pool takes every core it sees, and
on a machine where anything else runs the pools' threads wait on each other: SASRec's epochs
went from 3 s to 50 s that way."""

from __future__ import annotations

import os

ENV = "LLMREC_THREADS"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(n: int | None = None) -> int:
    """Use `n` threads (default: $LLMREC_THREADS, else every available core) in torch's
    intra-op pool and in the BLAS/OpenMP pools; returns the number set."""
    n = n or int(os.environ.get(ENV) or 0) or available_cores()
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)
    return n
