"""`llmrec retrain`: the live version's data plus the events stored since, into the next
model version, published only when it is not significantly worse than the live one.

    new dataset version (live dataset + store events, same preparation rules)
    -> retrieval stack refitted, fusion learned on the new data (warm: SASRec from the live
       weights)
    -> re-ranker fine-tuned from the live version's adapter and heads (when it has one)
    -> both versions measured on the new dataset's held-out interactions
    -> gate (paired bootstrap) -> CURRENT points at the candidate, or stays

Every stage is timed; the report (JSON) says what was added, both versions' metrics with
intervals, and the decision with its reason.
"""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from pipelines import storage
from pipelines.artifact import MANIFEST, Dataset, dataset_version, load_dataset, write_dataset
from pipelines.errors import LlmrecError
from pipelines.prepare import PrepareConfig, run_local
from pipelines.schema import Split
from pipelines.sources.live import from_dataset, with_live_events
from serving.events import EventStore
from serving.store_export import export_store
from training.publish import load_version, publish_version
from training.retrain_gate import Decision, GateSettings, decide
from training.stack import NEXT_SHARE, WarmStart, item_map


class GateRefused(LlmrecError):
    """The candidate is worse than the live version: it was not published."""


@dataclass
class RetrainOptions:
    models: str  # model versions root (CURRENT names the live one)
    store_url: str
    datasets: str  # where dataset versions go: <datasets>/<version>/
    reports: str  # where reports go: <reports>/<candidate version>.json
    gate: GateSettings = field(default_factory=GateSettings)
    warm: bool = True  # SASRec from the live weights, fine-tune the live re-ranker
    warm_share: float = 0.25  # of a full fit, for sources that start warm (SASRec's epochs)
    reranker: bool = True  # train a re-ranker when the live version has one
    warm_epochs: int = 1
    warm_examples: int = 600
    engine: str = "local"
    version: str | None = None
    progress: bool = True
    keep_candidate: bool = False  # keep the gate's fit beside the published version


@dataclass
class Stages:
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, name: str, console: Console):
        start = time.perf_counter()
        with console.status(name):
            yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        console.print(f"{name}: {self.seconds[name]:.1f} s")


def run_retrain(opts: RetrainOptions, store: EventStore, console: Console) -> dict[str, Any]:
    """One retrain; returns the report (also written). Raises `GateRefused` (after writing
    the report) when the gate keeps the live version."""
    stage = Stages()
    version = opts.version or time.strftime("v%Y%m%d-%H%M%S")
    live = load_version(opts.models)
    live_ds = load_dataset(live.dataset_uri)
    live_stack = live.stack()

    with stage("read the event store", console):
        export = export_store(store, _store_name(opts.store_url), progress=False)
    with stage("new dataset version", console):
        ds = _next_dataset(live_ds, export, store, opts)
    erased = ds.manifest.counts.dropped.get("erased", 0)
    if erased and opts.warm:
        # Weights trained on an erased user's rows would carry them into the next version:
        # after an erasure every model starts from scratch.
        console.print(f"{erased} rows of erased users dropped: every model refits from scratch")
        opts = replace(opts, warm=False)
    with tempfile.TemporaryDirectory(prefix="llmrec-retrain-") as scratch:
        with stage("refit the retrieval stack for the gate", console):
            # All but each user's latest interaction, which stays out to measure both
            # versions on, with a fusion learned on held-out items of the new data (one
            # learned on the older data cost 0.008 NDCG@10 after 10,000 events on ML-100k:
            # docs/BENCHMARKS.md). Warm: the held-out fit starts from the live sources.
            warm = None
            if opts.warm:
                warm = WarmStart(live_stack.sources, item_map(live_ds, ds), opts.warm_share)
            gate_stack, embeddings, gate_fit = _fit(
                ds, live_stack, Path(scratch) / "gate", Split.VALIDATION, None, warm, None
            )
        with stage("publish the gate candidate (not live)", console):
            candidate = publish_version(
                ds,
                opts.models,
                None,
                f"{version}.candidate",
                progress=False,
                stack=gate_stack,
                point=False,
            )
        with stage("evaluate live and candidate", console):
            decision, everyone = _compare(live, candidate, live_ds, ds, store, opts)
        if not decision.cases and erased:
            # Nothing to compare on, but the live version holds data of erased users: the
            # erasure must reach the models.
            decision = replace(
                decision,
                publish=True,
                reason=f"no held-out interaction new to the live version; published to "
                f"remove {erased} rows of erased users the live version was trained on",
            )
        if decision.publish:
            reranker = None
            if live.reranker is not None and opts.reranker:
                with stage("fine-tune the re-ranker", console):
                    reranker = _finetune(
                        ds, live.reranker, live_stack, opts, Path(scratch), version
                    )
            with stage("refit on every interaction and publish", console):
                # One interaction per user more than the gate's fit: warm, from its weights,
                # with its fusion.
                warm = None
                if opts.warm:
                    warm = WarmStart(gate_fit.sources, np.arange(ds.manifest.n_items), NEXT_SHARE)
                final, _, _ = _fit(
                    ds,
                    live_stack,
                    Path(scratch) / "final",
                    Split.TEST,
                    embeddings,
                    warm,
                    gate_fit.fusion,
                )
                published = publish_version(
                    ds,
                    opts.models,
                    reranker,
                    version,
                    progress=False,
                    stack=final,
                    extra={"retrained_from": live.version, "live": ds.manifest.live},
                )
            gate_version, candidate = candidate.version, published
        else:
            gate_version = candidate.version
        # The gate's fit served its purpose, unless it was refused (kept for inspection).
        if not opts.keep_candidate and (decision.publish or not decision.cases):
            fs, where = storage.resolve(storage.join(opts.models, gate_version))
            fs.delete_dir(where)
    report = _report(live, candidate, live_ds, ds, decision, stage, opts, everyone)
    path = _write_report(report, opts.reports, candidate.version)
    print_report(report, console)
    console.print(f"report -> {path}")
    if not decision.publish and decision.cases:
        raise GateRefused(f"gate refused {candidate.version}: {decision.reason}")
    return report


