"""The model stages: `llmrec eval` (offline evaluation), `fit` (the retrieval stack),
`train` (the LoRA re-ranker on Ray Train) and `publish` (a model version)."""

from __future__ import annotations

import contextlib
import json
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from cluster.commands.common import (
    DEFAULT_ROOT,
    DatasetName,
    DatasetUri,
    FullFitMode,
    StackSpecFile,
    TextModel,
    app,
    console,
    load_leave_one_out,
    read_meta_or_fail,
    stack_spec_for,
    start_threads,
    user_errors,
    validation_message,
)
from cluster.commands.eval_protocols import cold_protocol, leave_one_out
from cluster.commands.model_reports import (
    covisit_line,
    fit_progress,
    print_history,
    print_routing,
    privacy_line,
    training_privacy_line,
)
from cluster.settings_options import settings_options
from pipelines import storage
from pipelines.errors import LlmrecError
from training.full_fit import FullFit
from training.reranker.model import RerankerConfig
from training.reranker.prompt import PromptTemplate
from training.reranker.settings import TrainSettings


class Protocol(StrEnum):
    leave_one_out = "leave-one-out"
    new_items = "new-items"
    new_users = "new-users"


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
    stack_spec: StackSpecFile = None,
    text_model: TextModel = None,
    protocol: Annotated[
        Protocol,
        typer.Option(
            help="leave-one-out: each user's last item; new-items: items first seen after a "
            "time cutoff, never trained on; new-users: users never trained on, after 0, 1, 3 "
            "and 10 events (docs/RETRIEVAL.md); on both, --reranker takes re-rankers trained "
            "on the protocol's view (llmrec train --new-items-cutoff | --without-new-users)"
        ),
    ] = Protocol.leave_one_out,
    cutoff_quantile: Annotated[
        float,
        typer.Option(
            min=0.01, max=0.99, help="new-items: the cutoff, as a quantile of interaction times"
        ),
    ] = 0.2,
    one_fit: Annotated[
        bool,
        typer.Option(
            help="leave-one-out, the sequential papers' way: one fit on train serves "
            "validation and test (SASRec's epochs chosen on validation); about half the time"
        ),
    ] = False,
) -> None:
    """Offline evaluation (table, JSON, PNG): the retrievers, and retrieval + re-rank rows for
    each --reranker, on the leave-one-out protocol; or the retrieval stack on the new-item
    and new-user protocols."""
    if protocol is not Protocol.leave_one_out:
        cold_protocol(
            str(protocol),
            dataset,
            data,
            out,
            resamples,
            stack_spec_for(dataset, stack_spec, text_model),
            cutoff_quantile,
            _named_uris(reranker or []),
        )
        return
    if not retrievers and not reranker:
        raise LlmrecError("nothing to evaluate: --no-retrievers needs at least one --reranker")
    with contextlib.ExitStack() as stack:
        rerankers = {
            name: str(stack.enter_context(storage.staged_input(uri)))
            for name, uri in _named_uris(reranker or []).items()
        }
        for name, folder in rerankers.items():
            read_meta_or_fail(f"--reranker {name}", folder)  # before any work
        ds = load_leave_one_out(dataset, data)
        target = out or str(DEFAULT_ROOT / "eval" / dataset)
        with storage.staged_output(target, merge=True) as folder:
            leave_one_out(
                ds, folder, retrievers, rerankers, resamples, stack_spec, text_model, one_fit
            )
        if storage.local_path(target) is None:
            console.print(f"uploaded the reports to {target}")


def _named_uris(specs: list[str]) -> dict[str, str]:
    out = {}
    for spec in specs:
        name, _, uri = spec.partition("=") if "=" in spec.split("://")[0] else ("", "", spec)
        out[name or uri.split("?")[0].rstrip("/").rsplit("/", 1)[-1]] = uri
    return out


