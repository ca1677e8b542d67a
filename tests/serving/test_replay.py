"""Replay evaluation on a simulated log: the candidate ranks each clicked impression's user
as of that moment (nothing later leaks in), and the report tells a worse logged order
from an equal one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from serving.config import LiveSettings
from serving.events import Event
from serving.experiments import Impression
from serving.recommender import RetrievalService
from serving.replay import ndcg, reciprocal_rank, replay_cases, replay_report, slate_order
from serving.rerank_service import RerankService
from serving.responses import respond
from serving.sqlite_store import SQLiteEventStore
from training.publish import load_version

T0 = 2e9


def test_slate_metrics():
    assert slate_order(["a", "b", "c"], ["c", "x", "a"]) == ["c", "a", "b"]
    assert ndcg(["a", "b"], {"a"}) == 1.0 and ndcg(["b", "a"], {"a"}) == pytest.approx(0.6309, 1e-3)
    assert reciprocal_rank(["b", "c", "a"], {"a"}) == pytest.approx(1 / 3)
    assert reciprocal_rank(["b"], {"a"}) == 0.0


@pytest.fixture(scope="module")
def logged(published, tmp_path_factory):
    """A log of 60 users: 40 shown the candidate's top 10 reversed (a worse policy), 20
    shown it as is; each clicked the candidate's first or fourth item, after the impression."""
    _, models = published
    db = tmp_path_factory.mktemp("replay") / "events.db"
    store = SQLiteEventStore(db)
    mv = load_version(models, "v2")
    settings = LiveSettings(model_root=str(models), store=f"sqlite://{db}")
    retrieval = RetrievalService(mv, store, settings)
    reranker = RerankService(mv, store, settings)
    for j, user in enumerate(list(retrieval.catalog.user_index)[:60]):
        r = retrieval.retrieve(user)
        scores = reranker.score([(r.prompt_history, r.items, r.features)])[0]
        top = [x["item_id"] for x in respond(r, 10, scores, "", None, {}, None)["items"]]
        reversed_ = j < 40
        shown = top[::-1] if reversed_ else top
        variant = "reversed" if reversed_ else "same"
        t = T0 + 10 * j
        store.log_impression(Impression(f"r{j}", user, shown, "rerank", "v1", t, "sim", variant))
        clicked = top[0] if reversed_ else top[3]
        store.append([Event(user, clicked, "click", t + 1, request_id=f"r{j}")])
    store.log_impression(Impression("r-none", "1", top, "rerank", "v1", T0, "sim", "same"))
    return store, retrieval, reranker, db, models


def test_replay_finds_the_worse_logged_order_and_leaks_nothing_later(logged):
    store, retrieval, reranker, _, _ = logged
    impressions, events = store.experiment_log("sim")
    cases, skipped = replay_cases(store, retrieval, reranker, impressions, events, progress=False)
    assert len(cases) == 60 and skipped == {"no_click": 1}
    worse = [c for c in cases if c.variant == "reversed"]
    rep = replay_report(worse)
    # Had the click (stored after the impression) leaked into the history, the clicked item
    # would be excluded from the candidate's list and ranked last: NDCG 1.0 says it did not.
    assert rep["slate"]["ndcg"]["candidate"]["mean"] == 1.0
    assert rep["slate"]["ndcg"]["logged"]["mean"] == pytest.approx(ndcg([*"xxxxxxxxx", "a"], "a"))
    assert rep["slate"]["ndcg"]["difference"]["p_candidate_not_better"] < 0.01
    assert rep["verdict"].startswith("the candidate ranks the clicked items higher")
    same = replay_report([c for c in cases if c.variant == "same"])
    assert same["slate"]["ndcg"]["difference"]["mean"] == 0.0
    assert same["overlap_with_logged"]["mean"] == 1.0
    assert same["verdict"].startswith("no significant difference")


@pytest.mark.slow  # the whole command, models loaded: seconds
def test_the_replay_command_writes_its_report(logged, tmp_path):
    _, _, _, db, models = logged
    cmd = [sys.executable, "-m", "cluster.cli", "replay", "--model-root", str(models)]
    args = ["--version", "v2", "--store", f"sqlite://{db}", "--experiment", "sim"]
    proc = subprocess.run(
        [*cmd, *args, "--variant", "reversed", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "NDCG in the slate" in proc.stdout and "ranks the clicked items higher" in proc.stdout
    saved = json.loads((tmp_path / "r" / "replay.json").read_text())
    assert saved["impressions"] == 40 and saved["version"] == "v2"
    empty = subprocess.run(
        [*cmd, *args[:-1], "nothing-logged"], capture_output=True, text=True, timeout=300
    )
    assert empty.returncode == 2 and "Traceback" not in empty.stderr
    assert empty.stderr.strip().startswith("error: no logged impression has an attributed")