def _store_name(url: str) -> str:
    from serving.redis_store import redacted

    return redacted(url)


def _next_dataset(live_ds: Dataset, export, store: EventStore, opts: RetrainOptions) -> Dataset:
    cfg = PrepareConfig.model_validate(
        {k: v for k, v in live_ds.manifest.params.items() if k in PrepareConfig.model_fields}
    )
    source = with_live_events(from_dataset(live_ds, store.key), export, store.key)
    if opts.engine == "ray":
        from cluster.ray_runtime import connect
        from pipelines.prepare_ray import run_ray

        connect()
        data = run_ray(source, cfg)
    else:
        data = run_local(source, cfg)
    target = storage.join(opts.datasets, dataset_version(source.fingerprint, data.params))
    fs, path = storage.resolve(target)
    if not storage.exists(fs, f"{path}/{MANIFEST}"):
        write_dataset(data, target)
    return load_dataset(target, expected_name=live_ds.manifest.name)


def _fit(
    ds: Dataset,
    live_stack,
    out: Path,
    through: Split,
    embeddings,
    warm: WarmStart | None,
    fusion,
):
    """The live stack's own recipe on the new data up to `through` with `fusion` (None: one
    learned here), sources started from `warm`'s. Returns the folder, the item embeddings
    (pass them to the next fit of the same data: they depend on item text only) and the
    stack."""
    from training.stack import fit_stack

    stack, embeddings = fit_stack(
        ds,
        through,
        fusion=fusion,
        progress=False,
        spec=_live_spec(live_stack),
        embeddings=embeddings,
        warm=warm,
    )
    stack.save(out)
    return out, embeddings, stack


def _live_spec(live_stack):
    """The recipe the live stack was fitted with (its segment model's parameters too)."""
    return live_stack.spec()


