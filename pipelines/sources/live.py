"""Live events into the next dataset version: a base source plus an event store's export.

The merged source reads the base interaction log and the store's events through the same
normalisation, flags, dedup, k-core and split as any other source (both engines). Users are
known by the store's pseudonyms in both parts, so a user's old and new interactions are one
sequence. Erased users' rows from before their erasure are dropped (a prepared dataset's
rows count as of its creation; the store erased what it held already), so a user who comes
back afterwards starts again. Items added through the API join the items table
with their text. The store's sequence mark is recorded: serving adds only events after it
on top of this dataset, since the ones before are in it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from pipelines.artifact import Dataset
from pipelines.errors import DataError
from pipelines.identity import key_check, pseudonymise_column
from pipelines.schema import (
    CANONICAL_COLUMNS,
    EVENT_TYPE,
    ITEM_ID,
    ITEM_IDX,
    ITEM_TEXT,
    TIMESTAMP,
    USER_ID,
    USER_IDX,
    VALUE,
)
from pipelines.sources.base import EXTRA_PATH, Source
from pipelines.transforms import ColumnMapping


@dataclass
class LiveExport:
    """What a retrain read from an event store, as plain tables (see
    `serving.store_export.export_store`)."""

    store: str  # the store's URL without a password
    through: int  # the sequence mark: every event with seq <= through is in `events`
    events: pa.Table  # user_id (pseudonym), item_id, timestamp, value, event_type
    items: pa.Table  # item_id, title, description, categories: items added through the API
    erased: pa.Table  # user_id (pseudonym), erased_at

    @property
    def digest(self) -> str:
        """A content id of the export (enters the dataset version)."""
        h = hashlib.sha256(f"{self.store}|{self.through}".encode())
        for table in (self.events, self.items, self.erased):
            h.update(str(table.num_rows).encode())
            for name in table.column_names:
                h.update(json.dumps(table[name].to_pylist(), default=str).encode())
        return h.hexdigest()[:24]


def with_live_events(base: Source, export: LiveExport, key: bytes) -> Source:
    """`base` with the export's events, items and erasures merged in, users pseudonymised
    with the store's `key`."""
    if base.pseudonym_key is not None and key_check(base.pseudonym_key) != key_check(key):
        raise DataError(
            "the base data is pseudonymised with another key than the event store's; set "
            "$LLMREC_PSEUDONYM_KEY to the store's key"
        )
    source = base if base.pseudonym_key is not None else base.pseudonymised(key)
    items = source.items
    if items is not None:  # ids are strings once live events join (the store's are)
        items = items.set_column(
            items.column_names.index(ITEM_ID), ITEM_ID, pc.cast(items[ITEM_ID], pa.string())
        )
    if items is not None and export.items.num_rows:
        new = export.items.filter(pc.invert(pc.is_in(export.items[ITEM_ID], items[ITEM_ID])))
        items = pa.concat_tables([items, new], promote_options="default")
    live = {
        "store": export.store,
        "through": export.through,
        "events": export.events.num_rows,
        "users": len(pc.unique(export.events[USER_ID])) if export.events.num_rows else 0,
        "items_added": export.items.num_rows,
        "erased_users": export.erased.num_rows,
        "erased_through": max(export.erased["erased_at"].to_pylist(), default=None),
    }
    return replace(
        source,
        name=source.name,
        paths=[*source.paths, EXTRA_PATH] if export.events.num_rows else list(source.paths),
        tables={**source.tables, EXTRA_PATH: export.events},
        as_of={**source.as_of, EXTRA_PATH: float("inf")},
        erased=export.erased,
        items=items,
        live=live,
        fingerprint=f"{source.fingerprint}+live:{export.digest}",
        location=f"{source.location} + {export.store}",
    )


def from_dataset(ds: Dataset, key: bytes) -> Source:
    """A prepared dataset as the base log of the next version, users known by their
    pseudonyms under `key` (hashed here when the dataset holds raw ids). Its rows passed
    cleaning and k-core once; they pass through them again with the new events."""
    if ds.manifest.identity not in (None, key_check(key)):
        raise DataError(
            f"dataset {ds.manifest.version} is pseudonymised with another key than the event "
            "store's; retrain from the store it was prepared with"
        )
    inter = ds.interactions
    user_ids = pc.cast(ds.users[USER_ID], pa.string())
    users = ds.users.drop_columns([USER_IDX])
    if ds.manifest.identity is None:
        user_ids = pseudonymise_column(user_ids, key)
        users = users.set_column(users.column_names.index(USER_ID), USER_ID, user_ids)
    n = inter.num_rows
    rows = pa.table(
        {
            USER_ID: pc.take(user_ids, inter[USER_IDX]),
            ITEM_ID: pc.take(pc.cast(ds.items[ITEM_ID], pa.string()), inter[ITEM_IDX]),
            TIMESTAMP: inter[TIMESTAMP],
            VALUE: inter[VALUE],
            EVENT_TYPE: pa.nulls(n, pa.string()),
        }
    )
    path = f"<dataset {ds.manifest.version}>"
    return Source(
        name=ds.manifest.name,
        kind="dataset",
        paths=[path],
        filesystem=pafs.LocalFileSystem(),
        file_format="parquet",
        mapping=ColumnMapping(*CANONICAL_COLUMNS),
        fingerprint=f"dataset:{ds.manifest.version}",
        items=ds.items.drop_columns(
            [c for c in (ITEM_IDX, ITEM_TEXT) if c in ds.items.column_names]
        ),
        users=users,
        tables={path: rows},
        # An erasure after the dataset was built drops all of that user's rows in it.
        as_of={path: ds.manifest.created_at.timestamp()},
        pseudonym_key=key,
        location=str(ds.uri),
    )
