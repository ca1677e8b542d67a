"""The Ray Data job on a real local Ray cluster: same artifact as the local engine."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.cli import main
from pipelines.artifact import load_dataset, write_dataset
from pipelines.errors import DataError
from pipelines.prepare import PrepareConfig, run_local
from pipelines.prepare_ray import run_ray
from pipelines.sources import load_source
from tests.datafiles import dense_log, write_ml1m

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def same_artifact(tmp_path, source, cfg: PrepareConfig | None = None):
    cfg = cfg or PrepareConfig()
    a = write_dataset(run_local(source, cfg), str(tmp_path / "local"))
    b = write_dataset(run_ray(source, cfg), str(tmp_path / "ray"))
    assert (a.engine, b.engine) == ("local", "ray")
    assert a.files == b.files, "Ray Data and local engines wrote different files"
    assert a.counts == b.counts
    return b


def test_ml100k_ray_equals_local(ray_cluster, tmp_path):
    m = same_artifact(tmp_path, load_source("ml-100k"))
    assert (m.n_users, m.n_items) == (943, 1348)


def test_ml1m_csv_reader_on_ray(ray_cluster, tmp_path):
    m = same_artifact(tmp_path, load_source("movielens", path=str(write_ml1m(tmp_path / "m"))))
    assert m.n_users == 8


def test_generic_multi_file_string_ids_on_ray(ray_cluster, tmp_path):
    rows = dense_log(n_users=30, n_items=12)
    t = pa.table(
        {
            "u": [f"user-{u}" for u, *_ in rows],
            "i": [f"item-{i:03d}" for _, i, _, _ in rows],
            "t": [f"2021-03-{1 + ts % 28:02d}T10:{ts % 60:02d}:00Z" for *_, ts in rows],
            "r": [r for _, _, r, _ in rows],
        }
    )
    folder = tmp_path / "parts"
    folder.mkdir()
    for k in range(4):  # several files -> several blocks and tasks
        pq.write_table(t.slice(k * 100, 100), folder / f"part-{k}.parquet")
    pq.write_table(t.slice(0, 15), folder / "part-9-replayed.parquet")  # duplicate events
    source = load_source(
        "generic", interactions=str(folder), columns="user=u,item=i,timestamp=t,value=r"
    )
    m = same_artifact(tmp_path, source, PrepareConfig(min_value=2))
    assert m.counts.dropped["below_threshold"] > 0
    replayed_above_threshold = sum(r >= 2 for r in t["r"].to_pylist()[:15])
    assert m.counts.dropped["duplicate"] == replayed_above_threshold


def test_a_file_with_other_columns_is_named(ray_cluster, tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    pq.write_table(pa.table({"u": [1], "i": [1], "t": [1]}), folder / "a.parquet")
    pq.write_table(pa.table({"u": [1], "item": [1], "t": [1]}), folder / "b.parquet")
    with pytest.raises(DataError, match=r"b.parquet' has no column 'i'"):
        load_source("generic", interactions=str(folder), columns="user=u,item=i,timestamp=t")


def test_parse_error_inside_a_ray_task_comes_back_as_a_user_error(ray_cluster, tmp_path):
    # Past the first 1 MB block, so the header check passes and a Ray read task meets it.
    good = "".join(f"{u},{i},{1000 + i}\n" for u in range(5000) for i in range(20))
    (tmp_path / "x.csv").write_text("u,i,t\n" + good + "1,2,3,4,5\n" + good)
    source = load_source(
        "generic", interactions=str(tmp_path / "x.csv"), columns="user=u,item=i,timestamp=t"
    )
    with pytest.raises(DataError, match=r"x.csv': CSV parse error: Expected 3 columns") as info:
        run_ray(source, PrepareConfig())
    assert type(info.value) is DataError
    assert "\n" not in str(info.value)


def test_cli_prepare_on_the_ray_engine(ray_cluster, tmp_path, capsys):
    out = tmp_path / "ds"
    with pytest.raises(SystemExit) as done:
        main(["prepare", "--dataset", "ml-100k", "--out", str(out), "--engine", "ray"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert "ray engine" in printed and "1,348" in printed
    ds = load_dataset(str(out), verify=True)
    assert ds.manifest.engine == "ray"