def _finetune(ds, live_reranker: Path, live_stack, opts, scratch: Path, version: str):
    """The live re-ranker's adapter and heads, trained a bounded number of steps on the new
    data (warm), or its recipe from scratch."""
    from cluster.ray_runtime import connect
    from training.reranker.model import RerankerConfig, read_meta
    from training.reranker.prepared import prepare_examples
    from training.reranker.recipe import train_recipe
    from training.reranker.settings import TrainSettings

    meta = read_meta(live_reranker)
    cfg = RerankerConfig.model_validate(meta["config"])
    settings = TrainSettings.model_validate(meta.get("settings") or {})
    spec = _live_spec(live_stack)
    if opts.warm:
        settings = settings.model_copy(
            update={
                "epochs": opts.warm_epochs,
                "max_examples": opts.warm_examples,
                "init_from": str(live_reranker.resolve()),
                "init_features_from": None,
            }
        )
    prepared = prepare_examples(ds, cfg, settings, progress=False, spec=spec)
    connect()
    target = scratch / "reranker"
    train_recipe(prepared, cfg, settings, target, str(scratch / "runs"), f"retrain-{version}")
    return target


def _compare(live, candidate, live_ds, ds: Dataset, store: EventStore, opts: RetrainOptions):
    """The gate compares on the held-out interactions neither version was fitted on: the
    live version has seen every interaction of its own dataset, so those cases would favour
    it, and it is measured on the others only. The candidate's NDCG@10 over every held-out
    user is reported too (two retrains of the same data must agree on it)."""
    from serving.version_eval import held_out, ndcg_per_case, seen_pairs

    cases = held_out(ds, opts.gate.eval_users)
    seen = seen_pairs(live_ds, store)
    new = np.array([(c.user, c.target) not in seen for c in cases], dtype=bool)
    gate_cases = [c for c, n in zip(cases, new, strict=True) if n]
    a = ndcg_per_case(live, store, gate_cases, progress=opts.progress)
    b = ndcg_per_case(candidate, store, cases, progress=opts.progress)
    everyone = {"cases": len(cases), "candidate": float(b.mean()) if len(b) else None}
    return decide(a, b[new], opts.gate), everyone


def _report(live, candidate, live_ds, ds, decision: Decision, stage, opts, everyone) -> dict:
    m0, m1 = live_ds.manifest, ds.manifest
    return {
        "live": live.version,
        "candidate": candidate.version,
        "published": decision.publish,
        "reason": decision.reason,
        "gate": opts.gate.model_dump(),
        "warm": opts.warm,
        "data": {
            "dataset": {"live": m0.version, "candidate": m1.version},
            "store": m1.live,
            "interactions": {"live": m0.counts.rows["kcore"], "candidate": m1.counts.rows["kcore"]},
            "users": {"live": m0.n_users, "candidate": m1.n_users},
            "items": {"live": m0.n_items, "candidate": m1.n_items},
            "dropped": m1.counts.dropped,
        },
        "metrics": decision.to_json(),
        # The candidate over every held-out user (the live version has seen most targets).
        "all_held_out": everyone,
        "seconds": stage.seconds,
        "total_seconds": round(sum(stage.seconds.values()), 1),
    }


def _write_report(report: dict, reports: str, version: str) -> str:
    target = storage.join(reports, f"{version}.json")
    fs, path = storage.resolve(target)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    storage.write_bytes(fs, path, json.dumps(report, indent=2).encode())
    return target


def print_report(report: dict, console: Console) -> None:
    m = report["metrics"]
    t = Table(title=f"retrain {report['live']} -> {report['candidate']}")
    for c in ("", "live", "candidate"):
        t.add_column(c, justify="right")
    d = report["data"]
    for key in ("interactions", "users", "items"):
        t.add_row(key, str(d[key]["live"]), str(d[key]["candidate"]))
    a = report["all_held_out"]
    if a["cases"]:
        # The live version is not measured there: it was fitted on most of those targets.
        t.add_row(f"NDCG@10, all {a['cases']} held-out", "-", f"{a['candidate']:.4f}")
    if m["live"]:
        t.add_row(
            f"NDCG@10, {m['cases']} held-out new to live",
            f"{m['live']['ndcg@10']:.4f} [{m['live']['low']:.4f}, {m['live']['high']:.4f}]",
            f"{m['candidate']['ndcg@10']:.4f} "
            f"[{m['candidate']['low']:.4f}, {m['candidate']['high']:.4f}]",
        )
    console.print(t)
    verdict = "published" if report["published"] else "REFUSED"
    console.print(f"{verdict}: {report['reason']}")
