"""A/B experiments without Ray: assignment, settings per variant, attribution and the
report's statistics, down to a simulated experiment where one variant is truly better."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from serving.ab_report import difference, experiment_report, outcomes, wilson
from serving.config import LiveSettings
from serving.events import Event, EventStore, open_store
from serving.experiments import Experiment, Impression, assign
from serving.sqlite_store import SQLiteEventStore

EXP = {
    "name": "rerank-on-off",
    "salt": "s1",
    "variants": [
        {"name": "control", "share": 0.5},
        {"name": "no-rerank", "share": 0.5, "settings": {"rerank": False}},
    ],
}


def test_assignment_is_deterministic_and_follows_the_shares():
    exp = Experiment.model_validate(
        {**EXP, "variants": [{"name": "a", "share": 0.2}, {"name": "b", "share": 0.8}]}
    )
    users = [f"u{i}" for i in range(20_000)]
    first = [assign(exp, u).name for u in users]
    assert first == [assign(exp, u).name for u in users]
    share_a = first.count("a") / len(users)
    assert abs(share_a - 0.2) < 0.015  # 5 standard errors
    resalted = exp.model_copy(update={"salt": "s2"})
    moved = sum(x != assign(resalted, u).name for x, u in zip(first, users, strict=True))
    assert moved > 0.2 * len(users)  # a new salt reshuffles users


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"variants": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.4}]}, "add up to 1"),
        ({"variants": [{"name": "a", "share": 0.5}, {"name": "a", "share": 0.5}]}, "unique"),
        ({"variants": [{"name": "a", "share": 1.0}]}, "at least 2"),
        (
            {
                "variants": [
                    {"name": "a", "share": 0.5},
                    {"name": "b", "share": 0.5, "settings": {"model_root": "/x"}},
                ]
            },
            "a variant may set",
        ),
    ],
)
def test_bad_experiments_are_refused_with_the_reason(change, fragment):
    with pytest.raises(ValidationError, match=fragment):
        Experiment.model_validate({**EXP, **change})


def test_variant_settings_are_checked_as_live_settings():
    LiveSettings.model_validate({"experiment": EXP})
    bad = json.loads(json.dumps(EXP))
    bad["variants"][1]["settings"] = {"deadline_ms": -5}
    with pytest.raises(ValidationError, match="deadline_ms"):
        LiveSettings.model_validate({"experiment": bad})


def test_wilson_and_difference_match_known_values():
    lo, hi = wilson(10, 100)
    assert lo == pytest.approx(0.0552, abs=1e-4) and hi == pytest.approx(0.1744, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    d = difference(60, 500, 40, 500)
    assert d["diff"] == pytest.approx(0.04)
    assert d["lo"] < 0.04 < d["hi"]
    assert d["p"] == pytest.approx(0.0350, abs=1e-3)  # pooled z = 0.04 / 0.01897 = 2.108


def imp(rid, user, items, variant="control"):
    return Impression(rid, user, items, "rerank", "v1", 0.0, "x", variant)


def ev(user, item, kind, rid):
    return Event(user, item, kind, 0.0, None, None, rid)


def test_only_events_on_shown_items_by_the_same_user_count():
    impressions = [imp("r1", "u1", ["a", "b"]), imp("r2", "u2", ["a"]), imp("r3", "u3", ["c"])]
    events = [
        ev("u1", "b", "click", "r1"),
        ev("u1", "b", "purchase", "r1"),
        ev("u9", "a", "click", "r2"),  # someone else
        ev("u3", "z", "click", "r3"),  # not shown
        ev("u3", "c", "view", "r3"),  # not a click
    ]
    assert outcomes(impressions, events) == {
        "control": {"impressions": 3, "clicked": 1, "converted": 1}
    }


def simulate_log(ctr: dict[str, float], users: int, seed: int):
    """Users assigned by the real assignment; each sees one list and clicks with the
    probability of their variant (conversions at a quarter of the clicks)."""
    exp = Experiment.model_validate(
        {**EXP, "variants": [{"name": v, "share": 1 / len(ctr)} for v in ctr]}
    )
    rng = np.random.default_rng(seed)
    clicks = rng.random(users)
    kinds = np.where(rng.random(users) < 0.25, "purchase", "click")
    picked = rng.integers(10, size=users)
    stray = rng.random(users) < 0.05
    items = [f"item-{j}" for j in range(10)]
    impressions, events = [], []
    for i in range(users):
        user, rid = f"user-{i}", f"req-{seed}-{i}"
        variant = assign(exp, user).name
        impressions.append(Impression(rid, user, items, "rerank", "v1", float(i), "x", variant))
        if clicks[i] < ctr[variant]:
            events.append(Event(user, items[picked[i]], str(kinds[i]), float(i), None, None, rid))
        if stray[i]:  # unattributed traffic must not count
            events.append(Event(user, "item-0", "click", float(i), None, None, None))
    return impressions, events


def simulate(store: EventStore, ctr: dict[str, float], users: int, seed: int) -> None:
    impressions, events = simulate_log(ctr, users, seed)
    for i in impressions:
        store.log_impression(i)
    store.append(events)


def test_the_report_finds_the_truly_better_variant(tmp_path):
    store = SQLiteEventStore(tmp_path / "events.db")
    simulate(store, {"control": 0.08, "treatment": 0.12}, users=6000, seed=1)
    rep = experiment_report("x", *store.experiment_log("x"))
    control, treatment = rep["variants"]
    assert control["variant"] == "control" and control["impressions"] > 2700
    assert control["ctr"]["lo"] < 0.08 < control["ctr"]["hi"]
    assert treatment["ctr"]["lo"] < 0.12 < treatment["ctr"]["hi"]
    d = treatment["ctr_vs_control"]
    assert d["p"] < 0.001 and d["lo"] > 0
    assert rep["verdict"][0].startswith("treatment is better than control")


def test_a_a_tests_are_flagged_at_the_nominal_five_percent():
    """The intervals are calibrated: over 200 A/A experiments, about 5% look significant."""
    flagged = 0
    for seed in range(200):
        rep = experiment_report("x", *simulate_log({"control": 0.1, "copy": 0.1}, 1000, seed))
        flagged += "not significantly different" not in rep["verdict"][0]
    assert 0.02 <= flagged / 200 <= 0.09, flagged


def test_the_report_command_writes_table_json_and_png(tmp_path, store_url):
    """On each event store, by its URL (SQLite and a real Redis server)."""
    simulate(open_store(store_url), {"control": 0.08, "treatment": 0.12}, users=3000, seed=3)
    run = [sys.executable, "-m", "cluster.cli", "report", "--store", store_url]
    proc = subprocess.run(
        [*run, "--experiment", "x", "--out", str(tmp_path / "rep")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "treatment" in proc.stdout and "CTR" in proc.stdout
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert saved["control"] == "control" and len(saved["variants"]) == 2
    assert (tmp_path / "rep" / "report.png").stat().st_size > 5000
    proc = subprocess.run(
        [*run, "--experiment", "nope"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: no impressions logged for experiment 'nope'"


def test_an_unreachable_store_is_a_one_line_error():
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "report", "--experiment", "x", "--store",
         "redis://:secret@127.0.0.1:1/0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "is unreachable" in proc.stderr and "secret" not in proc.stderr
