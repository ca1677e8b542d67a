import sys
import threading

import pytest

from serving.priority import lower_thread_priority, thread_niceness

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice is Linux's")


def _in_thread(fn):
    out = {}

    def run():
        out["value"] = fn()

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out["value"]


def test_only_the_calling_thread_runs_lower():
    main = thread_niceness()
    got = _in_thread(lambda: lower_thread_priority(5))
    assert got == min(19, main + 5)
    assert thread_niceness() == main  # the loop's thread keeps its priority


def test_threads_started_from_a_lowered_thread_inherit_it():
    main = thread_niceness()

    def lowered_then_spawn():
        lower_thread_priority(3)
        return _in_thread(thread_niceness)

    assert _in_thread(lowered_then_spawn) == min(19, main + 3)


def test_zero_steps_leave_the_thread_alone_and_large_ones_stop_at_19():
    main = thread_niceness()
    assert _in_thread(lambda: lower_thread_priority(0)) == main
    assert _in_thread(lambda: lower_thread_priority(100)) == 19


def test_a_thread_asked_for_less_later_keeps_the_lower_priority_or_returns_to_it():
    main = thread_niceness()

    def twice():
        lower_thread_priority(6)
        return lower_thread_priority(2)

    # Going back up needs CAP_SYS_NICE: with it the thread follows, without it it stays.
    assert _in_thread(twice) in (min(19, main + 2), min(19, main + 6))
