"""The retraining loop on real ML-100k: events stored through the store's API become the
next model version, which knows the new user and the new item; erasure reaches the data;
two retrains without new events agree. (The HTTP and `ray job submit` path of the same
loop: tests/ray/test_serve_http.py.)"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from cluster.retrain_job import RetrainOptions, run_retrain
from pipelines.artifact import load_dataset
from serving.config import LiveSettings
from serving.events import Event, StoredItem
from serving.recommender import RetrievalService, UserState
from serving.sqlite_store import SQLiteEventStore
from training.publish import load_version

pytestmark = pytest.mark.slow

NEW_USER, GONE_USER, NEW_ITEM = "newcomer-7781", "leaver-5129", "brand-new-film"


def audience(ds, n: int = 8) -> list[str]:
    """Users who share a taste (they watched both Star Wars and Fargo): the audience a new
    film finds; random users would give the models nothing to learn it from."""
    seq, users = ds.sequences, ds.users["user_id"].to_pylist()
    ids = [str(i) for i in ds.items["item_id"].to_pylist()]
    want = {ids.index("50"), ids.index("100")}
    found = [
        str(users[u])
        for u in range(len(users))
        if want <= set(seq.items[seq.indptr[u] : seq.indptr[u + 1]].tolist())
    ]
    return found[:n]


def options(root: Path, models: Path, datasets: str) -> RetrainOptions:
    """A retrain of the store's events into `models`, without a re-ranker."""
    return RetrainOptions(
        models=str(models),
        store_url="sqlite://test",
        datasets=str(root / datasets),
        reports=str(root / "reports"),
        reranker=False,
        progress=False,
    )


@pytest.fixture(scope="module")
def loop(published, tmp_path_factory):
    root = tmp_path_factory.mktemp("retrain")
    models = root / "models"
    shutil.copytree(published[1], models)
    store = SQLiteEventStore(root / "events.db", key=b"test-key")
    now = time.time()
    # A brand-new user with 12 clicks, one who will be erased, a new item clicked by 8.
    store.append([Event(NEW_USER, str(i), "click", now + i) for i in range(50, 62)])
    store.append([Event(GONE_USER, str(i), "click", now + i) for i in range(70, 82)])
    store.add_item(StoredItem(NEW_ITEM, "Brand New Film", "a film about films", ["Drama"]))
    store.append([Event(u, NEW_ITEM, "click", now + 100) for u in audience(published[0])])
    opts = options(root, models, "datasets")
    console = Console(width=150)
    first = run_retrain(opts, store, console)
    store.delete_user(GONE_USER)
    second = run_retrain(opts, store, console)  # the erasure is its only news
    third = run_retrain(opts, store, console)  # nothing new at all
    return store, models, root, first, second, third


def test_the_new_version_is_live_and_knows_the_new_user_and_item(loop):
    store, models, _, first, *_ = loop
    assert first["published"], first["reason"]
    assert first["metrics"]["cases"] >= 9  # the new user and the eight new-item clicks
    live = load_version(models)
    assert live.version != "v2"
    service = RetrievalService(live, store, LiveSettings())
    state = service.user_state(NEW_USER)
    assert state.index is not None  # a dataset user now, not a cold start
    got = service.retrieve_for(state)
    assert got.path != "cold_start"
    # The new item is a trained item of the collaborative and sequential sources.
    item = service.catalog.item_index[NEW_ITEM]
    assert item < service.catalog.n_base_items
    catalog, stack = service.catalog, service.stack
    clickers = [u for u in range(len(catalog.user_index)) if item in catalog.base_history(u)]
    assert len(clickers) == 8
    # Learned by every collaborative and sequential source (before, it had content only);
    # from 8 clicks the CF sources still rank it low for its clickers, which is honest.
    for name in ("ALS", "BPR"):
        factors = stack.sources[name].item_factors
        assert np.linalg.norm(factors[item]) > 0.05 * np.median(np.linalg.norm(factors, axis=1))
    reach: dict[str, int] = {}
    users = list(catalog.user_index)
    for u in clickers:  # from what each clicker did before it
        before = catalog.base_history(u)
        before = before[: int(np.flatnonzero(before == item)[0])]
        for name in ("item-kNN BM25", "SASRec", "transitions (recall)"):
            scores = stack.sources[name].score(u, before).astype(np.float64)
            assert np.isfinite(scores[item]) or name == "item-kNN BM25"
            scores[before] = -np.inf
            reach[name] = reach.get(name, 0) + int(item in np.argsort(-scores)[:100])
        reach["knn scored"] = reach.get("knn scored", 0) + int(
            stack.sources["item-kNN BM25"].score(u, before)[item] > 0
        )
        got = service.retrieve_for(UserState(users[u], u, before, np.zeros(0, np.int64), 1, 0))
        reach["fused"] = reach.get("fused", 0) + int(NEW_ITEM in got.item_ids)
    assert reach["knn scored"] >= 4 and reach["transitions (recall)"] >= 3, reach
    assert reach["fused"] >= 1, reach
    # Events already in the dataset are not counted twice in the user's history.
    assert len(state.history) == len(set(state.history.tolist()))


