"""`llmrec`: one command, a subcommand per stage.

Runs locally (`llmrec prepare ...`) or as a Ray job on a cluster, unchanged:
`ray job submit -- python -m cluster.cli prepare ...`.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from pipelines import storage
from pipelines.errors import LlmrecError

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
console = Console()
err = Console(stderr=True)

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
    dataset: DatasetName = "ml-100k",
    data: DatasetUri = None,
    out: Annotated[
        str | None,
        typer.Option(help="report folder or URI [default: artifacts/eval/<name>]"),
    ] = None,
    resamples: Annotated[int, typer.Option(min=100, help="bootstrap resamples")] = 1000,
    reranker: Annotated[
        list[str] | None,
        typer.Option(help="NAME=FOLDER (or URI) of a trained re-ranker: adds re-rank rows"),
    ] = None,
    retrievers: Annotated[
        bool, typer.Option(help="run the retriever comparison (off: re-rank rows only)")
    ] = True,
) -> None:
    """Offline evaluation on the leave-one-out protocol (table, JSON, PNG): the retrievers,
    and retrieval + re-rank rows for each --reranker."""
    if not retrievers and not reranker:
        raise LlmrecError("nothing to evaluate: --no-retrievers needs at least one --reranker")
    with contextlib.ExitStack() as stack:
        rerankers = {
            name: str(stack.enter_context(storage.staged_input(uri)))
            for name, uri in _named_uris(reranker or []).items()
        }
        for name, folder in rerankers.items():
            read_meta_or_fail(f"--reranker {name}", folder)  # before any work
        ds = _load_leave_one_out(dataset, data)
        target = out or str(DEFAULT_ROOT / "eval" / dataset)
        with storage.staged_output(target, merge=True) as folder:
            _evaluate(ds, folder, retrievers, rerankers, resamples)
        if storage.local_path(target) is None:
            console.print(f"uploaded the reports to {target}")


def _evaluate(ds, folder: Path, retrievers: bool, rerankers: dict[str, str], resamples: int):
    from training.evaluation.report import print_report, write

    if retrievers:
        from training.evaluation.harness import evaluate

        start = time.perf_counter()
        report = evaluate(ds, resamples=resamples)
        report["seconds"] = round(time.perf_counter() - start, 1)
        print_report(report, Console(width=200))
        js, png = write(report, folder)
        console.print(f"wrote {js} and {png} ({report['seconds']} s)")
    if rerankers:
        from training.reranker.evaluate import evaluate_rerankers

        start = time.perf_counter()
        report = evaluate_rerankers(ds, rerankers, resamples=resamples)
        report["seconds"] = round(time.perf_counter() - start, 1)
        print_report(report, Console(width=200))
        js, png = write(report, folder, stem="rerank")
        console.print(f"wrote {js} and {png} ({report['seconds']} s)")


def _named_uris(specs: list[str]) -> dict[str, str]:
    out = {}
    for spec in specs:
        name, _, uri = spec.partition("=") if "=" in spec.split("://")[0] else ("", "", spec)
        out[name or uri.split("?")[0].rstrip("/").rsplit("/", 1)[-1]] = uri
    return out


def read_meta_or_fail(what: str, folder: str) -> None:
    from training.reranker.model import read_meta

    try:
        read_meta(folder)
    except LlmrecError as e:
        raise LlmrecError(f"{what}: {e}") from None


class Mode(StrEnum):
    hybrid = "hybrid"
    lm = "lm"
    features = "features"


def _load_leave_one_out(dataset: str, data: str | None):
    from pipelines.artifact import MANIFEST, load_dataset

    path = data or str(DEFAULT_ROOT / "datasets" / dataset)
    if data is None and dataset == "ml-100k" and not (Path(path) / MANIFEST).exists():
        console.print(f"no artifact at {path}: preparing ml-100k first")
        _prepare("ml-100k", path, "local", None, False, {}, {})
    ds = load_dataset(path, expected_name=dataset)
    if ds.manifest.split_protocol != "leave_one_out":
        raise LlmrecError(
            f"'{path}' was split '{ds.manifest.split_protocol}'; this stage follows the "
            "leave-one-out protocol: prepare with --split leave_one_out"
        )
    return ds


@app.command()
@user_errors
def train(
    dataset: DatasetName = "ml-100k",
    data: DatasetUri = None,
    out: Annotated[
        str | None,
        typer.Option(help="re-ranker folder or URI [default: artifacts/rerankers/<name>/<mode>]"),
    ] = None,
    mode: Annotated[
        Mode, typer.Option(help="hybrid: LM + retrieval features; lm; features (no LM)")
    ] = Mode.hybrid,
    base_model: Annotated[
        str | None,
        typer.Option(help="HF model folder, causal or encoder [default: offline MiniLM]"),
    ] = None,
    candidates: Annotated[int, typer.Option(help="K candidates per prompt")] = 20,
    history_items: Annotated[int, typer.Option(help="history items in the prompt")] = 10,
    item_tokens: Annotated[int, typer.Option(help="token budget per item text")] = 12,
    lora_r: Annotated[int, typer.Option()] = 8,
    lora_alpha: Annotated[int, typer.Option()] = 16,
    target_modules: Annotated[
        str | None, typer.Option(help="comma-separated LoRA targets [default: per family]")
    ] = None,
    epochs: Annotated[int, typer.Option()] = 2,
    batch_size: Annotated[int, typer.Option()] = 8,
    grad_accum: Annotated[int, typer.Option()] = 1,
    lr_lora: Annotated[float, typer.Option()] = 5e-4,
    lr_heads: Annotated[float, typer.Option()] = 1e-3,
    max_examples: Annotated[
        int,
        typer.Option(
            help="cap on the examples an LM trains on (CPU default keeps it to minutes); "
            "the feature layer alone takes them all"
        ),
    ] = 2400,
    full: Annotated[bool, typer.Option(help="no cap on examples, more epochs")] = False,
    val_users: Annotated[
        int, typer.Option(help="validation users per epoch when an LM trains (features: all)")
    ] = 400,
    holdout: Annotated[int, typer.Option(help="training positions per user")] = 10,
    insert_target: Annotated[
        bool, typer.Option(help="insert the true item when retrieval missed it")
    ] = False,
    patience: Annotated[int, typer.Option()] = 2,
    max_steps_per_epoch: Annotated[int | None, typer.Option()] = None,
    workers: Annotated[int, typer.Option(help="Ray Train workers (DDP)")] = 1,
    cpus_per_worker: Annotated[int, typer.Option()] = 2,
    gpu: Annotated[bool, typer.Option(help="one GPU per worker, bf16")] = False,
    init_features_from: Annotated[
        str | None,
        typer.Option(help="a features-mode re-ranker (folder or URI) that starts the hybrid"),
    ] = None,
    runs: Annotated[
        str | None,
        typer.Option(
            "--storage", help="Ray Train run storage, folder or URI [default: artifacts/train-runs]"
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="run name; the same name resumes [default: <name>-<mode>]")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address [default: $RAY_ADDRESS or local]")
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """LoRA fine-tuning of the listwise LLM re-ranker with Ray Train (resumes by run name)."""
    from training.reranker.model import RerankerConfig
    from training.reranker.prompt import PromptTemplate
    from training.reranker.train import TrainSettings, check_config

    try:
        cfg = RerankerConfig(
            base_model=base_model,
            mode=mode.value,
            template=PromptTemplate(
                candidates=candidates, history_items=history_items, item_tokens=item_tokens
            ),
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            target_modules=target_modules.split(",") if target_modules else None,
        )
        settings = TrainSettings(
            epochs=epochs if not full else max(epochs, 10),
            batch_size=batch_size,
            grad_accum=grad_accum,
            lr_lora=lr_lora,
            lr_heads=lr_heads,
            max_examples=None if full else max_examples,
            val_users=val_users,
            holdout=holdout,
            insert_target=insert_target,
            patience=patience,
            max_steps_per_epoch=max_steps_per_epoch,
            workers=workers,
            cpus_per_worker=cpus_per_worker,
            use_gpu=gpu,
            init_features_from=init_features_from,
            seed=seed,
        )
    except ValidationError as e:
        raise LlmrecError(f"invalid parameters: {_validation_message(e)}") from e
    ds = _load_leave_one_out(dataset, data)
    from training.retrieval.data import FitData

    # Model, tokenizer and template are checked before any example is built.
    check_config(cfg, FitData.from_dataset(ds).item_text[:1])
    target = out or str(DEFAULT_ROOT / "rerankers" / dataset / mode.value)
    with contextlib.ExitStack() as stack:
        if settings.init_features_from:
            warm = stack.enter_context(storage.staged_input(settings.init_features_from))
            read_meta_or_fail("--init-features-from", str(warm))
            settings = settings.model_copy(update={"init_features_from": str(warm)})
        local = stack.enter_context(storage.staged_output(target))
        _train(
            ds,
            cfg,
            settings,
            mode,
            local,
            runs or str(DEFAULT_ROOT / "train-runs"),
            name or f"{dataset}-{mode.value}",
            address,
            candidates,
            insert_target,
        )
    if storage.local_path(target) is None:
        console.print(f"uploaded the re-ranker to {target}")


def _train(
    ds, cfg, settings, mode, target: Path, runs, run_name, address, candidates, insert_target
) -> None:
    from training.reranker.train import prepare_examples

    with console.status("building examples (retrieval stack on held-out items)"):
        prepared = prepare_examples(ds, cfg, settings, progress=False)
    lm = (
        ""
        if mode == Mode.features
        else f" (the LM trains on {len(prepared.capped(settings).train)})"
    )
    console.print(
        f"{len(prepared.train)} training examples{lm} ({prepared.skipped} positions skipped: "
        f"the true item not in the fused top-{200 if insert_target else candidates}); "
        f"{len(prepared.val)}/{prepared.val_total} validation "
        "users have their target among the candidates"
    )
    from cluster.ray_runtime import connect

    connect(address, dashboard=True)
    from training.reranker.train import train_reranker

    if mode == Mode.hybrid and settings.init_features_from is None:
        # The feature layer trains in a minute on its own; the hybrid starts from it, so
        # its LM only has to learn what the features miss.
        warm = target.with_name(f"{target.name}-features")
        console.print(f"stage 1/2: the feature layer alone -> {warm}")
        first = train_reranker(
            prepared,
            cfg.model_copy(update={"mode": "features"}),
            settings.model_copy(
                update={"epochs": 40, "patience": 5, "lr_heads": 3e-3, "use_gpu": False}
            ),
            warm,
            runs,
            f"{run_name}-features",
        )
        _print_history("feature layer", first.history)
        settings = settings.model_copy(update={"init_features_from": str(warm)})
        console.print("stage 2/2: the hybrid (LoRA + feature layer)")
    result = train_reranker(prepared, cfg, settings, target, runs, run_name)
    _print_history(mode.value, result.history)
    console.print(f"best checkpoint -> {result.path} ({result.seconds:.0f} s in Ray Train)")


def _print_history(title: str, history: list[dict]) -> None:
    table = Table(title=f"re-ranker training ({title})")
    for c in ("epoch", "train loss", "val NDCG@10", "examples/s", "seconds"):
        table.add_column(c, justify="right")
    for h in history:
        table.add_row(
            str(h["epoch"]),
            f"{h['train_loss']:.4f}",
            f"{h['val_ndcg10']:.4f}",
            f"{h['examples_per_s']:.1f}",
            f"{h['train_seconds']:.0f}",
        )
    console.print(table)


@app.command()
@user_errors
def fit(
    dataset: DatasetName = "ml-100k",
    data: DatasetUri = None,
    out: Annotated[
        str | None,
        typer.Option(help="stack folder or URI [default: artifacts/stacks/<name>]"),
    ] = None,
) -> None:
    """Fit the retrievers (CF, transitions, content, popularity, the learned fusion) on every
    interaction; `llmrec publish --stack` bundles the result into a model version."""
    from training.publish import fit_retrievers

    ds = _load_leave_one_out(dataset, data)
    target = out or str(DEFAULT_ROOT / "stacks" / dataset)
    start = time.perf_counter()
    with console.status("fitting the retrieval stack on all interactions"):
        stack = fit_retrievers(ds, target, progress=False)
    console.print(
        f"fitted {', '.join(stack.sources)} on dataset {ds.manifest.version} -> {target} "
        f"({time.perf_counter() - start:.0f} s)"
    )


@app.command()
@user_errors
def publish(
    dataset: DatasetName = "ml-100k",
    data: DatasetUri = None,
    reranker: Annotated[
        str | None, typer.Option(help="a trained re-ranker to serve, folder or URI (optional)")
    ] = None,
    stack: Annotated[
        str | None,
        typer.Option(help="a `llmrec fit` output, folder or URI [default: fit it here]"),
    ] = None,
    root: Annotated[
        str | None,
        typer.Option(help="model versions, folder or URI [default: artifacts/models/<name>]"),
    ] = None,
    version: Annotated[str | None, typer.Option(help="[default: v<UTC time>]")] = None,
) -> None:
    """Publish the retrieval stack with the re-ranker as a new model version; CURRENT points
    at it, so a Serve application on `version: latest` swaps to it without downtime."""
    from training.publish import publish_version

    ds = _load_leave_one_out(dataset, data)
    target = root or str(DEFAULT_ROOT / "models" / dataset)
    doing = "bundling" if stack else "fitting the retrieval stack on all interactions and bundling"
    with console.status(doing):
        mv = publish_version(ds, target, reranker, version, progress=False, stack=stack)
    console.print(
        f"published {mv.version} -> {mv.uri} (re-ranker: {'yes' if mv.reranker else 'none'})"
    )


@app.command()
@user_errors
def serve(
    profile: Annotated[str, typer.Option(help="cpu, gpu, or a Serve config YAML")] = "cpu",
    root: Annotated[
        str | None, typer.Option(help="model versions [default: the profile's model_root]")
    ] = None,
    store: Annotated[str | None, typer.Option(help="event store URL")] = None,
    port: Annotated[int | None, typer.Option()] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address [default: $RAY_ADDRESS or local]")
    ] = None,
) -> None:
    """Serve the graph from a profile YAML on 127.0.0.1 until Ctrl-C."""
    _serve(profile, root, store, port, address)


def _serve(
    profile: str, root: str | None, store: str | None, port: int | None, address: str | None
) -> None:
    from serving.deploy import export_serve_env, read_profile, resolved_args, run_profile
    from training.publish import load_version

    cfg = read_profile(profile)
    export_serve_env(profile)  # before connect: a cluster started here hands it on
    overrides = {k: v for k, v in (("model_root", root), ("store", store)) if v}
    args = resolved_args(profile, overrides)
    mv = load_version(args["model_root"], args.get("version", "latest"))
    from cluster.ray_runtime import connect

    owned = connect(address)
    _stop_on_signals()
    try:  # Ctrl-C while starting stops as cleanly as Ctrl-C while serving
        with console.status(f"starting the Serve graph on model version {mv.version}"):
            run_profile(profile, args, port=port)
        _print_ready(cfg, port, mv.version)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("stopping")
        from ray import serve as ray_serve

        if owned:  # our own local cluster: stopping it ends every replica at once
            _stop_local_cluster()
        else:  # someone else's cluster: remove only what this command deployed
            ray_serve.delete(cfg["applications"][0].get("name", "llmrec"))


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (docker stop, kill) both stop serving cleanly. Set explicitly: a
    process started in the background by a script inherits SIGINT *ignored*, and Python
    then installs no KeyboardInterrupt handler."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def _stop_local_cluster(timeout_s: float = 20.0) -> None:
    """`ray.shutdown()`, bounded: it stops each process gracefully and can take a minute
    with many replicas. Past `timeout_s` the rest of the local cluster is killed and the
    process exits at once (Ray's exit hook would wait on the same shutdown again)."""
    import os
    import sys
    import threading

    import psutil
    import ray

    stopper = threading.Thread(target=ray.shutdown, daemon=True)
    stopper.start()
    stopper.join(timeout_s)
    if not stopper.is_alive():
        return
    console.print(f"the local cluster did not stop within {timeout_s:.0f} s: killing it")
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    sys.stdout.flush()
    os._exit(0)


def _print_ready(cfg: dict, port: int | None, version: str) -> None:
    http = cfg.get("http_options", {})
    base = f"http://{http.get('host', '127.0.0.1')}:{port or http.get('port', 8000)}"
    console.print(f"[bold green]serving[/] {version} at {base} (OpenAPI docs: {base}/docs)")
    console.print("try:", highlight=False)
    for line in (
        f"curl -s '{base}/recommend/1?k=5'",
        f"curl -s -X POST {base}/events -H 'content-type: application/json' "
        """-d '{"user_id": "1", "item_id": "50", "type": "click"}'""",
        f"curl -s '{base}/recommend/1?k=5'",
        f"curl -s '{base}/recommend/new-user-42?k=5'",
        f"curl -s '{base}/items/50/similar?k=5'",
        f"curl -s {base}/metrics | grep llmrec_",
    ):
        console.print(f"  {line}", highlight=False, soft_wrap=True)
    console.print("Ctrl-C stops serving.")


@app.command(name="serve-config")
@user_errors
def serve_config(
    profile: Annotated[str, typer.Option(help="cpu, gpu, or a Serve config YAML")] = "cpu",
    out: Annotated[Path, typer.Option(help="where to write the config")] = Path(
        "serve-config.yaml"
    ),
    root: Annotated[str | None, typer.Option(help="model versions, folder or URI")] = None,
    store: Annotated[str | None, typer.Option(help="event store URL")] = None,
    port: Annotated[int | None, typer.Option()] = None,
    host: Annotated[str | None, typer.Option()] = None,
    watch_s: Annotated[
        float | None, typer.Option(help="seconds between checks of CURRENT (0: off)")
    ] = None,
) -> None:
    """Write the profile as a config for `serve deploy`, with absolute paths (replicas do not
    run in this folder); `serve deploy` it again to change live settings in place."""
    import yaml
    from pydantic import ValidationError as PydanticError

    from serving.deploy import render_config

    overrides = {
        k: v
        for k, v in (("model_root", root), ("store", store), ("watch_s", watch_s))
        if v is not None
    }
    try:
        cfg = render_config(profile, overrides, port=port, host=host)
    except PydanticError as e:
        raise LlmrecError(f"invalid settings: {_validation_message(e)}") from None
    except FileNotFoundError as e:
        raise LlmrecError(f"no profile '{profile}': {e.strerror}") from None
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    console.print(
        f"wrote {out}; deploy it with: serve deploy {out} -a http://<head>:8265",
        soft_wrap=True,
        highlight=False,
    )


def _event_store(store: str):
    """An existing event store (opening a missing SQLite path would create an empty one)."""
    from serving.events import open_store, sqlite_path

    path = sqlite_path(store)
    if path is not None and not Path(path).exists():
        raise LlmrecError(f"no event store at '{path}'")
    try:
        return open_store(store)
    except ValueError as e:
        raise LlmrecError(str(e)) from None


@app.command()
@user_errors
def report(
    experiment: Annotated[str, typer.Option(help="the experiment's name in the Serve config")],
    store: EventStoreUrl = DEFAULT_STORE,
    control: Annotated[
        str | None, typer.Option(help="variant to compare with [default: 'control' or first]")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="report folder [default: artifacts/experiments/<name>]")
    ] = None,
) -> None:
    """A/B report from the logged impressions and the events attributed to them: CTR and
    conversion per variant with 95% intervals, and each variant against the control."""
    import json

    from serving.ab_report import experiment_report, plot_report, print_report

    try:
        impressions, events = _event_store(store).experiment_log(experiment)
        rep = experiment_report(experiment, impressions, events, control)
    except ValueError as e:
        raise LlmrecError(str(e)) from None
    print_report(rep, Console(width=160))
    folder = out or DEFAULT_ROOT / "experiments" / experiment
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(rep, indent=2))
    plot_report(rep, folder / "report.png")
    console.print(f"wrote {folder / 'report.json'} and {folder / 'report.png'}")


