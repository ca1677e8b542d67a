"""The new-user protocol's held-out users, sign-up histories and attribute rows, on a log
small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tests.fit_data import fit_data
from training.evaluation.new_users import cases_from, evaluate
from training.retrieval.data import FitData

N_USERS, N_ITEMS = 10, 8


def log_data() -> FitData:
    """User u has u + 1 events (items u, u+1, ... mod 8), in time order; even users state
    occupation code 0, odd ones 1, user 9 nothing."""
    rows = [(u, (u + k) % N_ITEMS, 10 * u + k) for u in range(N_USERS) for k in range(u + 1)]
    u, i, t = (np.array(c) for c in zip(*rows, strict=True))
    occupation = np.array([k % 2 for k in range(N_USERS)])
    occupation[9] = -1
    return fit_data(u, i, {"occupation": occupation}, N_ITEMS, times=t)


def test_held_out_users_are_never_trained_on_and_have_enough_events():
    cases = cases_from(log_data(), 0.3, (0, 1, 3), seed=1)
    assert len(cases.users) == 3 and all(u >= 3 for u in cases.users)  # > 3 events each
    trained = set(
        cases.train.seq_users()[np.diff(cases.train.seq_indptr)[cases.train.seq_users()] > 0]
    )
    assert not trained & set(cases.users.tolist())
    others = [u for u in range(N_USERS) if u not in cases.users]
    assert len(cases.train.seq_items) == sum(u + 1 for u in others)


def test_a_sign_up_after_l_events_asks_for_its_next_item():
    cases = cases_from(log_data(), 0.3, (0, 1, 3), seed=1)
    u = int(cases.users[0])
    assert cases.history(u, 0).tolist() == []
    assert cases.history(u, 3).tolist() == [(u + k) % N_ITEMS for k in range(3)]
    assert cases.target(u, 3) == (u + 3) % N_ITEMS
    assert cases.segment(u) == {"occupation": u % 2} if u != 9 else cases.segment(u) == {}


def test_rows_per_length_and_attributes_and_what_stating_them_is_worth():
    cases = cases_from(log_data(), 0.3, (0, 1), seed=1)
    first = {int(cases.history(int(u), 1)[0]): int(u) for u in cases.users}

    def oracle(history, segment):  # knows the user from their first event
        return [cases.target(first[int(history[0])], len(history))] if len(history) else []

    def everything_if_stated(history, segment):
        return list(range(N_ITEMS)) if segment else []

    report = evaluate(cases, {"oracle": oracle, "attrs": everything_if_stated}, 200)
    rows = {(r["list"], r["events"], r["attributes"]): r for r in report["rows"]}
    assert len(rows) == 2 * 2 * 2
    assert rows[("oracle", 1, False)]["NDCG@10"]["mean"] == 1.0
    assert rows[("oracle", 0, False)]["Recall@50"]["mean"] == 0.0  # an empty list misses
    assert rows[("attrs", 0, False)]["Recall@50"]["mean"] == 0.0
    stated = np.mean([bool(cases.segment(int(u))) for u in cases.users])
    assert rows[("attrs", 0, True)]["Recall@50"]["mean"] == stated > 0
    gain = next(g for g in report["attributes_gain_ndcg10"] if g["list"] == "attrs")
    assert gain["mean_difference"] > 0
    assert report["held_out_users"] == 3 and report["train_users"] == 7


def test_a_share_outside_0_1_is_refused():
    with pytest.raises(ValueError, match="between 0 and 1"):
        cases_from(log_data(), 0.0)