def test_no_raw_user_id_and_no_trace_of_the_erased_user_at_rest(loop):
    store, models, _, first, second, _ = loop
    live = load_version(models)
    ds = load_dataset(live.dataset_uri)
    ids = ds.users["user_id"].to_pylist()
    assert all(re.fullmatch(r"[0-9a-f]{32}", u) for u in ids)
    assert store.pseudonym(NEW_USER) in ids and store.pseudonym(GONE_USER) not in ids
    assert second["data"]["dropped"]["erased"] == 12
    # Weights trained on the erased user's rows are not carried over: no warm start.
    assert first["warm"] and not second["warm"]
    # No byte of the new dataset or model version names the erased user, raw or hashed.
    needles = [GONE_USER.encode(), store.pseudonym(GONE_USER).encode()]
    scanned = 0
    for folder in (Path(live.dataset_uri), live.path):
        for f in Path(folder).rglob("*"):
            if f.is_file():
                blob = f.read_bytes()
                assert not any(n in blob for n in needles), f
                assert NEW_USER.encode() not in blob, f
                scanned += 1
    assert scanned > 10


def test_retrains_without_new_events_agree(loop):
    *_, second, third = loop
    assert not third["published"] and third["metrics"]["cases"] == 0
    a, b = second["all_held_out"], third["all_held_out"]
    assert a["cases"] == b["cases"]
    assert abs(a["candidate"] - b["candidate"]) <= 0.005


def test_the_gate_refuses_a_candidate_trained_on_corrupted_data(loop, monkeypatch):
    from cluster.retrain_job import GateRefused

    store, models, root, *_ = loop
    before = load_version(models).version
    # Forty users each watch a film they had not seen: new held-out cases for the gate.
    ds = load_dataset(load_version(models).dataset_uri)
    seq = ds.sequences
    ids = [str(i) for i in ds.items["item_id"].to_pylist()]
    popular = np.argsort(-np.bincount(seq.items, minlength=len(ids)))[:30]
    later = time.time()
    events = []
    for u in range(40):
        seen = set(seq.items[seq.indptr[u] : seq.indptr[u + 1]].tolist())
        pick = next(int(i) for i in popular if int(i) not in seen)
        events.append(Event(str(u + 1), ids[pick], "click", later))
    store.append(events)

    # A broken training set: every source is fitted on items renamed at random, popularity
    # included (the dataset, and so the held-out cases both versions are measured on, stay
    # true).
    from dataclasses import replace

    from pipelines.global_steps import csr_from_pairs
    from training.retrieval.data import FitData

    real = FitData.from_dataset.__func__

    def shuffled(cls, ds, through):
        d = real(cls, ds, through)
        items = np.random.default_rng(0).permutation(d.n_items)[d.seq_items].astype(np.int32)
        users = np.repeat(np.arange(d.n_users), np.diff(d.seq_indptr))
        ones = np.ones(len(items), np.float32)
        matrix = csr_from_pairs(users, items, ones, (d.n_users, d.n_items))
        return replace(d, seq_items=items, matrix=matrix)

    monkeypatch.setattr(FitData, "from_dataset", classmethod(shuffled))
    opts = options(root, models, "datasets-broken")
    with pytest.raises(GateRefused, match=r"significantly worse|drops") as refused:
        run_retrain(opts, store, Console(width=150))
    assert load_version(models).version == before  # the live version stays
    # The report says why; the held-out cases are new clicks, intact.
    version = str(refused.value).split()[2].rstrip(":")
    report = json.loads((root / "reports" / f"{version}.json").read_text())
    assert not report["published"] and report["reason"] in str(refused.value)
    assert report["metrics"]["cases"] >= 10


def test_the_erasure_status_names_the_first_version_without_the_user(loop):
    from serving.erasure_status import erasure_status

    store, models, _, first, second, _ = loop
    status = erasure_status(store, str(models), GONE_USER)
    assert status["erased_at"] is not None
    assert status["first_version_without"] == second["candidate"] != first["candidate"]
    assert status["current_without"]
    never = erasure_status(store, str(models), NEW_USER)
    assert never["erased_at"] is None and never["first_version_without"] is None
