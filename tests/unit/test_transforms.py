"""The pure transforms, on small hand-made inputs (no Ray, milliseconds)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipelines.errors import DataError
from pipelines.global_steps import (
    chronological_order,
    csr_from_pairs,
    dedup_mask,
    kcore_mask,
    leave_one_out_split,
    popularity,
    remap_contiguous,
    temporal_split,
)
from pipelines.schema import DROP_REASON, DropReason, Split
from pipelines.transforms import (
    ColumnMapping,
    count_reasons,
    encode_ids,
    flag_rows,
    keep_rows,
    merge_vocab,
    normalize_batch,
    partial_vocab,
    sum_reason_counts,
)

MAP = ColumnMapping(user="u", item="i", timestamp="t", value="r", event_type="e")


def raw(**cols) -> pa.Table:
    base = {
        "u": [1, 2, 3],
        "i": [10, 20, 30],
        "t": [100, 200, 300],
        "r": [5, 3, 1],
        "e": ["view", "click", "dislike"],
    }
    base.update(cols)
    return pa.table(base)


def test_normalize_keeps_integer_ids_and_parses_timestamps():
    t = normalize_batch(raw(t=["100", "2020-01-01T00:00:00Z", "not a date"]), MAP)
    assert t["user_id"].type == pa.int64()
    assert t["timestamp"].to_pylist() == [100, 1577836800, None]
    assert t["value"].type == pa.float32()


def test_normalize_makes_string_ids_and_accepts_timestamp_types():
    ts = pa.array([0, 86_400, 172_800], pa.timestamp("s"))
    t = normalize_batch(raw(u=["a", "b", None], t=ts), MAP)
    assert t["user_id"].to_pylist() == ["a", "b", None]
    assert t["timestamp"].to_pylist() == [0, 86_400, 172_800]


def test_normalize_names_the_missing_column():
    with pytest.raises(DataError, match=r"no column 'i'.*it has: u, t"):
        normalize_batch(pa.table({"u": [1], "t": [1]}), ColumnMapping("u", "i", "t"))


def test_flag_rows_records_the_first_failing_reason():
    t = normalize_batch(
        raw(
            u=[1, None, 3, 4, 5],
            i=[10, 20, 30, 40, 99],
            t=[1, 2, None, 4, 5],
            r=[5, 5, 5, 1, 5],
            e=["view", "view", "view", "view", "dislike"],
        ),
        MAP,
    )
    f = flag_rows(t, min_value=2, known_items=pa.array([10, 20, 30, 40]))
    assert f[DROP_REASON].to_pylist() == [
        DropReason.KEPT,
        DropReason.NULL_ID,
        DropReason.BAD_TIMESTAMP,
        DropReason.BELOW_THRESHOLD,
        DropReason.NEGATIVE_EVENT,
    ]
    counts = sum_reason_counts([count_reasons(f), count_reasons(f)])
    assert counts["kept"] == 2 and counts["null_id"] == 2 and counts["unknown_item"] == 0
    assert keep_rows(f).num_rows == 1


def test_vocab_is_sorted_and_merged_across_batches():
    a = normalize_batch(raw(u=[3, 1, 3]), MAP)
    b = normalize_batch(raw(u=[2, 2, 9], i=[10, 40, 40]), MAP)
    users = merge_vocab([partial_vocab(a)["users"], partial_vocab(b)["users"]])
    items = merge_vocab([partial_vocab(a)["items"], partial_vocab(b)["items"]])
    assert users.to_pylist() == [1, 2, 3, 9]
    assert items.to_pylist() == [10, 20, 30, 40]
    enc = encode_ids(b, users, items)
    assert enc["user"].tolist() == [1, 1, 3] and enc["item"].tolist() == [0, 3, 3]


def test_dedup_keeps_earliest_or_latest_pair():
    u = np.array([0, 0, 0, 1])
    i = np.array([5, 5, 6, 5])
    t = np.array([30, 10, 20, 10])
    assert dedup_mask(u, i, t, "first").tolist() == [False, True, True, True]
    assert dedup_mask(u, i, t, "last").tolist() == [True, False, True, True]


def test_dedup_tie_keeps_the_earlier_row():
    u, i, t = np.zeros(3, int), np.zeros(3, int), np.full(3, 7)
    assert dedup_mask(u, i, t).tolist() == [True, False, False]
    assert dedup_mask(u, i, t, "last").tolist() == [True, False, False]
    t = np.array([7, 9, 9])
    assert dedup_mask(u, i, t, "last").tolist() == [False, True, False]


def test_kcore_iterates_until_stable():
    # Item 2 has one user (3): dropping it leaves user 3 with one item, dropped next round.
    u = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    i = np.array([0, 1, 0, 1, 0, 1, 1, 2])
    keep, rounds = kcore_mask(u, i, min_user=2, min_item=2)
    assert rounds == 3
    assert keep.tolist() == [True] * 6 + [False, False]


def test_kcore_on_everything_returns_empty_mask():
    keep, _ = kcore_mask(np.array([0, 1]), np.array([0, 1]), 5, 5)
    assert not keep.any()


def test_remap_preserves_order():
    new, old = remap_contiguous(np.array([7, 3, 7, 9]))
    assert new.tolist() == [1, 0, 1, 2] and old.tolist() == [3, 7, 9]


def test_chronological_order_without_packing_agrees_with_lexsort():
    rng = np.random.default_rng(0)
    u = rng.integers(0, 1 << 20, 5000)
    i = rng.integers(0, 1 << 20, 5000)
    t = rng.integers(0, 1 << 40, 5000) * (rng.random(5000) < 0.5)  # spans too many bits
    order = chronological_order(u, i, t)
    assert (order == np.lexsort((i, t, u))).all()


def test_dedup_presorted_agrees():
    rng = np.random.default_rng(1)
    u, i, t = rng.integers(0, 20, 500), rng.integers(0, 10, 500), rng.integers(0, 5, 500)
    order = chronological_order(u, i, t)
    expected = dedup_mask(u, i, t)[order]
    assert (dedup_mask(u[order], i[order], t[order], presorted=True) == expected).all()


def test_chronological_order_breaks_ties_by_item():
    u = np.array([0, 0, 0, 1])
    i = np.array([9, 2, 5, 1])
    t = np.array([5, 5, 1, 0])
    order = chronological_order(u, i, t)
    assert i[order].tolist() == [5, 2, 9, 1]


def test_leave_one_out_split_last_is_test_second_last_validation():
    users = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    split = leave_one_out_split(users, 3)
    t, v, r = Split.TEST, Split.VALIDATION, Split.TRAIN
    assert split.tolist() == [r, r, v, t, r, r, r, v, t]


def test_temporal_split_cuts_by_time():
    ts = np.arange(100)
    split, (t_val, t_test) = temporal_split(ts, 0.1, 0.2)
    assert (t_val, t_test) == (70, 80)
    assert (split == Split.TEST).sum() == 20 and (split == Split.VALIDATION).sum() == 10
    with pytest.raises(DataError):
        temporal_split(ts, 0.6, 0.5)


def test_csr_sums_duplicates_and_sorts_rows():
    m = csr_from_pairs(
        np.array([1, 0, 1, 1]), np.array([2, 1, 0, 2]), np.ones(4, np.float32), (3, 3)
    )
    dense = m.to_scipy().toarray()
    assert dense.tolist() == [[0, 1, 0], [1, 0, 2], [0, 0, 0]]
    assert m.indptr.tolist() == [0, 1, 3, 3]


def test_popularity_counts_recent_window():
    item = np.array([0, 0, 1, 2])
    ts = np.array([0, 100 * 86400, 99 * 86400, 10])
    p = popularity(item, ts, 4, recent_days=30)
    assert p["count"].tolist() == [2, 1, 1, 0]
    assert p["recent_count"].tolist() == [1, 1, 0, 0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("user=a,item=b", "lacks timestamp"),
        ("user=a,item=b,timestamp=c,colour=d", "bad column mapping"),
        ("nonsense", "bad column mapping"),
    ],
)
def test_column_mapping_errors(spec, message):
    with pytest.raises(DataError, match=message):
        ColumnMapping.parse(spec)


def test_column_mapping_aliases():
    m = ColumnMapping.parse("user=a, item=b, time=c, rating=d, event=e")
    assert (m.timestamp, m.value, m.event_type) == ("c", "d", "e")
