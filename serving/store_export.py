"""An event store's contents as the tables a retrain merges (`pipelines.sources.live`)."""

from __future__ import annotations

import pyarrow as pa
from tqdm.auto import tqdm

from pipelines.schema import items_table
from pipelines.sources.live import LiveExport
from serving.events import POSITIVE, EventStore


def export_store(
    store: EventStore, name: str, positive_value: float = 1.0, progress: bool = True
) -> LiveExport:
    """Every event up to the store's current mark, the items added through the API, and
    the erasure list. A positive event without a value (a click, a view) gets
    `positive_value`, so a `min_value` threshold meant for ratings keeps it."""
    through = store.high_water()
    cols: dict[str, list] = {k: [] for k in ("user_id", "item_id", "timestamp", "value", "type")}
    with tqdm(total=through, desc="read events", unit="seq", disable=not progress) as bar:
        for page in store.export_events(through):
            for e in page:
                cols["user_id"].append(e.user_id)
                cols["item_id"].append(e.item_id)
                cols["timestamp"].append(e.timestamp)
                missing = e.value is None and e.type in POSITIVE
                cols["value"].append(positive_value if missing else e.value)
                cols["type"].append(e.type)
            bar.update(len(page))
    events = pa.table(
        {
            "user_id": pa.array(cols["user_id"], pa.string()),
            "item_id": pa.array(cols["item_id"], pa.string()),
            "timestamp": pa.array(cols["timestamp"], pa.float64()),
            "value": pa.array(cols["value"], pa.float32()),
            "event_type": pa.array(cols["type"], pa.string()),
        }
    )
    added = store.items()
    items = items_table(
        pa.array([i.item_id for i in added], pa.string()),
        [i.title for i in added],
        [i.text for i in added],
        [i.categories for i in added],
    )
    erased = store.erasures()
    return LiveExport(
        store=name,
        through=through,
        events=events,
        items=items,
        erased=pa.table(
            {
                "user_id": pa.array(list(erased), pa.string()),
                "erased_at": pa.array(list(erased.values()), pa.float64()),
            }
        ),
    )
