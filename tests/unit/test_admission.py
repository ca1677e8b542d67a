import asyncio
import threading
import time

import pytest

from serving.admission import LoopLag, WorkerQueue, deadline_margin, settled_within, within


def test_an_untimed_queue_admits_everything():
    q = WorkerQueue()
    for _ in range(50):
        q.submitted()
    assert q.admits(0.001)


def test_the_first_time_stands_alone_then_moves_slowly():
    q = WorkerQueue(alpha=0.5)
    q.submitted()
    q.finished(0.010)
    assert q.service_s == pytest.approx(0.010)
    q.submitted()
    q.finished(0.030)
    assert q.service_s == pytest.approx(0.020)


def test_after_a_restart_the_next_time_stands_alone_again():
    q = WorkerQueue(alpha=0.1)
    q.submitted()
    q.finished(0.005)
    q.restart_timing()  # e.g. a reconfigure: retrieval now costs 150 ms a job
    assert q.service_s == pytest.approx(0.005)  # the old cost decides until a job is timed
    q.submitted()
    q.finished(0.150)
    assert q.service_s == pytest.approx(0.150)


def test_a_job_waits_for_everything_queued_before_it():
    q = WorkerQueue()
    q.submitted()
    q.finished(0.010)
    assert q.expected_s() == pytest.approx(0.010)
    for _ in range(4):
        q.submitted()
    # One in service (half done on average), three waiting, then itself.
    assert q.expected_s() == pytest.approx(0.045)
    assert q.admits(0.045) and not q.admits(0.044)


def test_a_job_with_nothing_ahead_is_always_admitted():
    """Else one slow spell would refuse every later job, and no job would show it passed."""
    q = WorkerQueue()
    q.submitted()
    q.finished(5.0)
    assert q.admits(0.1)
    q.submitted()
    assert not q.admits(0.1)


def test_cancelled_jobs_leave_the_queue_without_changing_the_time():
    q = WorkerQueue()
    q.submitted()
    q.finished(0.010)
    q.submitted()
    q.finished(None)
    assert q.queued == 0 and q.service_s == pytest.approx(0.010)
    q.finished(None)  # a stray completion never makes the count negative
    assert q.queued == 0


def test_counts_stay_exact_across_threads():
    q = WorkerQueue()

    def churn() -> None:
        for _ in range(2000):
            q.submitted()
            q.finished(None)

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert q.queued == 0


def test_alpha_out_of_range_is_refused():
    with pytest.raises(ValueError, match="alpha"):
        WorkerQueue(alpha=0)


def test_a_remote_job_timed_from_its_submission_shares_the_wait():
    q = WorkerQueue(alpha=1.0)
    assert q.submitted() == 0
    assert q.submitted() == 1
    q.finished(0.020, ahead=0)
    q.finished(0.040, ahead=1)  # waited for one job, then ran: 20 ms its own
    assert q.service_s == pytest.approx(0.020) and q.queued == 0


def test_a_margin_that_leaves_no_time_is_refused():
    from pydantic import ValidationError

    from serving.config import LiveSettings

    with pytest.raises(ValidationError, match="deadline_margin_ms: must be below deadline_ms"):
        LiveSettings(deadline_ms=100, deadline_margin_ms=100)
    assert LiveSettings(deadline_ms=100, deadline_margin_ms=99).deadline_margin_ms == 99


def test_loop_lag_is_the_largest_in_the_window_and_then_forgotten():
    lag = LoopLag(window_s=2.0)
    assert lag.recent_s(0.0) == 0.0
    lag.observe(0.0, 0.005)
    lag.observe(0.5, 0.080)
    lag.observe(1.0, 0.010)
    assert lag.recent_s(1.0) == pytest.approx(0.080)
    assert lag.recent_s(2.4) == pytest.approx(0.080)  # 0.5 + 2.0 is still inside
    assert lag.recent_s(2.6) == pytest.approx(0.010)  # the spike has left the window
    assert lag.recent_s(3.1) == 0.0
    lag.observe(4.0, -0.001)  # a timer that fired early counts as no lag
    assert lag.recent_s(4.0) == 0.0
    with pytest.raises(ValueError, match="window_s"):
        LoopLag(window_s=0)


def test_a_stall_of_the_replicas_own_reconfigure_is_excused():
    lag = LoopLag(window_s=2.0)
    lag.observe(1.0, 0.030)
    lag.excuse(1.5)  # a reconfigure blocked the loop until 1.5
    lag.observe(1.52, 0.45, started=1.06)  # the wake-up whose wait spans that stall
    assert lag.recent_s(1.6) == 0.0
    lag.observe(1.7, 0.040, started=1.65)  # lag after it counts again
    assert lag.recent_s(1.8) == pytest.approx(0.040)


def test_the_margin_follows_the_lag_up_to_half_the_deadline_then_says_do_not_wait():
    # fixed 20 ms; 1.5 x lag when more; capped at half the 200 ms deadline
    assert deadline_margin(0.2, 0.02, 0.005, 1.5) == (0.02, False)
    margin, lagging = deadline_margin(0.2, 0.02, 0.04, 1.5)
    assert abs(margin - 0.06) < 1e-9 and not lagging
    assert deadline_margin(0.2, 0.02, 0.07, 1.5) == (0.1, True)
    assert deadline_margin(0.2, 0.02, 1.0, 0.0) == (0.02, False)  # factor 0: fixed only


async def _turns_past_the_timeout(seconds: float) -> int:
    """How many turns of the event loop pass between a timeout firing and `within`
    returning, on a loop that always has other work ready (as a loaded replica's has)."""
    loop = asyncio.get_running_loop()
    turns, fired = 0, []

    def busy() -> None:  # work on every turn, as the requests in flight of a loaded loop
        nonlocal turns
        turns += 1
        time.sleep(0.002)
        loop.call_soon(busy)

    loop.call_soon(busy)
    never = loop.create_future()
    # Scheduled first, so it runs no later than the timeout it marks.
    loop.call_later(seconds, lambda: fired.append(turns))
    with pytest.raises(TimeoutError):
        await within(never, seconds)
    assert never.cancelled()  # what it waited on is cancelled, not left pending
    return turns - fired[0]


def test_within_answers_the_turn_after_its_timeout_without_waiting_for_the_cancellation():
    # asyncio.wait_for (Python 3.11) waits for the cancelled future's task to finish: 3
    # turns here, against 1. Each turn of a loaded loop is tens of milliseconds.
    assert asyncio.run(_turns_past_the_timeout(0.02)) <= 2


def test_within_returns_the_result_and_refuses_at_once_when_no_time_is_left():
    async def go():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.call_later(0.001, fut.set_result, 7)
        assert await within(fut, 1.0) == 7
        late = loop.create_future()
        with pytest.raises(TimeoutError):
            await within(late, 0)
        assert not late.done()  # nothing was awaited: the caller cancels its own call

    asyncio.run(go())


def test_settled_within_never_cancels_or_raises_for_what_others_wait_on():
    async def go():
        loop = asyncio.get_running_loop()
        shared = loop.create_future()
        await settled_within(shared, 0.01)
        assert not shared.done()
        failed = loop.create_future()
        failed.set_exception(RuntimeError("the nearline list failed"))
        await settled_within(failed, 1.0)  # its error is for its owner to handle
        shared.set_result(1)
        return shared.result()

    assert asyncio.run(go()) == 1
