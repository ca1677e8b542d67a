"""What every data source hands to the preprocessing job."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.errors import DataError
from pipelines.schema import ITEM_ID, ITEM_TITLE
from pipelines.transforms import ColumnMapping, check_columns


@dataclass
class Source:
    """Interaction files plus (optional) item and user tables in canonical columns.

    `paths` are read with `filesystem`, either as Parquet or as CSV with `csv_options`
    (pyarrow `read_options` / `parse_options` / `convert_options`), then renamed with
    `mapping`. The same description drives the Ray Data reader and the local reader.
    """

    name: str
    kind: str
    paths: list[str]
    filesystem: pafs.FileSystem
    file_format: Literal["parquet", "csv"]
    mapping: ColumnMapping
    fingerprint: str
    items: pa.Table | None = None
    users: pa.Table | None = None
    csv_options: dict[str, Any] = field(default_factory=dict)
    location: str = ""

    def read_file(self, path: str) -> pa.Table:
        """Read one interaction file (the local engine and the tests use this)."""
        try:
            if self.file_format == "parquet":
                table = pq.read_table(path, filesystem=self.filesystem)
            else:
                with self.filesystem.open_input_stream(path) as f:
                    table = pacsv.read_csv(f, **self.csv_options)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"cannot read interactions file '{path}': {e}") from e
        check_columns(table.column_names, self.mapping, f"interactions file '{path}'")
        return table

    def check_schema(self) -> None:
        """Fail before any work starts when a file lacks a mapped column.

        Every file is checked (footers and CSV headers only): Ray's Parquet reader would
        otherwise fill a column missing from one file with nulls.
        """
        for path in self.paths:
            try:
                if self.file_format == "parquet":
                    names = pq.read_schema(path, filesystem=self.filesystem).names
                else:
                    with self.filesystem.open_input_stream(path) as f:
                        names = pacsv.open_csv(f, **self.csv_options).schema.names
            except (pa.ArrowInvalid, OSError) as e:
                raise DataError(f"cannot read interactions file '{path}': {e}") from e
            check_columns(names, self.mapping, f"interactions file '{path}'")

    def known_items(self) -> pa.Array | None:
        """Ids of items with a usable title; None when the source has no items table."""
        if self.items is None:
            return None
        import pyarrow.compute as pc

        titled = self.items.filter(pc.invert(pc.is_null(self.items[ITEM_TITLE])))
        return titled[ITEM_ID].combine_chunks()
