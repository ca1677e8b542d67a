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


def freeze_heap() -> float:
    """Collect what the last load left over, then freeze everything alive; the seconds
    it took. Called after each load: the previous version's objects are unfrozen first,
    so that a swap does not keep their garbage cycles."""
    t = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - t


class GcPauses:
    """How many full passes the cyclic collector made in this process, and the longest
    one: what `llmrec_gc_full_passes` and `llmrec_gc_longest_pause_seconds` report."""

    def __init__(self) -> None:
        self._started: float | None = None
        self.full_passes = 0
        self.longest_s = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        # The collector runs with the GIL held: no lock needed around these counts.
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.full_passes += 1
            self.longest_s = max(self.longest_s, time.perf_counter() - self._started)
            self._started = None

    def close(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
