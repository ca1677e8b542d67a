"""Any Parquet or CSV interactions (a file or a folder of files, any pyarrow URI) with a
column mapping, plus optional item and user tables."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.errors import DataError
from pipelines.schema import items_table
from pipelines.sources.base import Source
from pipelines.storage import exists, fingerprint_files, info, list_files, resolve
from pipelines.transforms import ColumnMapping, _normalize_id

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class ItemColumns:
    """Which columns of the items table hold id, title, free text and categories."""

    id: str = "item_id"
    title: str = "title"
    description: str | None = None
    categories: str | None = None
    category_separator: str = "|"

    @classmethod
    def parse(cls, spec: str | None) -> ItemColumns:
        if not spec:
            return cls()
        fields: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, name = part.partition("=")
            key = {"text": "description"}.get(key.strip(), key.strip())
            if not sep or key not in {"id", "title", "description", "categories"}:
                raise DataError(
                    f"bad item column mapping '{part}': use id=COL,title=COL[,text=COL]"
                    "[,categories=COL]"
                )
            fields[key] = name.strip()
        return cls(**fields)


def _format_of(path: str) -> str:
    for ext, fmt in FORMATS.items():
        if path.lower().endswith(ext):
            return fmt
    raise DataError(f"'{path}' is neither .parquet nor .csv; convert it or rename it")


def _expand(uri: str) -> tuple[pafs.FileSystem, list[str], str]:
    fs, path = resolve(uri)
    if not exists(fs, path):
        raise DataError(f"interactions not found: '{uri}'; check the path (--interactions)")
    if info(fs, path).type == pafs.FileType.Directory:
        files = [
            i.path
            for i in list_files(fs, path)
            if i.is_file and not i.base_name.startswith((".", "_"))
        ]
        files = [f for f in files if any(f.lower().endswith(e) for e in FORMATS)]
        if not files:
            raise DataError(f"no .parquet or .csv files in '{uri}'")
    else:
        files = [path]
    formats = {_format_of(f) for f in files}
    if len(formats) > 1:
        raise DataError(f"'{uri}' mixes Parquet and CSV files; keep one format per folder")
    return fs, files, formats.pop()


def read_table(uri: str) -> pa.Table:
    fs, files, fmt = _expand(uri)
    try:
        if fmt == "parquet":
            return pa.concat_tables([pq.read_table(f, filesystem=fs) for f in files])
        tables = []
        for f in files:
            with fs.open_input_stream(f) as s:
                tables.append(pacsv.read_csv(s))
        return pa.concat_tables(tables)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"cannot read '{uri}': {e}") from e


def read_items(uri: str, cols: ItemColumns) -> pa.Table:
    raw = read_table(uri)
    need = [c for c in (cols.id, cols.title, cols.description, cols.categories) if c]
    missing = [c for c in need if c not in raw.column_names]
    if missing:
        raise DataError(
            f"items table '{uri}' has no column {', '.join(map(repr, missing))} "
            f"(it has: {', '.join(raw.column_names)}); map them with --item-columns "
            "id=COL,title=COL[,text=COL][,categories=COL]"
        )
    n = raw.num_rows
    if cols.categories:
        cats = raw[cols.categories]
        if not pa.types.is_list(cats.type):
            cats = pc.split_pattern(pc.cast(cats, pa.string()), cols.category_separator)
    else:
        cats = [[] for _ in range(n)]
    title = pc.cast(raw[cols.title], pa.string())
    title = pc.if_else(pc.equal(pc.utf8_trim_whitespace(title), ""), None, title)
    desc = raw[cols.description] if cols.description else pa.nulls(n, pa.string())
    used = set(need)
    extra = {c: raw[c] for c in raw.column_names if c not in used}
    return items_table(_normalize_id(raw[cols.id]), title, desc, cats, **extra)


def users_table(uri: str, id_column: str = "user_id") -> pa.Table:
    raw = read_table(uri)
    if id_column not in raw.column_names:
        raise DataError(
            f"users table '{uri}' has no column '{id_column}' (it has: "
            f"{', '.join(raw.column_names)}); pass --user-id-column"
        )
    rest = {c: raw[c] for c in raw.column_names if c != id_column}
    return pa.table({"user_id": _normalize_id(raw[id_column]), **rest})


def load(
    interactions: str,
    mapping: ColumnMapping,
    items: str | None = None,
    item_columns: ItemColumns | None = None,
    users: str | None = None,
    user_id_column: str = "user_id",
    name: str | None = None,
) -> Source:
    fs, files, fmt = _expand(interactions)
    items_t = read_items(items, item_columns or ItemColumns()) if items else None
    users_t = users_table(users, user_id_column) if users else None
    fp_files = list(files)
    fingerprint = fingerprint_files(fs, fp_files)
    for extra in (items, users):
        if extra:
            efs, efiles, _ = _expand(extra)
            fingerprint = fingerprint + ":" + fingerprint_files(efs, efiles)
    return Source(
        # Named after what the user pointed at: a folder of part files by the folder.
        name=name or interactions.rstrip("/").rsplit("/", 1)[-1].split(".")[0] or "generic",
        kind="generic",
        paths=files,
        filesystem=fs,
        file_format=fmt,  # type: ignore[arg-type]
        mapping=mapping,
        fingerprint=fingerprint,
        items=items_t,
        users=users_t,
        location=interactions,
    )
