"""CPU priority for the work a request can do without.

On cores that the request path shares (one node running the whole graph), the re-ranker's
forward pass is the work a request drops when it runs late: its answer falls back to
retrieval. The threads that answer requests must not wait behind it for a time slice.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)
_warned = False


def thread_niceness() -> int | None:
    """The calling thread's nice value (None where threads have no priority of their own)."""
    if sys.platform != "linux":
        return None
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def lower_thread_priority(steps: int) -> int | None:
    """Run the calling thread `steps` nice values below the process's main thread.

    Linux keeps a nice value per thread, so the rest of the process (its event loop) keeps
    its priority, and threads started from this one inherit the lower one. Going back up
    needs CAP_SYS_NICE: without it a thread stays where it was. Returns the thread's nice
    value now (None off Linux, where this does nothing).
    """
    global _warned
    if sys.platform != "linux":
        return None
    tid = threading.get_native_id()
    target = min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + max(steps, 0))
    if os.getpriority(os.PRIO_PROCESS, tid) != target:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, target)
        except PermissionError as e:  # only raising a priority back is refused
            if not _warned:
                _warned = True
                log.warning("thread priority stays lower than asked (%s)", e)
    return os.getpriority(os.PRIO_PROCESS, tid)
