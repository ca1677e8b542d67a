"""Pure transforms of the preprocessing job: no Ray, no I/O.

Row-wise steps (`normalize_batch`, `flag_rows`, `count_reasons`, `partial_vocab`, `encode_ids`)
take and return one pyarrow batch so that the Ray Data job can call them in `map_batches`.
The global steps on the encoded columns are in `pipelines.global_steps`.
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


def sum_reason_counts(parts: Iterable[Mapping[str, np.ndarray]]) -> dict[str, int]:
    """Merge per-batch `count_reasons` outputs into {reason label: rows}."""
    total = np.zeros(len(DropReason), dtype=np.int64)
    for part in parts:
        np.add.at(total, np.asarray(part["reason"], dtype=np.int64), np.asarray(part["count"]))
    return {DropReason(r).label: int(c) for r, c in enumerate(total)}
