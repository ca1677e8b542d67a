"""`llmrec prepare`: raw interaction logs into a versioned dataset artifact."""

from __future__ import annotations

from typing import Annotated

import typer

from cluster.commands.common import Dataset, Engine, app, prepare_dataset, user_errors
from cluster.settings_options import settings_options
from pipelines.prepare import PrepareConfig


@app.command()
@user_errors
@settings_options(config=PrepareConfig)
def prepare(
    dataset: Annotated[Dataset, typer.Option(help="which source to read")] = Dataset.ml_100k,
    out: Annotated[
        str | None,
        typer.Option(help="artifact folder or URI [default: artifacts/datasets/<name>]"),
    ] = None,
    path: Annotated[str | None, typer.Option(help="movielens: extracted archive folder")] = None,
    interactions: Annotated[
        str | None, typer.Option(help="generic: Parquet/CSV file or folder (any pyarrow URI)")
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(help="generic: user=COL,item=COL,timestamp=COL[,value=COL][,event_type=COL]"),
    ] = None,
    items: Annotated[str | None, typer.Option(help="generic: items table")] = None,
    item_columns: Annotated[
        str | None, typer.Option(help="generic: id=COL,title=COL[,text=COL][,categories=COL]")
    ] = None,
    users: Annotated[str | None, typer.Option(help="generic: users table")] = None,
    user_id_column: Annotated[str, typer.Option(help="generic: id column of --users")] = "user_id",
    synthetic_interactions: Annotated[
        int, typer.Option(min=1, help="synthetic: number of interactions")
    ] = 100_000,
    seed: Annotated[int, typer.Option(help="synthetic: random seed")] = 0,
    engine: Annotated[Engine, typer.Option(help="ray: Ray Data job; local: one process")] = (
        Engine.ray
    ),
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address [default: $RAY_ADDRESS or local]")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="replace an output folder that holds a different dataset")
    ] = False,
    *,
    config: PrepareConfig,
) -> None:
    """Turn raw interaction logs into a versioned dataset artifact (Ray Data job)."""
    prepare_dataset(
        dataset.value,
        out,
        engine.value,
        address,
        overwrite,
        config,
        {
            "path": path,
            "interactions": interactions,
            "columns": columns,
            "items": items,
            "item_columns": item_columns,
            "users": users,
            "user_id_column": user_id_column,
            "synthetic_interactions": synthetic_interactions,
            "seed": seed,
        },
    )
