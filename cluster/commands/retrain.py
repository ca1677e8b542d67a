"""`llmrec retrain`: the retraining loop (cluster/retrain_job.py) once or on a schedule.
Also a job entrypoint: `ray job submit -- llmrec retrain --once ...`."""

from __future__ import annotations

import re
import time
from typing import Annotated

import typer

from cluster.commands.common import (
    DEFAULT_ROOT,
    DEFAULT_STORE,
    Engine,
    EventStoreUrl,
    app,
    console,
    start_threads,
    user_errors,
)
from cluster.settings_options import settings_options
from pipelines.errors import LlmrecError
from training.retrain_gate import GateSettings

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_every(text: str) -> float:
    """`90s`, `30m`, `6h`, `1d` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text or "")
    if not m or float(m.group(1)) <= 0:
        raise LlmrecError(f"--every '{text}': use a positive number with s, m, h or d (e.g. 6h)")
    return float(m.group(1)) * _UNITS[m.group(2)]


@app.command()
@user_errors
@settings_options(gate=GateSettings)
def retrain(
    dataset: Annotated[str, typer.Option(help="dataset name (names the default folders)")] = (
        "ml-100k"
    ),
    models: Annotated[
        str | None,
        typer.Option(help="model versions, folder or URI [default: artifacts/models/<name>]"),
    ] = None,
    store: EventStoreUrl = DEFAULT_STORE,
    datasets: Annotated[
        str | None,
        typer.Option(
            help="where dataset versions go [default: artifacts/datasets/<name>.versions]"
        ),
    ] = None,
    reports: Annotated[
        str | None,
        typer.Option(help="where reports go [default: artifacts/retrain/<name>]"),
    ] = None,
    once: Annotated[bool, typer.Option(help="one retrain, then exit")] = False,
    every: Annotated[
        str | None, typer.Option(help="retrain on a schedule: 30m, 6h, 1d (runs until stopped)")
    ] = None,
    warm: Annotated[
        bool,
        typer.Option(
            help="start from the live version: SASRec's weights, the re-ranker's adapter "
            "(off, or after an erasure: every model from scratch)"
        ),
    ] = True,
    warm_share: Annotated[
        float,
        typer.Option(
            min=0.01,
            max=1.0,
            help="when warm: the share of SASRec's epochs trained from the live weights",
        ),
    ] = 0.25,
    reranker: Annotated[
        bool, typer.Option(help="train a re-ranker when the live version has one")
    ] = True,
    warm_epochs: Annotated[int, typer.Option(min=1, help="re-ranker epochs when warm")] = 1,
    warm_examples: Annotated[
        int, typer.Option(min=1, help="re-ranker training examples when warm")
    ] = 600,
    engine: Annotated[Engine, typer.Option(help="the dataset job: ray or local")] = Engine.local,
    *,
    gate: GateSettings,
) -> None:
    """Retrain from the live version's data plus the stored events; publish the candidate
    only if it is not significantly worse on the same held-out interactions. Exits 1 with
    the reason when the gate refuses (the live version stays)."""
    from cluster.retrain_job import GateRefused, RetrainOptions, run_retrain
    from serving.events import StoreUnavailable, open_store

    if once == (every is not None):
        raise LlmrecError("say how often: --once, or --every 6h")
    period = parse_every(every) if every else 0.0
    opts = RetrainOptions(
        models=models or str(DEFAULT_ROOT / "models" / dataset),
        store_url=store,
        datasets=datasets or str(DEFAULT_ROOT / "datasets" / f"{dataset}.versions"),
        reports=reports or str(DEFAULT_ROOT / "retrain" / dataset),
        gate=gate,
        warm=warm,
        warm_share=warm_share,
        reranker=reranker,
        warm_epochs=warm_epochs,
        warm_examples=warm_examples,
        engine=engine.value,
    )
    start_threads()
    while True:
        try:
            the_store = open_store(store)
        except (ValueError, StoreUnavailable) as e:
            raise LlmrecError(str(e)) from None
        try:
            run_retrain(opts, the_store, console)
        except GateRefused as e:
            if once:
                raise LlmrecError(str(e)) from None
            console.print(f"[red]{e}[/red]")
        if once:
            return
        console.print(f"next retrain in {every} ({time.strftime('%H:%M', time.localtime())})")
        time.sleep(period)
