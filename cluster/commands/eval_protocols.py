"""The protocols of `llmrec eval`: leave-one-out (the retrievers, the fusion and re-rankers on
each user's last item), and new-items / new-users (the retrieval stack, and re-rankers
trained on the protocol's view, on items or users they were never trained on)."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from rich.console import Console

from cluster.commands.common import (
    DEFAULT_ROOT,
    console,
    load_leave_one_out,
    read_meta_or_fail,
    stack_spec_for,
    start_threads,
)
from pipelines import storage
from pipelines.errors import LlmrecError


def cold_protocol(
    protocol: str,
    dataset: str,
    data: str | None,
    out: str | None,
    resamples: int,
    spec,
    quantile: float,
    rerankers: dict[str, str],
) -> None:
    """Run `protocol` ("new-items" or "new-users") and write `<protocol>.json` and `.png`
    to `out`; `rerankers` (name -> folder or URI, trained on the protocol's view) each add
    rows."""
    from training.evaluation import new_items, new_users

    ds = load_leave_one_out(dataset, data)
    with contextlib.ExitStack() as stack:
        folders = {
            name: str(stack.enter_context(storage.staged_input(uri)))
            for name, uri in rerankers.items()
        }
        for name, folder in folders.items():
            check_trained_view(protocol, name, folder, ds, quantile)
        start_threads()
        start = time.perf_counter()
        if protocol == "new-items":
            report = new_items.fit_and_evaluate(
                ds, spec, quantile, resamples=resamples, rerankers=folders
            )
            new_items.print_report(report, Console(width=220))
        else:
            report = new_users.fit_and_evaluate(ds, spec, resamples=resamples, rerankers=folders)
            new_users.print_report(report, Console(width=200))
    report["seconds"] = round(time.perf_counter() - start, 1)
    module = new_items if protocol == "new-items" else new_users
    target = out or str(DEFAULT_ROOT / "eval" / dataset)
    with storage.staged_output(target, merge=True) as folder:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{protocol}.json").write_text(json.dumps(report, indent=2))
        module.plot(report, folder / f"{protocol}.png")
    console.print(f"wrote {protocol}.json and .png to {target} ({report['seconds']} s)")


def check_trained_view(protocol: str, name: str, folder: str, ds, quantile: float) -> None:
    """A re-ranker on a cold protocol must have been trained on that protocol's view only
    (`llmrec train --new-items-cutoff` or `--without-new-users`): one trained on every
    interaction has seen the new items' answers, or the new users."""
    from training.evaluation.cold_rerank import cutoff_version, without_users_version

    trained_on = read_meta_or_fail(f"--reranker {name}", folder).get("dataset_version")
    if protocol == "new-items":
        wanted, view = cutoff_version(ds, quantile), "the interactions before this cutoff"
        command = f"llmrec train --new-items-cutoff {quantile:g}"
    else:
        wanted, view = without_users_version(ds), "the users this protocol does not hold out"
        command = "llmrec train --without-new-users"
    if trained_on != wanted:
        raise LlmrecError(
            f"--reranker {name}: trained on {trained_on}, not on {view} ({wanted}); train "
            f"one with `{command}`"
        )


def leave_one_out(
    ds,
    folder: Path,
    retrievers: bool,
    rerankers: dict[str, str],
    resamples: int,
    stack_spec: str | None,
    text_model: str | None = None,
    one_fit: bool = False,
) -> None:
    """The leave-one-out protocol: the retrievers and the fusion (`retrievers`), and
    retrieval + re-rank rows for each of `rerankers` (name -> folder); reports to `folder`."""
    from training.evaluation.report import print_report, write
    from training.stack import spec_from_eval, spec_to_json

    spec = stack_spec_for(ds.manifest.name, stack_spec, text_model)
    start_threads()
    if retrievers:
        from training.evaluation.harness import default_specs, evaluate

        start = time.perf_counter()
        # SASRec is one point, not a grid (a fit is the costliest): the stack's parameters.
        sasrec = next((p for n, (_, p) in spec.items() if n == "SASRec"), None)
        specs = default_specs(text_model=text_model, sasrec=sasrec)
        report = evaluate(ds, specs, resamples=resamples, one_fit=one_fit)
        report["seconds"] = round(time.perf_counter() - start, 1)
        print_report(report, Console(width=200))
        js, png = write(report, folder)
        console.print(f"wrote {js} and {png} ({report['seconds']} s)")
        # The stack validation chose: `--stack-spec` of fit, train and publish.
        spec = spec_from_eval(report, spec)
        chosen = folder / "stack-spec.json"
        chosen.write_text(json.dumps({"sources": spec_to_json(spec)}, indent=2))
        console.print(f"wrote {chosen}: pass it as --stack-spec to fit, train and publish")
    if rerankers:
        from training.reranker.evaluate import evaluate_rerankers

        start = time.perf_counter()
        report = evaluate_rerankers(ds, rerankers, resamples=resamples, spec=spec)
        report["seconds"] = round(time.perf_counter() - start, 1)
        print_report(report, Console(width=200))
        js, png = write(report, folder, stem="rerank")
        console.print(f"wrote {js} and {png} ({report['seconds']} s)")
