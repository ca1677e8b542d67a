"""The data contracts, defined once: canonical columns, drop reasons and split codes.

Every source is normalised to `CANONICAL_COLUMNS`; every stage after that works on these
names only. Downstream packages import from here instead of repeating string literals.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

#: Bump when the artifact layout or the meaning of a column changes; loaders refuse others.
SCHEMA_VERSION = 1

USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"
VALUE = "value"
EVENT_TYPE = "event_type"
DROP_REASON = "drop_reason"

USER_IDX = "user_idx"
ITEM_IDX = "item_idx"
SPLIT = "split"

CANONICAL_COLUMNS = (USER_ID, ITEM_ID, TIMESTAMP, VALUE, EVENT_TYPE)


class DropReason(IntEnum):
    """Why a raw interaction row did not reach the dataset. 0 means it was kept."""

    KEPT = 0
    NULL_ID = 1
    BAD_TIMESTAMP = 2
    BELOW_THRESHOLD = 3
    NEGATIVE_EVENT = 4
    UNKNOWN_ITEM = 5
    DUPLICATE = 6
    KCORE = 7
    ERASED = 8

    @property
    def label(self) -> str:
        return self.name.lower()


class Split(IntEnum):
    TRAIN = 0
    VALIDATION = 1
    TEST = 2

    @property
    def label(self) -> str:
        return self.name.lower()


#: The prepared interactions table, sorted by (user_idx, timestamp, item_idx).
INTERACTIONS_SCHEMA = pa.schema(
    [
        pa.field(USER_IDX, pa.int32(), nullable=False),
        pa.field(ITEM_IDX, pa.int32(), nullable=False),
        pa.field(TIMESTAMP, pa.int64(), nullable=False),
        pa.field(VALUE, pa.float32(), nullable=False),
        pa.field(SPLIT, pa.int8(), nullable=False),
    ]
)

#: Canonical items table produced by every source (extra attribute columns may follow).
ITEM_TITLE = "title"
ITEM_DESCRIPTION = "description"
ITEM_CATEGORIES = "categories"
ITEM_TEXT = "text"

#: Raw ids keep their type: integer ids stay int64 (so ties break in numeric order), anything
#: else becomes a string. The items table's `item_id` has the interactions' id type.


def items_table(
    item_id: pa.Array | pa.ChunkedArray,
    title: Any,
    description: Any,
    categories: Any,
    **extra: Any,
) -> pa.Table:
    """The canonical items table every source hands over; extra attribute columns follow.

    `title` and `description` become strings, `categories` a list of strings; each may be a
    Python list or an Arrow array.
    """

    def arrow(values: Any, type_: pa.DataType) -> pa.Array | pa.ChunkedArray:
        if isinstance(values, pa.Array | pa.ChunkedArray):
            # Always cast: list types compare equal across child-field names ("element" from
            # Parquet, "item" here), and the name ends up in the written file.
            return pc.cast(values, type_)
        return pa.array(values, type_)

    return pa.table(
        {
            ITEM_ID: item_id,
            ITEM_TITLE: arrow(title, pa.string()),
            ITEM_DESCRIPTION: arrow(description, pa.string()),
            ITEM_CATEGORIES: arrow(categories, pa.list_(pa.string())),
            **extra,
        }
    )


#: The leave-one-out order within a user: by timestamp, ties broken by the item's contiguous
#: id, which follows the sorted order of the raw item ids. Deterministic whatever the file order.
TIE_BREAK = "timestamp, then item id (contiguous ids follow the sorted raw ids)"
