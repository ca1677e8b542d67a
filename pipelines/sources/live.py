"""Live events into the next dataset version: a base source plus an event store's export.

The merged source reads the base interaction log and the store's events through the same
normalisation, flags, dedup, k-core and split as any other source (both engines). Users are
known by the store's pseudonyms in both parts, so a user's old and new interactions are one
sequence. Erased users' rows older than their erasure are dropped from both parts (a user
who comes back afterwards starts again). Items added through the API join the items table
with their text. The store's sequence mark is recorded: serving adds only events after it
on top of this dataset, since the ones before are in it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import DataError
from pipelines.identity import key_check
from pipelines.schema import ITEM_ID, USER_ID
from pipelines.sources.base import EXTRA_PATH, Source


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
    if items is not None and export.items.num_rows:
        items = items.set_column(
            items.column_names.index(ITEM_ID), ITEM_ID, pc.cast(items[ITEM_ID], pa.string())
        )
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
        extra=export.events,
        erased=export.erased,
        items=items,
        live=live,
        fingerprint=f"{source.fingerprint}+live:{export.digest}",
        location=f"{source.location} + {export.store}",
    )
