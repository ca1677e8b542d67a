"""`llmrec demo`: the quick start on the embedded MovieLens-100k defaults."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cluster.commands.common import (
    DEFAULT_ROOT,
    Engine,
    app,
    console,
    prepare_dataset,
    user_errors,
)
from cluster.commands.models import Fusion, eval_, publish, train
from cluster.commands.serving import serve_graph
from pipelines.prepare import PrepareConfig

#: SASRec's schedule in the demo: 20 epochs of batch 128, about 2.2x faster than the
#: production schedule (40 of batch 32). SASRec alone then scores test NDCG@10 0.094-0.098
#: on ML-100k instead of 0.106-0.110 (benchmarks/results/sasrec.json); docs/DEMO.md gives
#: what the demo's fused order and re-ranker lose with it.
DEMO_SASREC = {"epochs": 20, "batch_size": 128}


def demo_sources():
    """The production sources with SASRec's demo schedule (a `training.stack.StackSpec`)."""
    from training.retrieval import SelfAttentive
    from training.stack import DEFAULT_SOURCES

    return {**DEFAULT_SOURCES, "SASRec": (SelfAttentive, DEMO_SASREC)}


@app.command()
@user_errors
def demo(
    root: Annotated[Path, typer.Option(help="where artifacts go")] = DEFAULT_ROOT,
    engine: Annotated[Engine, typer.Option(help="the prepare stage's engine")] = Engine.ray,
    full: Annotated[
        bool,
        typer.Option(
            help="the production schedules: SASRec's full training, every example, up to 10 "
            "epochs (hours on CPU)"
        ),
    ] = False,
    evaluate: Annotated[
        bool, typer.Option(help="evaluate the re-ranker on the test split before publishing")
    ] = False,
    serve_: Annotated[
        bool, typer.Option("--serve/--no-serve", help="end by serving until Ctrl-C")
    ] = True,
    port: Annotated[int, typer.Option()] = 8000,
) -> None:
    """The whole system on the embedded MovieLens-100k defaults, reusing what is built:
    prepare -> train the re-ranker (a few minutes on CPU; --full for the real run) ->
    publish a model version -> serve on 127.0.0.1 until Ctrl-C (--evaluate: evaluate
    before publishing)."""
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
        lambda: (
            prepare_dataset(
                "ml-100k", str(data), engine.value, None, False, PrepareConfig(), {}
            ).version
        ),
        str(data) if (data / MANIFEST).exists() else None,
    )
    reranker = root / "rerankers" / "ml-100k" / "hybrid"
    # The demo's retrieval stack: the production sources with SASRec's shorter schedule
    # (DEMO_SASREC), unless --full. One file, read by train and publish alike.
    spec_file = root / "stacks" / ("ml-100k-spec.json" if full else "ml-100k-demo-spec.json")
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    from training.stack import DEFAULT_SOURCES, spec_to_json

    spec = DEFAULT_SOURCES if full else demo_sources()
    spec_file.write_text(json.dumps({"sources": spec_to_json(spec)}, indent=2))

    def train_it() -> str:
        train(
            data=str(data),
            out=str(reranker),
            runs=str(root / "train-runs"),
            name=f"demo-{int(time.time())}",
            full=full,
            stack_spec=str(spec_file),
            # The CPU default stays within minutes; --full trains on every example.
            max_examples=3000 if full else 400,
            epochs=3 if full else 1,
            val_users=400 if full else 150,
            routing_users=400 if full else 150,
        )
        return str(reranker)

    step(
        "2. train the re-ranker",
        train_it,
        str(reranker) if (reranker / "reranker.json").exists() else None,
    )
    evaluation = (
        f"llmrec eval --no-retrievers --stack-spec {spec_file} --reranker hybrid={reranker}"
    )
    if evaluate:
        report = root / "eval" / "ml-100k" / "rerank.json"

        def eval_it() -> str:
            eval_(
                data=str(data),
                out=str(root / "eval" / "ml-100k"),
                reranker=[f"hybrid={reranker}"],
                retrievers=False,
                resamples=1000,
                stack_spec=str(spec_file),
            )
            return str(report)

        step("3. evaluate", eval_it)
    models = root / "models" / "ml-100k"

    def publish_it() -> str:
        # The fusion the re-ranker was trained with: one fit of the stack instead of two.
        publish(
            data=str(data),
            reranker=str(reranker),
            root=str(models),
            stack_spec=str(spec_file),
            fusion=Fusion.reranker,
        )
        return str(models)

    step(
        f"{4 if evaluate else 3}. publish a model version",
        publish_it,
        str(models) if (models / "CURRENT").exists() else None,
    )
    console.print(steps)
    if not evaluate:
        console.print(f"to evaluate the re-ranker on the test split: {evaluation}", soft_wrap=True)
    if serve_:
        keys = root / "serving" / "api-keys.json"
        key = _demo_key(keys)
        console.print(
            f"API key for this demo (every scope; revoke with llmrec keys revoke demo --file "
            f"{keys}):\n  {key}",
            highlight=False,
            soft_wrap=True,
        )
        store = f"sqlite://{root / 'serving' / 'events.db'}"
        serve_graph("cpu", str(models), store, port, None, key=key, api_keys=str(keys))


def _demo_key(path: Path) -> str:
    """A fresh key named demo with every scope; the previous demo key is revoked (a key is
    shown only once, so each run makes its own)."""
    from cluster.commands.keys import create_key
    from serving.auth import SCOPES, read_keys, revoke, write_keys

    records = read_keys(str(path))
    if any(r.active and r.name == "demo" for r in records):
        revoke(records, "demo")
        write_keys(path, records)
    return create_key(str(path), "demo", list(SCOPES))
