"""Admission on a deadline: how long a job submitted now to a single worker would take.

A request whose retrieval (or re-rank) cannot finish inside its budget is better answered at
once by the stage before, than after the budget, when the answer is late anyway and the
work it queued still takes the cores from the requests behind it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Awaitable
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")


class WorkerQueue:
    """Jobs queued on one worker thread and a moving average of their service time.

    Thread-safe: jobs are counted in by the event loop and out by the worker.
    """

    def __init__(self, alpha: float = 0.1):
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha: must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.service_s = 0.0  # admits everything until a job has been timed
        self._timed = False
        self.queued = 0  # submitted and not yet finished or cancelled
        self._lock = threading.Lock()

    def submitted(self) -> int:
        """Count a job in; returns how many were queued ahead of it."""
        with self._lock:
            self.queued += 1
            return self.queued - 1

    def finished(self, seconds: float | None, ahead: int = 0) -> None:
        """A job left the queue: `seconds` after it was submitted with `ahead` jobs before
        it (seconds measured by the worker itself: ahead 0), or untimed (None: cancelled
        before it ran, or failed)."""
        with self._lock:
            self.queued = max(self.queued - 1, 0)
            if seconds is not None:
                # A job that waited for others took its share of the whole wait.
                one = seconds / (ahead + 1)
                # The first time stands alone: averaged with nothing, not with zero.
                a = self.alpha if self._timed else 1.0
                self.service_s += a * (one - self.service_s)
                self._timed = True

    def restart_timing(self) -> None:
        """What a job costs may have changed (other models, settings): the next timed job
        stands alone again, instead of moving an average of the old costs a tenth of the
        way. Until it comes, the old average still decides."""
        with self._lock:
            self._timed = False

    def expected_s(self) -> float:
        """When a job submitted now would finish: everything ahead of it, then itself."""
        with self._lock:
            return self._expected()

    def _expected(self) -> float:
        # The job in service is half done on average (the others have not started).
        return (self.queued + 0.5) * self.service_s if self.queued else self.service_s

    def admits(self, budget_s: float) -> bool:
        """Whether a job submitted now would finish within `budget_s`. A job with nothing
        ahead of it is always admitted: a slow spell must not refuse every job for good,
        and the next timed job is what shows that it has passed."""
        with self._lock:
            return self.queued == 0 or self._expected() <= budget_s


class LoopLag:
    """How late the event loop has been waking up lately: the largest lag seen in the last
    `window_s` seconds. A loaded event loop resumes a request some time after the stage it
    waited for gave up; the deadline margin must cover that, or the answer is late anyway.

    Not thread-safe: fed and read on the event loop.
    """

    def __init__(self, window_s: float = 2.0):
        if window_s <= 0:
            raise ValueError(f"window_s: must be positive, got {window_s}")
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()  # (when, lag), maxima kept
        self._excused_until = float("-inf")

    def excuse(self, until: float) -> None:
        """The loop's stalls up to `until` were this replica's own work (a reconfigure that
        loaded models), not load: forget them, and the wake-up whose wait spans them. Else
        every live change would send the next `window_s` of requests to popularity. (A float
        assignment: safe from the thread that reconfigures.)"""
        self._excused_until = until

    def observe(self, now: float, lag_s: float, started: float | None = None) -> None:
        """A wake-up at `now`, `lag_s` late, of a wait that began at `started`."""
        if started is not None and started < self._excused_until:
            return
        # A monotonic deque: a sample is dropped once a later one is at least as large,
        # so the front is always the window's maximum.
        while self._samples and self._samples[-1][1] <= lag_s:
            self._samples.pop()
        self._samples.append((now, max(lag_s, 0.0)))
        self._expire(now)

    def recent_s(self, now: float) -> float:
        self._expire(now)
        return self._samples[0][1] if self._samples else 0.0

    def _expire(self, now: float) -> None:
        while self._samples and (
            self._samples[0][0] < now - self.window_s or self._samples[0][0] <= self._excused_until
        ):
            self._samples.popleft()


def deadline_margin(
    deadline_s: float, fixed_s: float, lag_s: float, lag_factor: float
) -> tuple[float, bool]:
    """What each stage of a request leaves before its deadline for answering, and whether
    no stage can be awaited at all.

    The margin is the fixed one, or `lag_factor` times the loop's recent lag when that is
    more, at most half the deadline. Past that half the loop is so far behind that a
    request resumed after any await is likely late: the second value says to answer
    without one (from the cache, or popularity)."""
    wanted = max(fixed_s, lag_factor * lag_s)
    half = deadline_s / 2
    return min(wanted, half), lag_factor > 0 and wanted >= half


async def within(aw: Awaitable[T], seconds: float) -> T:
    """`aw`'s result, or TimeoutError once `seconds` have passed (at once when none are
    left). `aw` is awaited in the caller's own task, so a timeout cancels it there and
    the caller goes on in the turn after the timer. `asyncio.wait_for` runs `aw` as a task
    of its own and waits for that task to finish cancelling: three more turns of the
    event loop, and on a loaded loop each turn is the lag the deadline margin allows for
    once. The remote work `aw` started is the caller's to cancel, as before."""
    if seconds <= 0:
        raise TimeoutError
    async with asyncio.timeout(seconds):
        return await aw


async def settled_within(fut: asyncio.Future, seconds: float) -> None:
    """Wait up to `seconds` for `fut`, which others may wait on too: never cancelled, and
    no error of its own is raised here."""
    if seconds > 0 and not fut.done():
        await asyncio.wait({fut}, timeout=seconds)


def counted(call: Awaitable[Any], queue: WorkerQueue) -> asyncio.Task:
    """`call` (a remote call) as a task counted in `queue`: in now, not when the task first
    runs (the next request's admission must see it), out when the task ends, however it
    ends (a task cancelled before it ran never enters its coroutine)."""
    ahead, start = queue.submitted(), time.perf_counter()
    task = asyncio.ensure_future(_awaited(call))
    task.add_done_callback(partial(_counted_out, queue, call, ahead, start))
    return task


async def _awaited(call: Awaitable[Any]) -> Any:
    return await call


def _counted_out(
    queue: WorkerQueue, call: Any, ahead: int, start: float, task: asyncio.Future
) -> None:
    """A remote call's task ended: out of `queue`, timed from `start` (a call given up on
    counts at least as long as it was awaited: the replica still finishes it; a failed one
    is not timed), and the call cancelled if its task was."""
    failed = not task.cancelled() and task.exception() is not None
    if task.cancelled() and hasattr(call, "cancel"):
        call.cancel()
    queue.finished(None if failed else time.perf_counter() - start, ahead)
