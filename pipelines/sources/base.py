"""What every data source hands to the preprocessing job."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.errors import DataError
from pipelines.identity import key_check, pseudonymise_column
from pipelines.schema import CANONICAL_COLUMNS, ITEM_ID, ITEM_TITLE, USER_ID
from pipelines.transforms import ColumnMapping, check_columns, normalize_batch

#: the "file" that stands for a live event store's export, held in memory
EXTRA_PATH = "<event store>"
_CANONICAL = ColumnMapping(*CANONICAL_COLUMNS)


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
    #: "files" held in memory, in canonical columns and the dataset's identity already
    #: (pseudonyms when a key is set): a prepared dataset's rows, a store's events
    tables: dict[str, pa.Table] = field(default_factory=dict)
    #: set: user ids are replaced by their keyed pseudonyms as they are read
    pseudonym_key: bytes | None = None
    #: user_id (as the dataset will hold it), erased_at: older rows of these users are dropped
    erased: pa.Table | None = None
    #: in-memory tables known as a whole at one moment: their rows' time for erasure checks
    as_of: dict[str, float] = field(default_factory=dict)
    #: what the manifest records about a live merge (store, events read, mark)
    live: dict[str, Any] | None = None

    @property
    def identity(self) -> str | None:
        """The check value of the pseudonym key (None: the source's own user ids)."""
        return None if self.pseudonym_key is None else key_check(self.pseudonym_key)

    def read_canonical(self, path: str) -> pa.Table:
        """One file (or the in-memory rows of `EXTRA_PATH`) in canonical columns, user ids
        pseudonymised when a key is set; what both engines read."""
        if path in self.tables:
            batch = normalize_batch(self.tables[path], _CANONICAL, path)
        else:
            batch = normalize_batch(self.read_file(path), self.mapping, f"'{path}'")
        if self.live is not None:  # live ids are strings: the log's must match them
            batch = batch.set_column(1, ITEM_ID, pc.cast(batch[ITEM_ID], pa.string()))
        if self.pseudonym_key is not None and path not in self.tables:
            ids = pc.cast(batch[USER_ID], pa.string())
            batch = batch.set_column(0, USER_ID, pseudonymise_column(ids, self.pseudonym_key))
        return batch

    def pseudonymised(self, key: bytes) -> Source:
        """This source with users known by their pseudonyms under `key` (the users table
        too); the key's check value enters the fingerprint, so the dataset version differs."""
        users = self.users
        if users is not None:
            ids = pseudonymise_column(pc.cast(users[USER_ID], pa.string()), key)
            users = users.set_column(users.column_names.index(USER_ID), USER_ID, ids)
        return replace(
            self,
            users=users,
            pseudonym_key=key,
            fingerprint=f"{self.fingerprint}+pseudonyms:{key_check(key)}",
        )

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
            if path in self.tables:
                continue
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
        titled = self.items.filter(pc.invert(pc.is_null(self.items[ITEM_TITLE])))
        return titled[ITEM_ID].combine_chunks()
