"""Wall seconds per step of a retrieval stack's fit (the item texts' embeddings, each source
of the held-out fit, the fusion, each source of the stack's own fit), kept in order.

A fit at a million users runs for an hour or more: `llmrec fit` shows the step it is in and
prints each step's time as it ends, and the stack saves the times (`stack.json`'s
`fit_seconds`) so a slow fit can be read afterwards without a profiler."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator


class FitSteps:
    """Records `seconds[label]` for each `step(label)`; `on_start(label)` and
    `on_end(label, seconds)` are told as each step starts and ends (progress display)."""

    def __init__(
        self,
        on_start: Callable[[str], None] | None = None,
        on_end: Callable[[str, float], None] | None = None,
    ) -> None:
        self.seconds: dict[str, float] = {}
        self._on_start = on_start
        self._on_end = on_end

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        if self._on_start is not None:
            self._on_start(label)
        start = time.perf_counter()
        yield
        seconds = round(time.perf_counter() - start, 1)
        self.seconds[label] = seconds
        if self._on_end is not None:
            self._on_end(label, seconds)


def step(steps: FitSteps | None, label: str) -> contextlib.AbstractContextManager[None]:
    """`steps.step(label)`, or nothing where no one records the fit's steps."""
    return steps.step(label) if steps is not None else contextlib.nullcontext()
