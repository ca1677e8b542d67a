"""How many threads a stage computes with: set once per process, explicitly, for torch and
for the BLAS/OpenMP pools. Left to their defaults, each pool takes every core it sees, and
on a machine where anything else runs the pools' threads wait on each other: SASRec's epochs
went from 3 s to 50 s that way. A batch stage therefore counts the cores that are idle when
it starts and takes only those (benchmarks/bench_threads.py measures the difference)."""

from __future__ import annotations

import os

ENV = "LLMREC_THREADS"
SAMPLE_S = 0.3  # long enough to see a busy core as busy, short beside any stage


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_for(available: int, busy_percents: list[float]) -> int:
    """Threads to use on `available` cores whose load (percent busy, per core) was sampled:
    the idle share, rounded, at least one. Two cores with one of them taken by another process
    give one thread, a quiet machine every core."""
    idle = sum(max(0.0, 100.0 - p) for p in busy_percents) / 100.0
    return max(1, min(available, int(idle + 0.5)))


def idle_threads(sample_s: float = SAMPLE_S) -> int:
    """The thread count the machine's current load leaves room for (`threads_for` over the
    cores of this process's affinity, sampled for `sample_s` seconds)."""
    import psutil

    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cores = list(range(os.cpu_count() or 1))
    per_core = psutil.cpu_percent(interval=sample_s, percpu=True)
    busy = [per_core[c] for c in cores if c < len(per_core)]
    return threads_for(len(cores), busy or [0.0] * len(cores))


_by_load: int | None = None  # the count chosen by load, once per process


def set_threads(n: int | None = None, *, by_load: bool = True) -> int:
    """Use `n` threads in torch's intra-op pool and in the BLAS/OpenMP pools; returns the number
    set. Without `n`: $LLMREC_THREADS, else the cores idle when the process's first stage
    started (`by_load`, for batch stages), else every available core (serving replicas: they
    start beside each other, and their load at that moment says nothing about the load they
    will serve). The idle count is taken once: a later stage of the same command (the demo's
    publish after its training) would count the Ray workers the command itself is still
    winding down as another job's load."""
    global _by_load
    n = n or int(os.environ.get(ENV) or 0)
    if not n and by_load:
        if _by_load is None:
            _by_load = idle_threads()
        n = _by_load
    n = n or available_cores()
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)
    return n
