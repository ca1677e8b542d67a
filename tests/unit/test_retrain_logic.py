"""The retraining loop's plain parts: the gate, the erasure rule, the live merge, the
schedule, the scheduled RayJob's checks."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import pytest
import yaml

from pipelines.errors import LlmrecError
from pipelines.identity import key_check, pseudonymise, pseudonymise_column
from pipelines.prepare import PrepareConfig, run_local
from pipelines.schema import DROP_REASON, DropReason
from pipelines.sources.base import EXTRA_PATH, Source
from pipelines.sources.live import LiveExport, with_live_events
from pipelines.transforms import ColumnMapping, flag_rows
from training.retrain_gate import GateSettings, decide


def test_the_gate_refuses_a_significantly_worse_candidate_and_accepts_noise():
    rng = np.random.default_rng(0)
    live = rng.random(500) * (rng.random(500) < 0.3)
    same = live + rng.normal(0, 0.01, 500)
    assert decide(live, same, GateSettings()).publish
    broken = decide(live, np.zeros(500), GateSettings())
    assert not broken.publish and "significantly worse" in broken.reason
    assert broken.difference["high"] < 0 and broken.cases == 500
    # A drop within noise but beyond max_drop is refused too; a lower bar lets it through.
    slightly = live - 0.03 + rng.normal(0, 0.3, 500)
    assert not decide(live, slightly, GateSettings(tolerance=1.0, max_drop=0.02)).publish
    assert decide(live, slightly, GateSettings(tolerance=1.0, max_drop=0.5)).publish
    empty = decide(np.zeros(0), np.zeros(0), GateSettings())
    assert not empty.publish and empty.cases == 0 and "nothing to compare" in empty.reason


def test_erased_users_lose_the_rows_from_before_their_erasure():
    batch = pa.table(
        {
            "user_id": ["a", "a", "b", "c"],
            "item_id": ["1", "2", "1", "1"],
            "timestamp": pa.array([10, 30, 10, 10], pa.int64()),
            "value": pa.array([1.0] * 4, pa.float32()),
            "event_type": pa.nulls(4, pa.string()),
        }
    )
    erased = pa.table({"user_id": ["a", "b"], "erased_at": [20.0, 5.0]})
    got = flag_rows(batch, erased=erased)[DROP_REASON].to_pylist()
    # a: the row before the erasure goes, the one after stays; b came back after; c never left
    assert got == [DropReason.ERASED, 0, 0, 0]
    # A prepared dataset counts as of its creation: every row of `a` predates a later erasure.
    assert flag_rows(batch, erased=erased, as_of=15.0)[DROP_REASON].to_pylist()[:2] == [8, 8]
    # The store's export counts as +inf: it erased what came before already.
    assert set(flag_rows(batch, erased=erased, as_of=float("inf"))[DROP_REASON].to_pylist()) == {0}


def test_pseudonyms_are_the_stores_and_each_id_is_hashed_once():
    ids = pa.array(["u1", None, "u1", "ü"])
    got = pseudonymise_column(ids, b"k").to_pylist()
    assert got == [
        pseudonymise(b"k", "u1"),
        None,
        pseudonymise(b"k", "u1"),
        pseudonymise(b"k", "ü"),
    ]
    assert key_check(b"k") != key_check(b"other") and len(key_check(b"k")) == 32


def _base(tmp_path) -> Source:
    rows = pa.table(
        {
            "user_id": [f"u{u}" for u in range(6) for _ in range(6)],
            "item_id": [str(i) for _ in range(6) for i in range(6)],
            "timestamp": [u * 100 + i for u in range(6) for i in range(6)],
        }
    )
    path = str(tmp_path / "log.parquet")
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    pq.write_table(rows, path)
    items = pa.table(
        {
            "item_id": [str(i) for i in range(6)],
            "title": [f"film {i}" for i in range(6)],
            "description": [None] * 6,
            "categories": pa.array([["Drama"]] * 6, pa.list_(pa.string())),
        }
    )
    return Source(
        name="toy",
        kind="generic",
        paths=[path],
        filesystem=pafs.LocalFileSystem(),
        file_format="parquet",
        mapping=ColumnMapping("user_id", "item_id", "timestamp"),
        fingerprint="toy",
        items=items,
    )


def test_the_live_merge_joins_old_and_new_under_one_pseudonym(tmp_path):
    key = b"store-key"
    who = pseudonymise(key, "u0")
    newbie = pseudonymise(key, "newbie")
    events = pa.table(
        {
            "user_id": [newbie] * 6 + [who],
            "item_id": [str(i) for i in range(5)] + ["new film", "new film"],
            "timestamp": [1000.0 + i for i in range(7)],
            "value": pa.array([1.0] * 7, pa.float32()),
            "event_type": ["click"] * 7,
        }
    )
    added = pa.table(
        {
            "item_id": ["new film"],
            "title": ["New Film"],
            "description": ["new"],
            "categories": pa.array([["Drama"]], pa.list_(pa.string())),
        }
    )
    gone = pseudonymise(key, "u5")
    export = LiveExport(
        "sqlite://x",
        7,
        events,
        added,
        pa.table({"user_id": [gone], "erased_at": [1e12]}),
    )
    cfg = PrepareConfig(min_user_interactions=2, min_item_interactions=2)
    data = run_local(with_live_events(_base(tmp_path), export, key), cfg)
    users = data.users["user_id"].to_pylist()
    assert who in users and newbie in users and gone not in users
    assert not any(u.startswith("u") and len(u) < 5 for u in users)  # no raw id
    assert "new film" in data.items["item_id"].to_pylist()
    assert data.identity == key_check(key) and data.live["through"] == 7
    assert data.counts.dropped["erased"] == 6
    # u0's old and new interactions are one sequence: 6 from the log + the new film.
    u0 = users.index(who)
    assert int((data.interactions["user_idx"].to_numpy() == u0).sum()) == 7
    assert EXTRA_PATH in with_live_events(_base(tmp_path), export, key).paths


def test_a_base_pseudonymised_with_another_key_is_refused(tmp_path):
    export = LiveExport(
        "s",
        0,
        pa.table({"user_id": pa.array([], pa.string())}),
        pa.table({"item_id": pa.array([], pa.string())}),
        pa.table({"user_id": pa.array([], pa.string()), "erased_at": pa.array([], pa.float64())}),
    )
    base = _base(tmp_path).pseudonymised(b"one key")
    with pytest.raises(LlmrecError, match="another key"):
        with_live_events(base, export, b"another key")


def test_schedules_parse_and_bad_ones_say_how():
    from cluster.commands.retrain import parse_every

    assert parse_every("6h") == 21600 and parse_every("90s") == 90 and parse_every("1.5d") == 129600
    for bad in ("6", "h", "-1h", "0m", "6 hours"):
        with pytest.raises(LlmrecError, match="--every"):
            parse_every(bad)


def test_the_scheduled_retrain_job_is_checked():
    from cluster import manifests as m

    cron = yaml.safe_load(m.RAYCRONJOB.read_text())
    store = "redis://llmrec-redis:6379/0"
    assert m.cronjob_problems(cron, store) == []
    bad = copy.deepcopy(cron)
    bad["spec"]["schedule"] = "every six hours"
    assert "not a cron expression" in " ".join(m.cronjob_problems(bad, store))
    other = m.cronjob_problems(cron, "redis://elsewhere:6379/0")
    assert any("serving graph's store" in p for p in other)
    typo = copy.deepcopy(cron)
    typo["spec"]["jobTemplate"]["entrypoint"] = "llmrec retrain --once --stor x"
    assert any("no option --stor" in p for p in m.cronjob_problems(typo, store))


def test_prepare_stores_pseudonyms_when_a_key_is_configured(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cluster.cli import app
    from pipelines.artifact import load_dataset

    monkeypatch.setenv("LLMREC_PSEUDONYM_KEY", "operator-key")
    out = tmp_path / "ds"
    result = CliRunner().invoke(app, ["prepare", "--engine", "local", "--out", str(out)])
    assert result.exit_code == 0, result.output
    ds = load_dataset(str(out))
    assert ds.manifest.identity == key_check(b"operator-key")
    users = ds.users["user_id"].to_pylist()
    assert pseudonymise(b"operator-key", "1") in users and "1" not in users
    # No raw id in any file of the artifact: user ids 1..943 as strings would be found in
    # the users table; its bytes hold only 32-hex pseudonyms now.
    assert all(len(u) == 32 for u in users)


def test_integer_item_ids_merge_with_the_stores_strings_without_api_items(tmp_path):
    base = _base(tmp_path)
    base.items = base.items.set_column(0, "item_id", pa.array(range(6), pa.int64()))
    import pyarrow.parquet as pq

    log = pq.read_table(base.paths[0])
    pq.write_table(
        log.set_column(1, "item_id", pa.array([i % 6 for i in range(36)])), base.paths[0]
    )
    key = b"k"
    events = pa.table(
        {
            "user_id": [pseudonymise(key, "u0")],
            "item_id": ["3"],
            "timestamp": [5000.0],
            "value": pa.array([1.0], pa.float32()),
            "event_type": ["click"],
        }
    )
    none = pa.table(
        {
            "item_id": pa.array([], pa.string()),
            "title": pa.array([], pa.string()),
            "description": pa.array([], pa.string()),
            "categories": pa.array([], pa.list_(pa.string())),
        }
    )
    erased = pa.table(
        {"user_id": pa.array([], pa.string()), "erased_at": pa.array([], pa.float64())}
    )
    cfg = PrepareConfig(min_user_interactions=2, min_item_interactions=2)
    data = run_local(with_live_events(base, LiveExport("s", 1, events, none, erased), key), cfg)
    assert data.items["item_id"].type == pa.string() and data.counts.dropped["unknown_item"] == 0
