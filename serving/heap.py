"""The Python heap of a replica that holds a model version.

A replica holds about half a million long-lived objects (Ray, torch, the catalog, the
retrievers). CPython's full cyclic collection walks all of them: 240 ms on this machine,
with the GIL held, so every request of the replica waits and the ones near their deadline
are answered late. After a version is loaded those objects live until the next swap, so
they are frozen: the collector leaves them out, and the objects requests create are still
collected as before. Reference counting still frees a frozen object that is dropped."""

from __future__ import annotations

import gc
import time
from collections import deque

_freezing = False  # freeze_heap's own collection is not a pause while serving


def freeze_heap() -> float:
    """Collect what the last load left over, then freeze everything alive; the seconds
    it took. Called after each load: the previous version's objects are unfrozen first,
    so that a swap does not keep their garbage cycles."""
    global _freezing
    t = time.perf_counter()
    gc.unfreeze()
    _freezing = True
    try:
        gc.collect()
    finally:
        _freezing = False
    gc.freeze()
    return time.perf_counter() - t


class GcPauses:
    """The cyclic collector's passes in this process, by generation, and the longest of
    each. The collection that freezes a loaded version (`freeze_heap`) is counted apart,
    in `freeze_passes`: the others are the pauses requests may wait through. `drain()`
    hands over each pause since the last call (`llmrec_gc_pause_seconds`): the collector
    may run inside any lock-holding code, so the callback only appends, and a metrics
    library's lock is taken later, by whoever drains."""

    def __init__(self, keep: int = 4096) -> None:
        self._started: float | None = None
        self._generation = 0
        self.passes = [0, 0, 0]
        self.longest_s = [0.0, 0.0, 0.0]
        self.freeze_passes = 0
        self._recent: deque[tuple[int, float]] = deque(maxlen=keep)
        gc.callbacks.append(self._on_gc)

    def drain(self) -> list[tuple[int, float]]:
        """(generation, seconds) of each pause since the last drain, oldest first (at most
        the last `keep`)."""
        out = []
        while self._recent:
            out.append(self._recent.popleft())
        return out

    def _on_gc(self, phase: str, info: dict) -> None:
        # The collector runs with the GIL held: no lock needed around these counts.
        if phase == "start":
            self._started, self._generation = time.perf_counter(), info.get("generation", 0)
            return
        if self._started is None:
            return
        took, gen = time.perf_counter() - self._started, self._generation
        self._started = None
        if _freezing:
            self.freeze_passes += 1
            return
        self.passes[gen] += 1
        self.longest_s[gen] = max(self.longest_s[gen], took)
        self._recent.append((gen, took))

    def close(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
