"""Extracted MovieLens archives in their standard layouts, detected from the file names.

- 100k: `u.data` (tab separated) + `u.item` (`|` separated, latin-1)
- 1M: `ratings.dat` + `movies.dat` (`::` separated, latin-1)
- latest / latest-small / 20M / 25M: `ratings.csv` + `movies.csv` (with headers)
"""

from __future__ import annotations

import csv
import io
import os

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs

from pipelines.errors import DataError
from pipelines.schema import items_table
from pipelines.sources.base import Source
from pipelines.sources.movielens100k_wheel import GENRES, PLACEHOLDER_TITLES
from pipelines.storage import exists, fingerprint_files, is_dir, read_bytes
from pipelines.transforms import ColumnMapping

LAYOUTS = {
    "ml-100k-files": ("u.data", "u.item"),
    "ml-1m": ("ratings.dat", "movies.dat"),
    "ml-csv": ("ratings.csv", "movies.csv"),
}


def detect_layout(fs: pafs.FileSystem, root: str) -> str:
    if not is_dir(fs, root):
        raise DataError(f"'{root}' is not a folder; point --path at an extracted MovieLens archive")
    for layout, (ratings, movies) in LAYOUTS.items():
        if exists(fs, f"{root}/{ratings}") and exists(fs, f"{root}/{movies}"):
            return layout
    expected = "; ".join(" + ".join(files) for files in LAYOUTS.values())
    raise DataError(f"no MovieLens files found in '{root}'; expected one of: {expected}")


def _clean_title(title: str) -> str | None:
    t = title.strip()
    return None if not t or t.lower() in PLACEHOLDER_TITLES else t


def _items(rows: list[tuple[int, str | None, list[str], str | None]]) -> pa.Table:
    return items_table(
        pa.array([r[0] for r in rows], pa.int64()),
        title=[r[1] for r in rows],
        description=[r[3] for r in rows],
        categories=[r[2] for r in rows],
    )


def _read_u_item(text: str) -> pa.Table:
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        f = line.split("|")
        if len(f) < 5 + len(GENRES) + 1:
            raise DataError(f"u.item line has {len(f)} fields, expected 24: {line[:60]!r}")
        flags = f[6:]  # f[5] is the 'unknown' genre
        cats = [g for g, flag in zip(GENRES, flags, strict=False) if flag.strip() == "1"]
        rows.append((int(f[0]), _clean_title(f[1]), cats, f"Released {f[2]}." if f[2] else None))
    return _items(rows)


def _read_movies_dat(text: str) -> pa.Table:
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        f = line.split("::")
        if len(f) != 3:
            raise DataError(f"movies.dat line should be id::title::genres: {line[:60]!r}")
        rows.append((int(f[0]), _clean_title(f[1]), [g for g in f[2].split("|") if g], None))
    return _items(rows)


def _read_movies_csv(text: str) -> pa.Table:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"movieId", "title", "genres"} <= set(reader.fieldnames):
        raise DataError("movies.csv needs the columns movieId,title,genres")
    rows = []
    for r in reader:
        genres = [g for g in r["genres"].split("|") if g and g != "(no genres listed)"]
        rows.append((int(r["movieId"]), _clean_title(r["title"]), genres, None))
    return _items(rows)


def load(root: str, filesystem: pafs.FileSystem | None = None) -> Source:
    fs = filesystem or pafs.LocalFileSystem()
    root = root.rstrip("/")
    layout = detect_layout(fs, root)
    ratings, movies = (f"{root}/{name}" for name in LAYOUTS[layout])
    names = ["user", "item", "rating", "timestamp"]
    if layout == "ml-100k-files":
        options = {
            "read_options": pacsv.ReadOptions(column_names=names),
            "parse_options": pacsv.ParseOptions(delimiter="\t"),
        }
        items = _read_u_item(read_bytes(fs, movies).decode("latin-1"))
    elif layout == "ml-1m":
        # '::' is read as ':' with an empty column between fields (titles are not in this file)
        cols = ["user", "_a", "item", "_b", "rating", "_c", "timestamp"]
        options = {
            "read_options": pacsv.ReadOptions(column_names=cols),
            "parse_options": pacsv.ParseOptions(delimiter=":"),
            "convert_options": pacsv.ConvertOptions(include_columns=names),
        }
        items = _read_movies_dat(read_bytes(fs, movies).decode("latin-1"))
    else:
        options = {
            "convert_options": pacsv.ConvertOptions(
                include_columns=["userId", "movieId", "rating", "timestamp"]
            )
        }
        items = _read_movies_csv(read_bytes(fs, movies).decode("utf-8"))
    mapping = (
        ColumnMapping("userId", "movieId", "timestamp", value="rating")
        if layout == "ml-csv"
        else ColumnMapping("user", "item", "timestamp", value="rating")
    )
    return Source(
        name=os.path.basename(root) or layout,
        kind=layout,
        paths=[ratings],
        filesystem=fs,
        file_format="csv",
        mapping=mapping,
        fingerprint=fingerprint_files(fs, [ratings, movies]),
        items=items,
        csv_options=options,
        location=root,
    )
