"""`llmrec`: one command, a subcommand per stage.

Runs locally (`llmrec prepare ...`) or as a Ray job on a cluster, unchanged:
`ray job submit -- python -m cluster.cli prepare ...`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from pipelines.errors import LlmrecError

app = typer.Typer(
    help="llmrec: a real-time recommender on Ray that uses language models where they pay off.\n\n"
    "Stages: prepare (raw logs -> dataset artifact); eval (retrievers on the leave-one-out "
    "protocol); demo (the quick start on the embedded MovieLens-100k defaults).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)

DEFAULT_ROOT = Path("artifacts")


class Dataset(StrEnum):
    ml_100k = "ml-100k"
    movielens = "movielens"
    generic = "generic"
    synthetic = "synthetic"


class Engine(StrEnum):
    ray = "ray"
    local = "local"


class SplitProtocol(StrEnum):
    leave_one_out = "leave_one_out"
    temporal = "temporal"


def user_errors(fn: Callable) -> Callable:
    """User errors become one line on stderr and exit status 2, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LlmrecError as e:
            err.print(f"[bold red]error:[/] {e}", soft_wrap=True, highlight=False, markup=True)
            raise typer.Exit(2) from None

    return wrapper


def _validation_message(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())


def _prepare(
    dataset: str,
    out: str | None,
    engine: str,
    address: str | None,
    overwrite: bool,
    config_kwargs: dict,
    source_kwargs: dict,
):
    from pipelines.artifact import write_dataset
    from pipelines.prepare import PrepareConfig, run_local
    from pipelines.sources import load_source
    from pipelines.summary import print_summary

    try:
        cfg = PrepareConfig(**config_kwargs)
    except ValidationError as e:
        raise LlmrecError(f"invalid parameters: {_validation_message(e)}") from e
    with console.status(f"reading source '{dataset}'"):
        source = load_source(dataset, **source_kwargs)
    target = out or str(DEFAULT_ROOT / "datasets" / source.name)
    start = time.perf_counter()
    with console.status(f"preparing {source.name} with the {engine} engine"):
        if engine == "ray":
            from cluster.ray_runtime import connect
            from pipelines.prepare_ray import run_ray

            connect(address)
            data = run_ray(source, cfg)
        else:
            data = run_local(source, cfg)
        manifest = write_dataset(data, target, overwrite=overwrite)
    print_summary(manifest, target, console)
    console.print(f"took {time.perf_counter() - start:.1f} s")
    return manifest


@app.command()
@user_errors
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
    min_user_interactions: Annotated[int, typer.Option(help="k-core minimum per user")] = 5,
    min_item_interactions: Annotated[int, typer.Option(help="k-core minimum per item")] = 5,
    min_value: Annotated[
        float | None, typer.Option(help="implicit threshold: drop rows with a lower value")
    ] = None,
    split: Annotated[SplitProtocol, typer.Option()] = SplitProtocol.leave_one_out,
    engine: Annotated[Engine, typer.Option(help="ray: Ray Data job; local: one process")] = (
        Engine.ray
    ),
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address [default: $RAY_ADDRESS or local]")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="replace an output folder that holds a different dataset")
    ] = False,
) -> None:
    """Turn raw interaction logs into a versioned dataset artifact (Ray Data job)."""
    _prepare(
        dataset.value,
        out,
        engine.value,
        address,
        overwrite,
        {
            "min_user_interactions": min_user_interactions,
            "min_item_interactions": min_item_interactions,
            "min_value": min_value,
            "split": split.value,
        },
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


@app.command(name="eval")
@user_errors
def eval_(
    dataset: Annotated[str, typer.Option(help="dataset name (its artifact's folder name)")] = (
        "ml-100k"
    ),
    data: Annotated[
        str | None, typer.Option(help="dataset artifact [default: artifacts/datasets/<name>]")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="report folder [default: artifacts/eval/<name>]")
    ] = None,
    resamples: Annotated[int, typer.Option(min=100, help="bootstrap resamples")] = 1000,
) -> None:
    """Offline evaluation of the retrievers on the leave-one-out protocol (table, JSON, PNG)."""
    from pipelines.artifact import MANIFEST, load_dataset
    from training.evaluation.harness import evaluate
    from training.evaluation.report import print_report, write

    path = data or str(DEFAULT_ROOT / "datasets" / dataset)
    if data is None and dataset == "ml-100k" and not (Path(path) / MANIFEST).exists():
        console.print(f"no artifact at {path}: preparing ml-100k first")
        _prepare("ml-100k", path, "local", None, False, {}, {})
    ds = load_dataset(path, expected_name=dataset)
    if ds.manifest.split_protocol != "leave_one_out":
        raise LlmrecError(
            f"'{path}' was split '{ds.manifest.split_protocol}'; llmrec eval follows the "
            "leave-one-out protocol: prepare with --split leave_one_out"
        )
    start = time.perf_counter()
    report = evaluate(ds, resamples=resamples)
    report["seconds"] = round(time.perf_counter() - start, 1)
    print_report(report, Console(width=200))
    js, png = write(report, out or DEFAULT_ROOT / "eval" / dataset)
    console.print(f"wrote {js} and {png} ({report['seconds']} s)")


@app.command()
@user_errors
def demo(
    root: Annotated[Path, typer.Option(help="where artifacts go")] = DEFAULT_ROOT,
    engine: Annotated[Engine, typer.Option()] = Engine.ray,
) -> None:
    """The quick start: prepare MovieLens-100k (offline) and print its summary."""
    _prepare("ml-100k", str(root / "datasets" / "ml-100k"), engine.value, None, False, {}, {})


def main(argv: list[str] | None = None) -> None:
    """Console-script entry; typer reports usage errors itself (exit status 2)."""
    app(args=argv)


if __name__ == "__main__":
    main()
