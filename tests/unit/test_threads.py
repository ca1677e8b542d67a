"""Thread counts by load: the rule is plain arithmetic over sampled per-core load."""

from __future__ import annotations

import pytest

from training import threads
from training.threads import threads_for


@pytest.mark.parametrize(
    ("available", "busy", "expected"),
    [
        (2, [0.0, 0.0], 2),  # quiet: every core
        (2, [100.0, 3.0], 1),  # one core taken by another process
        (2, [100.0, 100.0], 1),  # never fewer than one
        (8, [100.0] * 3 + [10.0] * 5, 5),
        (4, [60.0, 60.0, 60.0, 60.0], 2),  # 1.6 idle cores round to 2
        (4, [70.0, 70.0, 70.0, 70.0], 1),  # 1.2 round to 1
    ],
)
def test_threads_follow_the_idle_share(available: int, busy: list[float], expected: int) -> None:
    assert threads_for(available, busy) == expected


def test_an_explicit_count_wins_over_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(threads, "idle_threads", lambda: pytest.fail("load sampled"))
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv(threads.ENV, "1")
        assert threads.set_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv(threads.ENV)
        assert threads.set_threads(by_load=False) == threads.available_cores()
    finally:
        torch.set_num_threads(before)


def test_idle_threads_samples_this_machine() -> None:
    assert 1 <= threads.idle_threads(sample_s=0.05) <= threads.available_cores()


def test_the_count_by_load_is_taken_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    before = torch.get_num_threads()
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setattr(threads, "_by_load", None)
    taken = iter([1, 2])
    monkeypatch.setattr(threads, "idle_threads", lambda: next(taken))
    try:
        assert threads.set_threads() == 1
        assert threads.set_threads() == 1  # a later stage keeps the first stage's count
    finally:
        torch.set_num_threads(before)
