"""The Ray Data engine of the preprocessing job: a thin shell around `pipelines.transforms`.

Row-wise work runs as Ray Data tasks (parallel read, normalise, validate, count, encode);
the flagged rows are materialised once in the object store and scanned three times. Only the
compact encoded columns (about 24 bytes per interaction) travel to the driver, where
`pipelines.prepare.finalize` runs the global steps. See README "What changes on a cluster".
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipelines.artifact import PreparedData
from pipelines.errors import ArtifactError, DataError, LlmrecError
from pipelines.prepare import Encoded, PrepareConfig, check_row_counts, finalize, flag_kwargs
from pipelines.schema import TIMESTAMP, VALUE
from pipelines.sources.base import Source
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


def _normalize_and_flag(batch: pa.Table, mapping: ColumnMapping, flags: dict) -> pa.Table:
    return flag_rows(normalize_batch(batch, mapping), **flags)


def _vocab_of_kept(batch: pa.Table) -> dict[str, pa.Array]:
    return partial_vocab(keep_rows(batch))


def _encode_kept(batch: pa.Table, users: pa.Array, items: pa.Array) -> dict[str, np.ndarray]:
    return encode_ids(keep_rows(batch), users, items)


def read_dataset(source: Source):
    """The source as a Ray Dataset of raw rows."""
    import ray.data as rd

    # The source already chose its files; Ray's reader must not drop any by extension
    # (ML-100k's cache is `.parquet.brotli`, and Ray 2.60 reads `None` as its defaults).
    suffixes = sorted({p.rsplit("/", 1)[-1].rsplit(".", 1)[-1] for p in source.paths})
    if source.file_format == "parquet":
        return rd.read_parquet(source.paths, filesystem=source.filesystem, file_extensions=suffixes)
    return rd.read_csv(
        source.paths, filesystem=source.filesystem, file_extensions=suffixes, **source.csv_options
    )


def run_ray(source: Source, cfg: PrepareConfig, progress: bool = False) -> PreparedData:
    """Run the job on the connected Ray cluster; user errors inside tasks come back as is."""
    import ray

    try:
        return _run_ray(source, cfg, progress)
    except ray.exceptions.RayError as e:
        cause = _user_error(e)
        if cause is not None:
            raise cause from None
        raise


def _user_error(e: BaseException) -> LlmrecError | None:
    """The user-facing error behind a Ray task failure: ours, or a file Arrow cannot parse."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, LlmrecError) and type(e) in (DataError, ArtifactError, LlmrecError):
            return e
        # Ray's readers re-raise Arrow's parse errors as "Failed to read CSV file: <path>. ..."
        text = str(e).strip()
        if type(e) is pa.ArrowInvalid or (type(e) is ValueError and text.startswith("Failed")):
            first = text.split(". ")[0].splitlines()[0] if text else type(e).__name__
            return DataError(f"cannot read the interactions: {first}; fix or remove the bad rows")
        e = getattr(e, "cause", None) or e.__cause__
    return None


def _run_ray(source: Source, cfg: PrepareConfig, progress: bool) -> PreparedData:
    import ray
    import ray.data as rd

    ctx = rd.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.execution_options.preserve_order = True  # dedup keeps the earlier of tied rows
    flagged = (
        read_dataset(source)
        .map_batches(
            _normalize_and_flag,
            fn_kwargs={"mapping": source.mapping, "flags": flag_kwargs(source, cfg)},
            batch_format="pyarrow",
            batch_size=None,
        )
        .materialize()
    )
    parts = flagged.map_batches(count_reasons, batch_format="pyarrow", batch_size=None)
    counts = pa.concat_tables(ray.get(parts.to_arrow_refs()))
    dropped = sum_reason_counts(
        [{"reason": counts["reason"].to_numpy(), "count": counts["count"].to_numpy()}]
    )
    raw_rows = sum(dropped.values())
    check_row_counts(dropped, raw_rows, source)

    vocab_parts = ray.get(
        flagged.map_batches(_vocab_of_kept, batch_format="pyarrow", batch_size=None).to_arrow_refs()
    )
    users = merge_vocab([p["users"] for p in vocab_parts])
    items = merge_vocab([p["items"] for p in vocab_parts])
    encoded = ray.get(
        flagged.map_batches(
            _encode_kept,
            fn_kwargs={"users": users, "items": items},
            batch_format="pyarrow",
            batch_size=None,
        ).to_arrow_refs()
    )
    enc = pa.concat_tables([t for t in encoded if t.num_rows]) if encoded else None

    def col(name: str, dtype) -> np.ndarray:
        if enc is None:
            return np.zeros(0, dtype=dtype)
        return enc[name].to_numpy().astype(dtype, copy=False)

    return finalize(
        Encoded(
            col("user", np.int32),
            col("item", np.int32),
            col(TIMESTAMP, np.int64),
            col(VALUE, np.float32),
            users,
            items,
            dropped,
            raw_rows,
        ),
        source,
        cfg,
        engine="ray",
    )
