"""Every source format, through the local engine (same functions as the Ray Data job)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.errors import DataError
from pipelines.prepare import PrepareConfig, run_local
from pipelines.schema import Split
from pipelines.sources import load_source
from pipelines.sources.movielens_files import detect_layout
from pipelines.sources.synthetic import SyntheticSpec, generate
from pipelines.storage import resolve
from tests.datafiles import dense_log, write_ml1m, write_ml100k, write_ml_csv

CFG = PrepareConfig()


@pytest.mark.parametrize(
    ("writer", "layout", "title"),
    [
        (write_ml100k, "ml-100k-files", "Movie 1 (1995)"),
        (write_ml1m, "ml-1m", "Film: Part 1 (1999)"),
        (write_ml_csv, "ml-csv", "Film, The 1 (2001)"),
    ],
)
def test_movielens_layouts(tmp_path, writer, layout, title):
    folder = writer(tmp_path / "ml")
    source = load_source("movielens", path=str(folder))
    assert source.kind == layout
    data = run_local(source, CFG)
    # 8 dense users survive 5-core, the 2-row user does not.
    assert data.counts.rows["raw"] == 8 * 7 + 2
    assert data.n_users == 8 and data.n_items == 7
    assert data.counts.dropped["kcore"] == 2
    assert data.items["title"][0].as_py() == title
    assert data.items["categories"][0].as_py()
    splits = data.interactions["split"].to_numpy()
    assert (splits == Split.TEST).sum() == 8 and (splits == Split.VALIDATION).sum() == 8


def test_movielens_missing_files(tmp_path):
    (tmp_path / "u.data").write_text("1\t1\t1\t1\n")
    with pytest.raises(DataError, match="no MovieLens files found"):
        load_source("movielens", path=str(tmp_path))
    with pytest.raises(DataError, match="not a folder"):
        detect_layout(*resolve(str(tmp_path / "nope")))


def _generic_files(tmp_path, fmt: str):
    rows = dense_log()
    table = pa.table(
        {
            "who": [f"u{u}" for u, *_ in rows],
            "what": [i for _, i, _, _ in rows],
            "when": [f"2021-01-01T00:{t % 60:02d}:{t % 7:02d}Z" for *_, t in rows],
            "score": [float(r) for _, _, r, _ in rows],
            "kind": ["dislike" if k == 3 else "click" for k in range(len(rows))],
        }
    )
    items = pa.table(
        {
            "iid": list(range(1, 8)),
            "name": [f"Thing {i}" for i in range(1, 8)],
            "blurb": [f"About thing {i}" for i in range(1, 8)],
            "tags": ["a|b"] * 7,
        }
    )
    inter = tmp_path / f"inter.{fmt}"
    item_path = tmp_path / f"items.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, inter)
        pq.write_table(items, item_path)
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, inter)
        pacsv.write_csv(items, item_path)
    return inter, item_path


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_generic_with_mapping(tmp_path, fmt):
    inter, items = _generic_files(tmp_path, fmt)
    source = load_source(
        "generic",
        interactions=str(inter),
        columns="user=who,item=what,timestamp=when,value=score,event_type=kind",
        items=str(items),
        item_columns="id=iid,title=name,text=blurb,categories=tags",
    )
    data = run_local(source, PrepareConfig(min_user_interactions=1, min_item_interactions=1))
    assert data.counts.dropped["negative_event"] == 1
    assert data.users["user_id"].type == pa.string()
    row = data.items.slice(0, 1).to_pylist()[0]
    assert row["title"] == "Thing 1" and row["categories"] == ["a", "b"]
    assert row["text"].startswith("Thing 1 (genres: a, b). About thing 1")


def test_generic_folder_of_files_and_uri(tmp_path):
    inter, _ = _generic_files(tmp_path, "parquet")
    folder = tmp_path / "parts"
    folder.mkdir()
    t = pq.read_table(inter)
    pq.write_table(t.slice(0, 20), folder / "a.parquet")
    pq.write_table(t.slice(20), folder / "b.parquet")
    source = load_source(
        "generic", interactions=f"file://{folder}", columns="user=who,item=what,timestamp=when"
    )
    assert len(source.paths) == 2
    assert run_local(source, CFG).counts.rows["raw"] == t.num_rows


def test_synthetic_has_power_law_and_sequential_structure(tmp_path):
    spec = SyntheticSpec(n_interactions=20_000, n_items=500, n_users=300, seed=1)
    folder = generate(spec, tmp_path / "syn")
    t = pa.concat_tables([pq.read_table(p) for p in sorted((folder / "interactions").glob("*"))])
    assert abs(t.num_rows - 20_000) < 2_000
    counts = np.sort(np.bincount(t["item"].to_numpy()))[::-1]
    assert counts[:25].sum() > 0.2 * counts.sum()  # head-heavy popularity
    items = t["item"].to_numpy()
    users = t["user"].to_numpy()
    same_user = users[1:] == users[:-1]
    successor = (items[1:] - items[:-1] == 1) & same_user
    assert successor.sum() / same_user.sum() > 0.15  # the planted successor share is 0.3
    # Regenerating with the same spec is a no-op; the files are reused.
    before = sorted(p.stat().st_mtime_ns for p in (folder / "interactions").glob("*"))
    generate(spec, tmp_path / "syn")
    assert sorted(p.stat().st_mtime_ns for p in (folder / "interactions").glob("*")) == before


def test_synthetic_through_the_source_registry(tmp_path):
    source = load_source("synthetic", synthetic_interactions=5_000, cache=tmp_path)
    data = run_local(source, CFG)
    assert data.n_users > 50 and data.items["title"].null_count == 0


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(DataError, match=r"unknown dataset 'ml-200k'.*ml-100k"):
        load_source("ml-200k")