@app.command()
@user_errors
@settings_options(
    settings=TrainSettings,
    model=(RerankerConfig, {"template"}),
    template=(
        PromptTemplate,
        {"name", "history_label", "candidates_label", "answer_label", "separator"},
    ),
)
def train(
    dataset: DatasetName = "ml-100k",
    data: DatasetUri = None,
    out: Annotated[
        str | None,
        typer.Option(help="re-ranker folder or URI [default: artifacts/rerankers/<name>/<mode>]"),
    ] = None,
    full: Annotated[bool, typer.Option(help="no cap on examples, at least 10 epochs")] = False,
    runs: Annotated[
        str | None,
        typer.Option(
            "--storage", help="Ray Train run storage, folder or URI [default: artifacts/train-runs]"
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="run name; the same name resumes [default: <name>-<mode>-<config hash>]"),
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address [default: $RAY_ADDRESS or local]")
    ] = None,
    stack_spec: StackSpecFile = None,
    text_model: TextModel = None,
    new_items_cutoff: Annotated[
        float | None,
        typer.Option(
            min=0.01,
            max=0.99,
            help="train on the interactions before the new-item protocol's cutoff (this "
            "quantile of interaction times) only, for `llmrec eval --protocol new-items "
            "--reranker`; such a re-ranker is not publishable",
        ),
    ] = None,
    without_new_users: Annotated[
        bool,
        typer.Option(
            help="train without the new-user protocol's held-out users, for `llmrec eval "
            "--protocol new-users --reranker`; such a re-ranker is not publishable",
        ),
    ] = False,
    *,
    settings: TrainSettings,
    model: RerankerConfig,
    template: PromptTemplate,
) -> None:
    """LoRA fine-tuning of the listwise LLM re-ranker with Ray Train (resumes by run name)."""
    from training.reranker.runs import check_resumable
    from training.reranker.train import check_config

    try:
        cfg = RerankerConfig.model_validate(
            {**model.model_dump(), "template": template.model_dump()}
        )
    except ValidationError as e:
        raise LlmrecError(f"invalid parameters: {validation_message(e)}") from e
    spec = stack_spec_for(dataset, stack_spec, text_model)
    if full:
        settings = settings.model_copy(
            update={"epochs": max(settings.epochs, 10), "max_examples": None}
        )
    if new_items_cutoff is not None and without_new_users:
        raise LlmrecError(
            "--new-items-cutoff and --without-new-users: one protocol's view at a time"
        )
    ds = load_leave_one_out(dataset, data)
    from training.retrieval.data import FitData

    # Model, tokenizer and template are checked before any example is built.
    check_config(cfg, FitData.from_dataset(ds).item_text[:1])
    # A re-ranker of a cold protocol's view is named apart: it must not overwrite, or
    # resume the run of, the one trained on every interaction.
    label = cfg.mode
    if new_items_cutoff is not None:
        label = f"{cfg.mode}-before-q{new_items_cutoff:g}"
    elif without_new_users:
        label = f"{cfg.mode}-without-new-users"
    target = out or str(DEFAULT_ROOT / "rerankers" / dataset / label)
    runs = runs or str(DEFAULT_ROOT / "train-runs")
    name = name or f"{dataset}-{label}-{cfg.weights_digest()}"
    check_resumable(runs, name, cfg)  # before minutes of building examples
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
            local,
            runs,
            name,
            address,
            spec,
            new_items_cutoff,
            without_new_users,
        )
    if storage.local_path(target) is None:
        console.print(f"uploaded the re-ranker to {target}")


def _train(
    ds, cfg, settings, target: Path, runs, run_name, address, spec, cutoff, without_users
) -> None:
    from training.evaluation.cold_rerank import prepare_before_cutoff, prepare_without_new_users
    from training.reranker.examples import INSERT_DEPTH
    from training.reranker.prepared import prepare_examples

    start_threads()
    with console.status("building examples (retrieval stack on held-out items)"):
        if cutoff is not None:
            prepared = prepare_before_cutoff(ds, cfg, settings, cutoff, False, spec)
        elif without_users:
            prepared = prepare_without_new_users(ds, cfg, settings, progress=False, spec=spec)
        else:
            prepared = prepare_examples(ds, cfg, settings, progress=False, spec=spec)
    lm = (
        ""
        if cfg.mode == "features"
        else f" (the LM trains on {len(prepared.capped(settings).train)})"
    )
    depth = INSERT_DEPTH if settings.insert_target else cfg.template.candidates
    console.print(
        f"{len(prepared.train)} training examples{lm} ({prepared.skipped} positions skipped: "
        f"the true item not in the fused top-{depth}); "
        f"{len(prepared.val)}/{prepared.val_total} validation "
        "users have their target among the candidates"
    )
    from cluster.ray_runtime import connect

    connect(address, dashboard=True)
    from training.reranker.recipe import train_recipe

    if cfg.mode == "hybrid" and settings.init_features_from is None:
        console.print("stage 1/2: the feature layer alone; stage 2/2: the hybrid from it")

    def done(stage: str, result) -> None:
        print_history(stage, result.history)

    result = train_recipe(prepared, cfg, settings, target, runs, run_name, on_stage=done)
    console.print(f"best checkpoint -> {result.path} ({result.seconds:.0f} s in Ray Train)")
    if settings.dp_epsilon is not None:
        privacy = json.loads((Path(result.path) / "reranker.json").read_text()).get("privacy")
        console.print(f"privacy: {training_privacy_line(privacy)} (the last epoch is released)")
    print_routing(result.path)


