"""What every `llmrec` command shares: the Typer application, the consoles, one-line user
errors, and reading a prepared dataset (preparing ML-100k first when it is missing)."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from pipelines.errors import LlmrecError
from pipelines.prepare import PrepareConfig
from training.full_fit import WARM_FULL_FIT_INTERACTIONS, FullFit

app = typer.Typer(
    help="llmrec: a real-time recommender on Ray that uses language models where they pay off.\n\n"
    "Stages: prepare (raw logs -> dataset artifact); train (LoRA re-ranker with Ray Train); "
    "eval (retrievers and re-rankers on the leave-one-out protocol); "
    "fit, publish, serve, serve-config (model versions and the Serve graph); "
    "report (A/B experiments); replay (a candidate model on logged impressions); "
    "demo (the quick start on the embedded MovieLens-100k defaults).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts show "[default: ...]" literally
)


@app.callback()
def _threads(
    cpu_threads: Annotated[
        int | None,
        typer.Option(
            "--cpu-threads",
            envvar="LLMREC_THREADS",
            min=1,
            help="torch and BLAS threads of this command's process "
            "[default: the cores idle when it starts]",
        ),
    ] = None,
) -> None:
    """Every command sets its thread pools explicitly (training/threads.py says why)."""

    from training.threads import ENV

    if cpu_threads:  # the stages read it when they start their pools (and Ray workers inherit it)
        os.environ[ENV] = str(cpu_threads)


console = Console()
err = Console(stderr=True)


def start_threads() -> int:
    """Set this command's torch/BLAS threads (training/threads.py) and say how many."""
    from training.threads import ENV, set_threads

    n = set_threads()
    how = f"${ENV}" if os.environ.get(ENV) else "cores idle at the start; --cpu-threads to choose"
    console.print(f"torch/BLAS threads: {n} ({how})")
    return n


DEFAULT_ROOT = Path("artifacts")


#: Options every stage that reads a prepared dataset shares.
DatasetName = Annotated[str, typer.Option(help="dataset name (its artifact's folder name)")]
DatasetUri = Annotated[
    str | None,
    typer.Option(help="dataset artifact, folder or URI [default: artifacts/datasets/<name>]"),
]
#: The event store the A/B report and replay read.
EventStoreUrl = Annotated[
    str, typer.Option(help="event store URL holding the events and logged impressions")
]
DEFAULT_STORE = "sqlite://artifacts/serving/events.db"
#: Where the Serve graph reads its API keys (the live setting `api_keys`).
ApiKeys = Annotated[
    str | None,
    typer.Option(
        help="API key file (llmrec keys create --file), or env:NAME for a secret in the "
        "replicas' environment [default: the profile's, artifacts/serving/api-keys.json]"
    ),
]
#: The content source's text model, for every stage that fits a stack.
TextModel = Annotated[
    str | None,
    typer.Option(
        "--text-model",
        help="the content source's text encoder: a model folder, URI or name (minilm, "
        "smollm2-135m) [default: the stack spec's, else minilm]",
    ),
]
#: Which retrieval stack a stage fits: what `llmrec eval` chose on validation.
StackSpecFile = Annotated[
    str | None,
    typer.Option(
        "--stack-spec",
        help="the sources and their parameters: `llmrec eval`'s stack-spec.json (or its "
        "eval.json) [default: artifacts/eval/<name>/stack-spec.json when `llmrec eval` wrote "
        "one, else the stack chosen on ML-100k validation]",
    ),
]

#: How a fit's second pass (every source on all interactions) starts (`FullFit`).
FullFitMode = Annotated[
    FullFit,
    typer.Option(
        "--full-fit",
        help="the fit's second pass (every source on all interactions, after the held-out "
        "fit the fusion learns from): from scratch, warm from the held-out fit (5% of a "
        f"fit), or auto (warm from {WARM_FULL_FIT_INTERACTIONS:,} interactions)",
    ),
]


class Dataset(StrEnum):
    ml_100k = "ml-100k"
    movielens = "movielens"
    generic = "generic"
    synthetic = "synthetic"


class Engine(StrEnum):
    ray = "ray"
    local = "local"


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


def validation_message(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())


def prepare_dataset(
    dataset: str,
    out: str | None,
    engine: str,
    address: str | None,
    overwrite: bool,
    cfg: PrepareConfig,
    source_kwargs: dict,
):
    """Read `dataset`'s source, run the preparation job, write the artifact and print its
    summary; returns the manifest."""
    from pipelines.artifact import write_dataset
    from pipelines.identity import KEY_ENV, configured_key
    from pipelines.prepare import run_local
    from pipelines.sources import load_source
    from pipelines.summary import print_summary

    with console.status(f"reading source '{dataset}'"):
        source = load_source(dataset, **source_kwargs)
    if (key := configured_key()) is not None:
        # One identity with the event store: users are kept under its pseudonyms.
        console.print(f"${KEY_ENV} is set: user ids are stored as their pseudonyms")
        source = source.pseudonymised(key)
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


def read_meta_or_fail(what: str, folder: str) -> dict:
    """The re-ranker metadata in `folder`, or a user error naming `what`."""
    from training.reranker.model import read_meta

    try:
        return read_meta(folder)
    except LlmrecError as e:
        raise LlmrecError(f"{what}: {e}") from None


def load_leave_one_out(dataset: str, data: str | None):
    from pipelines.artifact import MANIFEST, load_dataset

    path = data or str(DEFAULT_ROOT / "datasets" / dataset)
    if data is None and dataset == "ml-100k" and not (Path(path) / MANIFEST).exists():
        console.print(f"no artifact at {path}: preparing ml-100k first")
        prepare_dataset("ml-100k", path, "local", None, False, PrepareConfig(), {})
    ds = load_dataset(path, expected_name=dataset)
    if ds.manifest.split_protocol != "leave_one_out":
        raise LlmrecError(
            f"'{path}' was split '{ds.manifest.split_protocol}'; this stage follows the "
            "leave-one-out protocol: prepare with --split leave_one_out"
        )
    return ds


def stack_spec_for(dataset: str, given: str | None, text_model: str | None = None):
    """The retrieval stack a stage fits (a `training.stack.StackSpec`): `--stack-spec`, else
    what `llmrec eval` chose for this dataset when it has run, else `DEFAULT_SOURCES`; with
    `--text-model`, its content source encodes text with that model."""
    from training.stack import load_spec, with_text_model

    if given is None:
        chosen = DEFAULT_ROOT / "eval" / dataset / "stack-spec.json"
        given = str(chosen) if chosen.exists() else None
    console.print(f"retrieval stack: {given or 'the default, chosen on ML-100k validation'}")
    return with_text_model(load_spec(given), text_model)
