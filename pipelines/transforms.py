"""Pure transforms of the preprocessing job: no Ray, no I/O.

Row-wise steps (`normalize_batch`, `flag_rows`, `count_reasons`, `partial_vocab`, `encode_ids`)
take and return one pyarrow batch so that the Ray Data job can call them in `map_batches`.
Global steps (`dedup_mask`, `kcore_mask`, `remap_contiguous`, `chronological_order`, splits,
`csr_from_pairs`, `popularity`) work on compact numpy columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import DataError
from pipelines.schema import (
    DROP_REASON,
    EVENT_TYPE,
    ITEM_ID,
    TIMESTAMP,
    USER_ID,
    VALUE,
    DropReason,
    Split,
)

# ---------------------------------------------------------------------------------------
# Row-wise steps
# ---------------------------------------------------------------------------------------


def _normalize_id(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Integer ids stay int64; integral floats become int64; anything else becomes a string."""
    if pa.types.is_integer(col.type):
        return pc.cast(col, pa.int64())
    if pa.types.is_floating(col.type):
        try:
            return pc.cast(col, pa.int64())  # safe cast: raises on fractional values
        except pa.ArrowInvalid:
            pass
    if pa.types.is_dictionary(col.type):
        col = pc.cast(col, col.type.value_type)
    return pc.cast(col, pa.string())