class Fusion(StrEnum):
    refit = "refit"
    reranker = "reranker"


@app.command()
@user_errors
def fit(
    dataset: DatasetName = "ml-100k",
    data: DatasetUri = None,
    out: Annotated[
        str | None,
        typer.Option(help="stack folder or URI [default: artifacts/stacks/<name>]"),
    ] = None,
    stack_spec: StackSpecFile = None,
    text_model: TextModel = None,
    full_fit: FullFitMode = FullFit.auto,
) -> None:
    """Fit the retrievers (CF, transitions, content, popularity, the learned fusion) on every
    interaction; `llmrec publish --stack` bundles the result into a model version."""
    from training.publish import fit_retrievers

    spec = stack_spec_for(dataset, stack_spec, text_model)
    ds = load_leave_one_out(dataset, data)
    target = out or str(DEFAULT_ROOT / "stacks" / dataset)
    start = time.perf_counter()
    start_threads()
    with console.status("fitting the retrieval stack on all interactions") as status:
        steps = fit_progress(status)
        stack = fit_retrievers(
            ds, target, progress=False, spec=spec, steps=steps, full_fit=full_fit
        )
    console.print(
        f"fitted {', '.join(stack.sources)} on dataset {ds.manifest.version} -> {target} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    for name, model in stack.sources.items():
        if model.fit_info:
            console.print(f"  {name}: {model.fit_info}")
    if stack.segment is not None:
        console.print(f"  segment popularity: {privacy_line(stack.segment.fit_info)}")
    release = stack.covisits.fit_info if stack.covisits is not None else None
    similar = list(stack.similar_models())
    console.print(f"  similar items: {covisit_line(release, similar)}")


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
    stack_spec: StackSpecFile = None,
    text_model: TextModel = None,
    fusion: Annotated[
        Fusion,
        typer.Option(
            help="the fitted stack's fusion: learned here on held-out items (refit), or the "
            "one the --reranker was trained with (reranker: one fit of every source less)"
        ),
    ] = Fusion.refit,
    full_fit: FullFitMode = FullFit.auto,
) -> None:
    """Publish the retrieval stack with the re-ranker as a new model version; CURRENT points
    at it, so a Serve application on `version: latest` swaps to it without downtime."""
    from training.publish import publish_version

    if stack and (stack_spec or text_model or full_fit is not FullFit.auto):
        raise LlmrecError(
            "--stack is fitted already: --stack-spec, --text-model and --full-fit apply to a "
            "fit here only"
        )
    # A fitted stack (--stack) brings its own spec.
    spec = None if stack else stack_spec_for(dataset, stack_spec, text_model)
    ds = load_leave_one_out(dataset, data)
    target = root or str(DEFAULT_ROOT / "models" / dataset)
    doing = "bundling" if stack else "fitting the retrieval stack on all interactions and bundling"
    start_threads()
    with console.status(doing):
        mv = publish_version(
            ds,
            target,
            reranker,
            version,
            progress=False,
            stack=stack,
            spec=spec,
            fusion_from_reranker=fusion is Fusion.reranker,
            full_fit=full_fit,
        )
    console.print(
        f"published {mv.version} -> {mv.uri} (re-ranker: {'yes' if mv.reranker else 'none'})"
    )
    info = json.loads((mv.path / "version.json").read_text())
    console.print(f"segment popularity: {privacy_line(info.get('privacy'))}")
    similar = list(mv.stack().similar_models())
    console.print(f"similar items: {covisit_line(info.get('covisit_privacy'), similar)}")
    total = info.get("aggregates_privacy")
    if total is not None and len(total["releases"]) > 1:
        console.print(
            f"released counts together: epsilon {total['epsilon']:g}, delta {total['delta']:g} "
            "(basic composition: the same users are in each)"
        )
    if mv.reranker is not None:
        console.print(f"re-ranker: {training_privacy_line(info.get('reranker_privacy'))}")
        print_routing(mv.reranker)