@app.command()
@user_errors
def replay(
    model_root: Annotated[str, typer.Option(help="published model versions")] = str(
        DEFAULT_ROOT / "models" / "ml-100k"
    ),
    version: Annotated[str, typer.Option(help="the candidate model version")] = "latest",
    store: EventStoreUrl = DEFAULT_STORE,
    experiment: Annotated[
        str | None, typer.Option(help="only this experiment's impressions [default: all]")
    ] = None,
    variant: Annotated[
        str | None, typer.Option(help="only this variant's impressions (e.g. the control)")
    ] = None,
    candidates: Annotated[int, typer.Option(min=1, max=1000, help="candidates to rank")] = 100,
    out: Annotated[
        Path | None, typer.Option(help="report folder [default: artifacts/replay/<version>]")
    ] = None,
) -> None:
    """Replay evaluation: rank the users of logged, clicked impressions with a candidate
    model as they were at that moment, and compare with the order that was shown."""
    import json

    from serving.config import LiveSettings
    from serving.recommender import RerankService, RetrievalService
    from serving.replay import (
        NOTHING_TO_REPLAY,
        positives,
        print_replay,
        replay_cases,
        replay_report,
    )
    from training.publish import load_version

    log = _event_store(store)
    impressions, events = log.experiment_log(experiment)
    if variant is not None:
        impressions = [i for i in impressions if i.variant == variant]
    if not positives(impressions, events):  # before minutes of model loading
        raise LlmrecError(NOTHING_TO_REPLAY)
    mv = load_version(model_root, version)
    settings = LiveSettings(model_root=model_root, version=version, store=store)
    console.print(f"replaying {len(impressions)} impressions with model version {mv.version}")
    retrieval = RetrievalService(mv, log, settings)
    reranker = RerankService(mv, log, settings) if mv.reranker is not None else None
    cases, skipped = replay_cases(log, retrieval, reranker, impressions, events, n=candidates)
    try:
        rep = replay_report(cases, skipped=skipped)
    except ValueError as e:
        raise LlmrecError(str(e)) from None
    rep.update(version=mv.version, experiment=experiment, variant=variant)
    print_replay(rep, Console(width=160))
    folder = out or DEFAULT_ROOT / "replay" / mv.version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "replay.json").write_text(json.dumps(rep, indent=2))
    console.print(f"wrote {folder / 'replay.json'}")