def _parse_timestamp(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Epoch seconds as int64; values that cannot be parsed become null."""
    t = col.type
    if pa.types.is_integer(t):
        return pc.cast(col, pa.int64())
    if pa.types.is_floating(t):
        return pc.cast(pc.floor(col), pa.int64(), safe=False)
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        secs = pc.cast(pc.cast(col, pa.timestamp("s")), pa.int64())
        return secs
    # Strings: numbers first, then ISO 8601 dates; anything else is null.
    import pandas as pd

    s = pd.Series(pc.cast(col, pa.string()).to_pandas(), dtype="object")
    num = pd.to_numeric(s, errors="coerce")
    out = np.floor(num.to_numpy(dtype="float64"))
    missing = np.isnan(out) & s.notna().to_numpy()
    if missing.any():
        dt = pd.to_datetime(s[missing], errors="coerce", utc=True, format="ISO8601")
        # pandas 3 picks the resolution per input: compute seconds, not int64 // 1e9.
        secs = (dt - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
        out[missing] = secs.to_numpy(dtype="float64", na_value=np.nan)
    mask = np.isnan(out)
    return pa.array(np.where(mask, 0, out).astype(np.int64), mask=mask)


@dataclass(frozen=True)
class ColumnMapping:
    """Which raw column holds each canonical field; `value` and `event_type` are optional."""

    user: str
    item: str
    timestamp: str
    value: str | None = None
    event_type: str | None = None

    def required(self) -> list[str]:
        return [c for c in (self.user, self.item, self.timestamp, self.value, self.event_type) if c]

    @classmethod
    def parse(cls, spec: str) -> ColumnMapping:
        """Parse ``user=uid,item=iid,timestamp=ts[,value=r][,event_type=kind]``."""
        fields: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, name = part.partition("=")
            key = {"event": "event_type", "rating": "value", "time": "timestamp"}.get(
                key.strip(), key.strip()
            )
            if not sep or key not in {"user", "item", "timestamp", "value", "event_type"}:
                raise DataError(
                    f"bad column mapping '{part}': use user=COL,item=COL,timestamp=COL"
                    "[,value=COL][,event_type=COL]"
                )
            fields[key] = name.strip()
        missing = {"user", "item", "timestamp"} - fields.keys()
        if missing:
            raise DataError(
                f"column mapping lacks {', '.join(sorted(missing))}: "
                "use user=COL,item=COL,timestamp=COL"
            )
        return cls(**fields)


def check_columns(names: Iterable[str], mapping: ColumnMapping, where: str) -> None:
    """Raise a DataError naming the missing columns and the ones that exist."""
    names = list(names)
    missing = [c for c in mapping.required() if c not in names]
    if missing:
        raise DataError(
            f"{where} has no column {', '.join(repr(m) for m in missing)} "
            f"(it has: {', '.join(names)}); map the right columns with --columns "
            "user=COL,item=COL,timestamp=COL"
        )


def normalize_batch(batch: pa.Table, mapping: ColumnMapping, where: str = "input") -> pa.Table:
    """Rename and cast a raw batch to the canonical columns."""
    check_columns(batch.column_names, mapping, where)
    n = batch.num_rows
    value = (
        pc.cast(batch[mapping.value], pa.float32(), safe=False)
        if mapping.value
        else pa.array(np.ones(n, dtype=np.float32))
    )
    event = (
        pc.cast(batch[mapping.event_type], pa.string())
        if mapping.event_type
        else pa.nulls(n, pa.string())
    )
    return pa.table(
        {
            USER_ID: _normalize_id(batch[mapping.user]),
            ITEM_ID: _normalize_id(batch[mapping.item]),
            TIMESTAMP: _parse_timestamp(batch[mapping.timestamp]),
            VALUE: value,
            EVENT_TYPE: event,
        }
    )


def flag_rows(
    batch: pa.Table,
    *,
    min_value: float | None = None,
    negative_event_types: Iterable[str] = ("dislike",),
    known_items: pa.Array | None = None,
    erased: pa.Table | None = None,
    as_of: float | None = None,
) -> pa.Table:
    """Add a `drop_reason` column (0 = kept); the first failing check names the reason.

    `erased` (user_id, erased_at): a row of one of those users from before their erasure is
    dropped; what they did after it is kept. A row's time is its timestamp, or `as_of` for
    a batch known as a whole at one moment (a prepared dataset: its creation time; an event
    store's export: +inf, since the store erased what came before already)."""
    n = batch.num_rows
    reason = np.zeros(n, dtype=np.int8)

    def mark(mask: np.ndarray, why: DropReason) -> None:
        reason[(reason == 0) & mask] = why

    def as_np(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
        return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)

    mark(as_np(pc.or_(pc.is_null(batch[USER_ID]), pc.is_null(batch[ITEM_ID]))), DropReason.NULL_ID)
    mark(as_np(pc.is_null(batch[TIMESTAMP])), DropReason.BAD_TIMESTAMP)
    if min_value is not None:
        below = pc.or_(pc.is_null(batch[VALUE]), pc.less(batch[VALUE], min_value))
        mark(as_np(below), DropReason.BELOW_THRESHOLD)
    negatives = list(negative_event_types)
    if negatives:
        neg = pc.is_in(batch[EVENT_TYPE], value_set=pa.array(negatives, pa.string()))
        mark(as_np(neg), DropReason.NEGATIVE_EVENT)
    if known_items is not None:
        known = pc.is_in(batch[ITEM_ID], value_set=known_items)
        mark(~as_np(known), DropReason.UNKNOWN_ITEM)
    if erased is not None and erased.num_rows:
        ids = erased[USER_ID].combine_chunks()
        at = pc.index_in(pc.cast(batch[USER_ID], ids.type), value_set=ids)
        when = pc.take(erased["erased_at"].combine_chunks(), at)
        times = (
            pc.cast(batch[TIMESTAMP], pa.float64())
            if as_of is None
            else pa.scalar(as_of, pa.float64())
        )
        before = pc.less(times, when)
        mark(as_np(before), DropReason.ERASED)
    return batch.append_column(DROP_REASON, pa.array(reason))


def count_reasons(batch: pa.Table) -> dict[str, np.ndarray]:
    """Per-batch histogram of drop reasons (summed across batches by the caller)."""
    counts = np.bincount(
        batch[DROP_REASON].to_numpy(zero_copy_only=False), minlength=len(DropReason)
    )
    return {"reason": np.arange(len(DropReason), dtype=np.int8), "count": counts.astype(np.int64)}


def keep_rows(batch: pa.Table) -> pa.Table:
    kept = batch.filter(pc.equal(batch[DROP_REASON], 0))
    return kept.drop_columns([DROP_REASON])


def partial_vocab(batch: pa.Table) -> dict[str, pa.Array]:
    """Distinct user and item ids of one batch, merged globally by `merge_vocab`."""
    users = pc.unique(batch[USER_ID])
    items = pc.unique(batch[ITEM_ID])
    width = max(len(users), len(items))

    def pad(a: pa.Array) -> pa.Array:
        return pa.concat_arrays([a, pa.nulls(width - len(a), a.type)])

    return {"users": pad(users), "items": pad(items)}


def merge_vocab(parts: Iterable[pa.Array | pa.ChunkedArray]) -> pa.Array:
    """Sorted distinct non-null ids: position in this array is the id's dense code."""
    chunks = [p.combine_chunks() if isinstance(p, pa.ChunkedArray) else p for p in parts]
    chunks = [c for c in chunks if len(c)]
    if not chunks:
        return pa.array([], pa.int64())
    types = {c.type for c in chunks}
    if len(types) > 1:  # ints in one file, strings in another: compare everything as text
        chunks = [pc.cast(c, pa.string()) for c in chunks]
    merged = pc.unique(pc.drop_null(pa.concat_arrays(chunks)))
    return pc.take(merged, pc.sort_indices(merged))


def encode_ids(batch: pa.Table, users: pa.Array, items: pa.Array) -> dict[str, np.ndarray]:
    """Replace raw ids by their dense code in the sorted vocabularies."""

    def code(col: pa.ChunkedArray, vocab: pa.Array) -> np.ndarray:
        if col.type != vocab.type:
            col = pc.cast(col, vocab.type)
        idx = pc.index_in(col, value_set=vocab)
        return idx.to_numpy(zero_copy_only=False).astype(np.int32)

    return {
        "user": code(batch[USER_ID], users),
        "item": code(batch[ITEM_ID], items),
        TIMESTAMP: batch[TIMESTAMP].to_numpy(zero_copy_only=False).astype(np.int64),
        VALUE: batch[VALUE].to_numpy(zero_copy_only=False).astype(np.float32),
    }


# ---------------------------------------------------------------------------------------
# Global steps on compact integer columns
# ---------------------------------------------------------------------------------------


def dedup_mask(
    user: np.ndarray,
    item: np.ndarray,
    timestamp: np.ndarray,
    keep: str = "first",
    presorted: bool = False,
) -> np.ndarray:
    """Keep one row per (user, item): the earliest (`first`) or the latest (`last`).

    Among rows with the same timestamp the earlier row in the input wins, so the result does
    not depend on anything but the data. Input in any order; `presorted=True` says it is
    already in `chronological_order` (only valid with keep="first"), which skips the sort.
    """
    import pandas as pd

    if keep not in ("first", "last"):
        raise ValueError(f"keep must be 'first' or 'last', not {keep!r}")
    n = len(user)
    if n == 0:
        return np.zeros(0, dtype=bool)
    # Negated times put each pair's latest row first; the stable sort keeps input order on ties.
    if presorted and keep == "first":
        order = np.arange(n)
    else:
        order = chronological_order(user, item, timestamp if keep == "first" else -timestamp)
    key = user[order].astype(np.int64) * (int(item.max()) + 1) + item[order]
    dup = pd.Series(key).duplicated(keep="first").to_numpy()
    mask = np.zeros(n, dtype=bool)
    mask[order[~dup]] = True
    return mask


def kcore_mask(
    user: np.ndarray, item: np.ndarray, min_user: int, min_item: int, max_rounds: int = 100
) -> tuple[np.ndarray, int]:
    """Iteratively drop users with < min_user and items with < min_item interactions.

    Returns the keep mask and the number of rounds it took to converge.
    """
    keep = np.ones(len(user), dtype=bool)
    n_users = int(user.max()) + 1 if len(user) else 0
    n_items = int(item.max()) + 1 if len(item) else 0
    for rounds in range(1, max_rounds + 1):
        u_count = np.bincount(user[keep], minlength=n_users)
        i_count = np.bincount(item[keep], minlength=n_items)
        bad = keep & ((u_count[user] < min_user) | (i_count[item] < min_item))
        if not bad.any():
            return keep, rounds
        keep &= ~bad
    raise DataError(f"k-core filtering did not converge in {max_rounds} rounds")


def remap_contiguous(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map the non-negative codes that occur to 0..k-1 in increasing order.

    Returns (new ids per row, old code of each new id). Order is preserved, so contiguous
    ids follow the sorted raw ids. O(n): a bincount, not a sort.
    """
    if len(codes) == 0:
        return codes.astype(np.int32), np.zeros(0, dtype=np.int64)
    used = np.flatnonzero(np.bincount(codes))
    lookup = np.zeros(int(codes.max()) + 1, dtype=np.int32)
    lookup[used] = np.arange(len(used), dtype=np.int32)
    return lookup[codes], used


def _pack(major: np.ndarray, minor: np.ndarray) -> np.ndarray | None:
    """One int64 key ordering like (major, minor), or None when it would overflow."""
    lo_a, hi_a = int(major.min()), int(major.max())
    lo_b, hi_b = int(minor.min()), int(minor.max())
    span_b = hi_b - lo_b + 1
    if (hi_a - lo_a + 1) * span_b > 2**63:  # the largest key must fit a signed int64
        return None
    return (major.astype(np.int64) - lo_a) * span_b + (minor.astype(np.int64) - lo_b)


def chronological_order(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """Stable row order by (user, timestamp, item): the deterministic per-user sequence order.

    Keys are packed into one int64 where their ranges allow (one stable sort instead of a
    three-key lexsort: about 3x faster at 5M rows).
    """
    if len(user) == 0:
        return np.zeros(0, dtype=np.int64)
    for times in (timestamp, None):
        if times is None:  # raw times span too many bits: their dense rank orders the same
            times = np.unique(timestamp, return_inverse=True)[1].reshape(-1)
        user_time = _pack(user, times)
        full = None if user_time is None else _pack(user_time, item)
        if full is not None:
            return np.argsort(full, kind="stable")
    return np.lexsort((item, timestamp, user))


def user_offsets(sorted_user: np.ndarray, n_users: int) -> np.ndarray:
    """CSR-style offsets: rows of user u are indptr[u]:indptr[u+1] in a user-sorted array."""
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(sorted_user, minlength=n_users), out=indptr[1:])
    return indptr


def leave_one_out_split(sorted_user: np.ndarray, n_users: int, min_length: int = 3) -> np.ndarray:
    """Last interaction of each user is test, second-to-last validation, the rest train.

    `sorted_user` must be in chronological order per user. Users with fewer than `min_length`
    interactions keep everything in train.
    """
    indptr = user_offsets(sorted_user, n_users)
    lengths = np.diff(indptr)
    from_end = indptr[sorted_user + 1] - 1 - np.arange(len(sorted_user))
    eligible = lengths[sorted_user] >= min_length
    split = np.full(len(sorted_user), Split.TRAIN, dtype=np.int8)
    split[eligible & (from_end == 0)] = Split.TEST
    split[eligible & (from_end == 1)] = Split.VALIDATION
    return split


def temporal_split(
    timestamp: np.ndarray, validation_fraction: float = 0.1, test_fraction: float = 0.1
) -> tuple[np.ndarray, tuple[int, int]]:
    """Global cut by time: the latest `test_fraction` of interactions are test, the
    `validation_fraction` before them validation. Returns the split codes and the two cut
    timestamps (validation starts at the first, test at the second)."""
    if not (0 <= validation_fraction < 1 and 0 < test_fraction < 1):
        raise DataError("temporal split fractions must lie in [0, 1) and sum to less than 1")
    if validation_fraction + test_fraction >= 1:
        raise DataError("temporal split: validation + test fractions must be below 1")
    ts_sorted = np.sort(timestamp)
    n = len(ts_sorted)
    t_test = int(ts_sorted[min(n - 1, int(np.floor(n * (1 - test_fraction))))])
    t_val = int(ts_sorted[min(n - 1, int(np.floor(n * (1 - test_fraction - validation_fraction))))])
    split = np.full(n, Split.TRAIN, dtype=np.int8)
    split[timestamp >= t_val] = Split.VALIDATION
    split[timestamp >= t_test] = Split.TEST
    return split, (t_val, t_test)


@dataclass(frozen=True)
class Csr:
    """A CSR matrix as plain arrays (what `scipy.sparse.csr_matrix` and `implicit` take)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    shape: tuple[int, int]

    def to_scipy(self):  # scipy is imported lazily: serving may only need the arrays
        import scipy.sparse as sp

        return sp.csr_matrix((self.data, self.indices, self.indptr), shape=self.shape)

    @property
    def nnz(self) -> int:
        return len(self.indices)


def csr_from_pairs(
    user: np.ndarray, item: np.ndarray, value: np.ndarray, shape: tuple[int, int]
) -> Csr:
    """User x item CSR with each row's items sorted; duplicate pairs are summed."""
    import scipy.sparse as sp

    m = sp.csr_matrix((value.astype(np.float32), (user, item)), shape=shape)
    m.sum_duplicates()  # also sorts the column indices of each row
    return Csr(
        m.indptr.astype(np.int64), m.indices.astype(np.int32), m.data.astype(np.float32), shape
    )


def popularity(
    item: np.ndarray, timestamp: np.ndarray, n_items: int, recent_days: float = 30.0
) -> dict[str, np.ndarray]:
    """Interaction counts per item overall and within the last `recent_days` of the data."""
    count = np.bincount(item, minlength=n_items).astype(np.int64)
    if len(timestamp):
        start = int(timestamp.max()) - int(recent_days * 86400)
        recent = np.bincount(item[timestamp >= start], minlength=n_items).astype(np.int64)
        first = np.full(n_items, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, item, timestamp)
        last = np.full(n_items, np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(last, item, timestamp)
    else:
        recent = np.zeros(n_items, dtype=np.int64)
        first = last = np.zeros(n_items, dtype=np.int64)
    return {"count": count, "recent_count": recent, "first_seen": first, "last_seen": last}


def sum_reason_counts(parts: Iterable[Mapping[str, np.ndarray]]) -> dict[str, int]:
    """Merge per-batch `count_reasons` outputs into {reason label: rows}."""
    total = np.zeros(len(DropReason), dtype=np.int64)
    for part in parts:
        np.add.at(total, np.asarray(part["reason"], dtype=np.int64), np.asarray(part["count"]))
    return {DropReason(r).label: int(c) for r, c in enumerate(total)}
