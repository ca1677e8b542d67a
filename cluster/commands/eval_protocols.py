"""`llmrec eval --protocol new-items | new-users`: the retrieval stack (and, on new items,
re-rankers trained before the cutoff) on items or users it was never trained on."""

from __future__ import annotations

import contextlib
import json
import time

from rich.console import Console

from cluster.commands.common import (
    DEFAULT_ROOT,
    console,
    load_leave_one_out,
    read_meta_or_fail,
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
    to `out`; `rerankers` (name -> folder or URI, new items only) each add rows."""
    from training.evaluation import new_items, new_users

    ds = load_leave_one_out(dataset, data)
    with contextlib.ExitStack() as stack:
        folders = {
            name: str(stack.enter_context(storage.staged_input(uri)))
            for name, uri in rerankers.items()
        }
        for name, folder in folders.items():
            check_before_cutoff(name, folder, ds, quantile)
        start_threads()
        start = time.perf_counter()
        if protocol == "new-items":
            report = new_items.fit_and_evaluate(
                ds, spec, quantile, resamples=resamples, rerankers=folders
            )
            new_items.print_report(report, Console(width=220))
        else:
            report = new_users.fit_and_evaluate(ds, spec, resamples=resamples)
            new_users.print_report(report, Console(width=200))
    report["seconds"] = round(time.perf_counter() - start, 1)
    module = new_items if protocol == "new-items" else new_users
    target = out or str(DEFAULT_ROOT / "eval" / dataset)
    with storage.staged_output(target, merge=True) as folder:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{protocol}.json").write_text(json.dumps(report, indent=2))
        module.plot(report, folder / f"{protocol}.png")
    console.print(f"wrote {protocol}.json and .png to {target} ({report['seconds']} s)")


def check_before_cutoff(name: str, folder: str, ds, quantile: float) -> None:
    """A re-ranker on the new-item protocol must have been trained before its cutoff
    (`llmrec train --new-items-cutoff`): one trained on every interaction has seen the new
    items and their answers."""
    from training.evaluation.new_items_rerank import cutoff_version

    trained_on = read_meta_or_fail(f"--reranker {name}", folder).get("dataset_version")
    wanted = cutoff_version(ds, quantile)
    if trained_on != wanted:
        raise LlmrecError(
            f"--reranker {name}: trained on {trained_on}, not on the interactions before this "
            f"cutoff ({wanted}); train one with `llmrec train --new-items-cutoff {quantile:g}`"
        )
