"""The preprocessing job, engine-independent parts: config, and the global steps.

Both engines produce the same `Encoded` columns (row-wise work: read, normalise, validate,
encode ids) and hand them to `finalize`, which runs dedup, k-core, remap, sequences, split,
matrices and popularity. `run_local` is the single-process engine (the benchmark baseline and
a fallback); `pipelines.prepare_ray.run_ray` is the Ray Data engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.artifact import Counts, PreparedData, SourceInfo
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
from pipelines.item_text import render_item_text
from pipelines.schema import (
    INTERACTIONS_SCHEMA,
    ITEM_CATEGORIES,
    ITEM_DESCRIPTION,
    ITEM_ID,
    ITEM_IDX,
    ITEM_TEXT,
    ITEM_TITLE,
    SPLIT,
    TIMESTAMP,
    USER_IDX,
    VALUE,
    DropReason,
    Split,
)
from pipelines.sources.base import Source
from pipelines.transforms import (
    count_reasons,
    encode_ids,
    flag_rows,
    keep_rows,
    merge_vocab,
    sum_reason_counts,
)


class PrepareConfig(BaseModel):
    """Parameters of the preprocessing job; recorded in the manifest."""

    model_config = ConfigDict(extra="forbid")

    min_user_interactions: int = Field(5, ge=1, description="k-core: minimum per user")
    min_item_interactions: int = Field(5, ge=1, description="k-core: minimum per item")
    min_value: float | None = Field(
        None, description="implicit-feedback threshold: drop rows whose value is below it"
    )
    negative_event_types: list[str] = Field(default_factory=lambda: ["dislike"])
    dedup_keep: Literal["first", "last"] = "first"
    split: Literal["leave_one_out", "temporal"] = "leave_one_out"
    validation_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, gt=0, lt=1)
    recent_days: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _fractions(self) -> PrepareConfig:
        if self.validation_fraction + self.test_fraction >= 1:
            raise ValueError("validation_fraction + test_fraction must be below 1")
        return self


@dataclass
class Encoded:
    """Kept rows with dense codes into the sorted id vocabularies."""

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    value: np.ndarray
    user_vocab: pa.Array
    item_vocab: pa.Array
    dropped: dict[str, int]
    raw_rows: int


def check_row_counts(dropped: dict[str, int], raw_rows: int, source: Source) -> None:
    """Whole-column failures are mapping mistakes, not bad rows: say so."""
    if raw_rows == 0:
        raise DataError(f"the interactions of '{source.location}' are empty")
    m = source.mapping
    if dropped[DropReason.NULL_ID.label] == raw_rows:
        raise DataError(
            f"every row has a null user or item id; check --columns user={m.user},item={m.item}"
        )
    if dropped[DropReason.BAD_TIMESTAMP.label] == raw_rows:
        raise DataError(
            f"no timestamp in column '{m.timestamp}' could be parsed (expected epoch seconds or "
            "ISO 8601 dates); map the right column with --columns timestamp=COL"
        )
    if dropped[DropReason.UNKNOWN_ITEM.label] == raw_rows:
        raise DataError(
            "no interaction refers to an item of the items table; check the id column of "
            "--item-columns"
        )


def flag_kwargs(source: Source, cfg: PrepareConfig) -> dict:
    return {
        "min_value": cfg.min_value,
        "negative_event_types": tuple(cfg.negative_event_types),
        "known_items": source.known_items(),
        "erased": source.erased,
    }


def run_local(source: Source, cfg: PrepareConfig) -> PreparedData:
    """Single process, same functions: read file by file, then the global steps."""
    kept, reasons, raw = [], [], 0
    kwargs = flag_kwargs(source, cfg)
    for path in source.paths:
        batch = source.read_canonical(path)
        flagged = flag_rows(batch, **kwargs, as_of=source.as_of.get(path))
        raw += flagged.num_rows
        reasons.append(count_reasons(flagged))
        kept.append(keep_rows(flagged))
    dropped = sum_reason_counts(reasons)
    check_row_counts(dropped, raw, source)
    table = pa.concat_tables(kept)
    users = merge_vocab([table["user_id"]])
    items = merge_vocab([table["item_id"]])
    cols = encode_ids(table, users, items)
    enc = Encoded(
        cols["user"], cols["item"], cols[TIMESTAMP], cols[VALUE], users, items, dropped, raw
    )
    return finalize(enc, source, cfg, engine="local")


def _attributes(table: pa.Table | None, key: str, ids: pa.Array) -> pa.Table:
    """Rows of `table` for the kept ids in index order (ids it lacks get null attributes)."""
    idx_col = USER_IDX if key == "user_id" else ITEM_IDX
    base = {idx_col: pa.array(np.arange(len(ids), dtype=np.int32)), key: ids}
    if table is None:
        return pa.table(base)
    keys = table[key].combine_chunks()
    if keys.type != ids.type:
        try:
            keys = pc.cast(keys, ids.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise DataError(
                f"the {key} column of the {key.split('_')[0]}s table ({keys.type}) does not "
                f"match the interactions' ids ({ids.type}); fix the id column mapping"
            ) from e
    rows = table.drop_columns([key]).take(pc.index_in(ids, value_set=keys))
    return pa.table({**base, **{c: rows[c] for c in rows.column_names}})


def finalize(enc: Encoded, source: Source, cfg: PrepareConfig, engine: str) -> PreparedData:
    """The global steps on compact integer columns; the same for both engines."""
    dropped = dict(enc.dropped)
    rows = {"raw": enc.raw_rows, "cleaned": len(enc.user)}
    n_users_clean = len(np.unique(enc.user)) if len(enc.user) else 0
    n_items_clean = len(np.unique(enc.item)) if len(enc.item) else 0

    # Sort once, first: dedup, k-core and the monotone remap all keep this order.
    order = chronological_order(enc.user, enc.item, enc.timestamp)
    user, item, ts, value = (a[order] for a in (enc.user, enc.item, enc.timestamp, enc.value))
    keep = dedup_mask(user, item, ts, cfg.dedup_keep, presorted=True)
    dropped[DropReason.DUPLICATE.label] = int((~keep).sum())
    user, item, ts, value = user[keep], item[keep], ts[keep], value[keep]
    rows["deduplicated"] = len(user)

    keep, rounds = kcore_mask(user, item, cfg.min_user_interactions, cfg.min_item_interactions)
    dropped[DropReason.KCORE.label] = int((~keep).sum())
    user, item, ts, value = user[keep], item[keep], ts[keep], value[keep]
    rows["kcore"] = len(user)
    if len(user) == 0:
        raise DataError(
            f"no interactions left after {cfg.min_user_interactions}/"
            f"{cfg.min_item_interactions}-core filtering ({enc.raw_rows} raw rows); lower "
            "--min-user-interactions / --min-item-interactions or check --min-value"
        )

    user, user_codes = remap_contiguous(user)
    item, item_codes = remap_contiguous(item)
    n_users, n_items = len(user_codes), len(item_codes)
    if cfg.split == "leave_one_out":
        split = leave_one_out_split(user, n_users)
        split_info: dict = {}
    else:
        split, (t_val, t_test) = temporal_split(ts, cfg.validation_fraction, cfg.test_fraction)
        split_info = {"validation_from": t_val, "test_from": t_test}

    interactions = pa.table(
        {USER_IDX: user, ITEM_IDX: item, TIMESTAMP: ts, VALUE: value, SPLIT: split},
        schema=INTERACTIONS_SCHEMA,
    )
    train = split == Split.TRAIN
    train_val = split != Split.TEST
    ones = np.ones(len(user), dtype=np.float32)
    shape = (n_users, n_items)
    m_train = csr_from_pairs(user[train], item[train], ones[train], shape)
    m_train_val = csr_from_pairs(user[train_val], item[train_val], ones[train_val], shape)
    pop = popularity(item[train], ts[train], n_items, cfg.recent_days)
    pop_table = pa.table({ITEM_IDX: np.arange(n_items, dtype=np.int32), **pop})

    user_ids = pc.take(enc.user_vocab, pa.array(user_codes))
    item_ids = pc.take(enc.item_vocab, pa.array(item_codes))
    users = _attributes(source.users, "user_id", user_ids)
    items = _attributes(source.items, "item_id", item_ids)
    items = _with_text(items)

    counts = Counts(
        rows=rows,
        dropped=dropped,
        users={"cleaned": n_users_clean, "kcore": n_users},
        items={"cleaned": n_items_clean, "kcore": n_items},
        splits={Split(s).label: int((split == s).sum()) for s in Split},
        kcore_rounds=rounds,
    )
    return PreparedData(
        name=source.name,
        engine=engine,  # type: ignore[arg-type]
        source=SourceInfo(
            kind=source.kind, location=source.location, fingerprint=source.fingerprint
        ),
        params={**cfg.model_dump(), **split_info},
        counts=counts,
        interactions=interactions,
        items=items,
        users=users,
        popularity=pop_table,
        matrix_train=m_train,
        matrix_train_val=m_train_val,
        identity=source.identity,
        live=source.live,
    )


def _with_text(items: pa.Table) -> pa.Table:
    """Add the rendered `text` column (ids stand in for titles when a source has none)."""
    n = items.num_rows
    names = items.column_names

    def column(name: str) -> list:
        return items[name].to_pylist() if name in names else [None] * n

    titles, ids = column(ITEM_TITLE), column(ITEM_ID)
    cats, desc = column(ITEM_CATEGORIES), column(ITEM_DESCRIPTION)
    text = [
        render_item_text(t if t else f"item {i}", c, d)
        for t, i, c, d in zip(titles, ids, cats, desc, strict=True)
    ]
    return items.append_column(ITEM_TEXT, pa.array(text, pa.string()))