@app.command()
@user_errors
def demo(
    root: Annotated[Path, typer.Option(help="where artifacts go")] = DEFAULT_ROOT,
    engine: Annotated[Engine, typer.Option(help="the prepare stage's engine")] = Engine.ray,
    full: Annotated[
        bool, typer.Option(help="train on every example, up to 10 epochs (hours on CPU)")
    ] = False,
    serve_: Annotated[
        bool, typer.Option("--serve/--no-serve", help="end by serving until Ctrl-C")
    ] = True,
    port: Annotated[int, typer.Option()] = 8000,
) -> None:
    """The whole system on the embedded MovieLens-100k defaults, reusing what is built:
    prepare -> train the re-ranker (a few minutes on CPU; --full for the real run) ->
    evaluate -> publish a model version -> serve on 127.0.0.1 until Ctrl-C."""
    from pipelines.artifact import MANIFEST
    from serving.deploy import export_serve_env

    if serve_:  # the local cluster starts at the first stage; Serve's proxy runs on it
        export_serve_env("cpu")
    data = root / "datasets" / "ml-100k"
    steps = Table(title="llmrec demo")
    for c in ("stage", "result", "seconds"):
        steps.add_column(c)

    def step(name: str, fn, done: str | None = None) -> None:
        start = time.perf_counter()
        if done is not None:
            steps.add_row(name, f"reused {done}", "-")
            console.print(f"[dim]{name}: reusing {done}[/]")
            return
        console.rule(name)
        result = fn()
        steps.add_row(name, str(result), f"{time.perf_counter() - start:.0f}")

    step(
        "1. prepare ml-100k",
        lambda: _prepare("ml-100k", str(data), engine.value, None, False, {}, {}).version,
        str(data) if (data / MANIFEST).exists() else None,
    )
    reranker = root / "rerankers" / "ml-100k" / "hybrid"

    def train_it() -> str:
        train(
            data=str(data),
            out=str(reranker),
            runs=str(root / "train-runs"),
            name=f"demo-{int(time.time())}",
            full=full,
            # The CPU default stays within minutes; --full trains on every example.
            max_examples=3000 if full else 400,
            epochs=3 if full else 1,
            val_users=400 if full else 150,
        )
        return str(reranker)

    step(
        "2. train the re-ranker",
        train_it,
        str(reranker) if (reranker / "reranker.json").exists() else None,
    )
    report = root / "eval" / "ml-100k" / "rerank.json"

    def eval_it() -> str:
        eval_(
            data=str(data),
            out=root / "eval" / "ml-100k",
            reranker=[f"hybrid={reranker}"],
            retrievers=False,
            resamples=1000,
        )
        return str(report)

    step("3. evaluate", eval_it)
    models = root / "models" / "ml-100k"

    def publish_it() -> str:
        publish(data=str(data), reranker=str(reranker), root=str(models))
        return str(models)

    step(
        "4. publish a model version",
        publish_it,
        str(models) if (models / "CURRENT").exists() else None,
    )
    console.print(steps)
    if serve_:
        _serve("cpu", str(models), f"sqlite://{root / 'serving' / 'events.db'}", port, None)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry; typer reports usage errors itself (exit status 2)."""
    app(args=argv)


if __name__ == "__main__":
    main()
