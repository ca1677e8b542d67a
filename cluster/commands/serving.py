"""Serving and what reads the served logs: `llmrec serve`, `serve-config`, `report` (A/B
experiments) and `replay` (a candidate model on logged impressions)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cluster.commands.common import (
    DEFAULT_ROOT,
    DEFAULT_STORE,
    ApiKeys,
    EventStoreUrl,
    app,
    console,
    user_errors,
    validation_message,
)
from pipelines.errors import LlmrecError


@app.command()
@user_errors
def serve(
    profile: Annotated[str, typer.Option(help="cpu, gpu, cluster, or a Serve config YAML")] = "cpu",
    root: Annotated[
        str | None, typer.Option(help="model versions [default: the profile's model_root]")
    ] = None,
    store: Annotated[str | None, typer.Option(help="event store URL")] = None,
    port: Annotated[int | None, typer.Option()] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address [default: $RAY_ADDRESS or local]")
    ] = None,
    api_keys: ApiKeys = None,
    insecure_local: Annotated[
        bool,
        typer.Option(
            "--insecure-local",
            help="check no API key at all, and listen on 127.0.0.1 only (a laptop, never a "
            "shared host)",
        ),
    ] = False,
) -> None:
    """Serve the graph from a profile YAML until Ctrl-C. Every endpoint but /healthz and
    /readyz needs an API key (llmrec keys create)."""
    serve_graph(
        profile, root, store, port, address, insecure_local=insecure_local, api_keys=api_keys
    )


def serve_graph(
    profile: str,
    root: str | None,
    store: str | None,
    port: int | None,
    address: str | None,
    insecure_local: bool = False,
    key: str | None = None,
    api_keys: str | None = None,
) -> None:
    """Serve until Ctrl-C; `key` (the demo's) goes into the printed curl lines, `api_keys`
    overrides the profile's key file."""
    from serving.deploy import export_serve_env, read_profile, resolved_args, run_profile
    from training.publish import load_version

    cfg = read_profile(profile)
    export_serve_env(profile)  # before connect: a cluster started here hands it on
    overrides = {
        k: v for k, v in (("model_root", root), ("store", store), ("api_keys", api_keys)) if v
    }
    if insecure_local:
        overrides["insecure_local"] = True
        cfg.setdefault("http_options", {})["host"] = "127.0.0.1"
    args = resolved_args(profile, overrides)
    if not args.get("insecure_local"):
        # Serve's proxy of a cluster started here refuses keys over their own rate itself.
        from serving.proxy_gate import export_env

        export_env(args.get("api_keys"))
    mv = load_version(args["model_root"], args.get("version", "latest"))
    if not str(args["store"]).startswith("sqlite://"):
        # A networked store is checked here (reachable, durable as promised): its one-line
        # error beats a replica's traceback.
        _event_store(args["store"])
    from cluster.ray_runtime import connect

    owned = connect(address)
    _stop_on_signals()
    host = "127.0.0.1" if insecure_local else None
    try:  # Ctrl-C while starting stops as cleanly as Ctrl-C while serving
        with console.status(f"starting the Serve graph on model version {mv.version}"):
            run_profile(profile, args, port=port, host=host)
        _wait_until_ready(cfg, port)
        _print_ready(cfg, port, mv.version)
        _print_access(cfg, port, args, key)
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


def _base_url(cfg: dict, port: int | None) -> str:
    http = cfg.get("http_options", {})
    host = http.get("host", "127.0.0.1")
    return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port or http.get('port', 8000)}"


def _wait_until_ready(cfg: dict, port: int | None, timeout_s: float = 1800) -> None:
    """Poll /readyz until it says ready (models loaded, the known users' lists
    precomputed), showing its reason meanwhile: the first answers after it are normal."""
    import requests

    url, end, reason = f"{_base_url(cfg, port)}/readyz", time.time() + timeout_s, ""
    with console.status("waiting for /readyz") as status:
        while time.time() < end:
            try:
                r = requests.get(url, timeout=5)
                if r.status_code == 200:
                    return
                reason = r.json().get("reason") or reason
            except (requests.RequestException, ValueError):
                pass
            status.update(f"waiting for /readyz: {reason or 'starting'}")
            time.sleep(0.5)
    console.print(f"not ready after {timeout_s:.0f} s ({reason}); serving anyway")


def _print_ready(cfg: dict, port: int | None, version: str) -> None:
    base = _base_url(cfg, port)
    console.print(f"[bold green]serving[/] {version} at {base} (OpenAPI docs: {base}/docs)")


def _print_access(cfg: dict, port: int | None, args: dict, key: str | None) -> None:
    """Who may call, and the curl lines to try (with the demo's key, or a shell variable)."""
    from serving.auth import read_keys

    base = _base_url(cfg, port)
    auth = ""
    if args.get("insecure_local"):
        console.print(
            "[bold red]--insecure-local:[/] API keys are NOT checked; listening on 127.0.0.1 only",
            highlight=False,
        )
    else:
        source = args.get("api_keys")
        try:
            active = sum(r.active for r in read_keys(source))
        except ValueError as e:
            active, source = 0, f"{source} ({e})"
        if not active:
            console.print(
                f"[bold yellow]no API key in {source}:[/] every endpoint but /healthz and "
                "/readyz answers 401. Create one (a running graph picks it up):\n"
                f"  llmrec keys create --name me --scope all --file {source}",
                highlight=False,
                soft_wrap=True,
            )
        # A literal key in single quotes; else the shell expands the variable.
        auth = f" -H 'Authorization: Bearer {key}'" if key else ' -H "Authorization: Bearer $K"'
        if not key:
            console.print("with your key in K:  export K=llmrec_...", highlight=False)
    console.print("try:", highlight=False)
    for line in (
        f"curl -s{auth} '{base}/recommend/1?k=5'",
        f"curl -s{auth} -X POST {base}/events -H 'content-type: application/json' "
        """-d '{"user_id": "1", "item_id": "50", "type": "click"}'""",
        f"curl -s{auth} '{base}/recommend/1?k=5'",
        f"curl -s{auth} '{base}/recommend/new-user-42?k=5'",
        f"curl -s{auth} '{base}/items/50/similar?k=5'",
        f"curl -s{auth} {base}/metrics | grep llmrec_",
    ):
        console.print(f"  {line}", highlight=False, soft_wrap=True)
    console.print("Ctrl-C stops serving.")


@app.command(name="serve-config")
@user_errors
def serve_config(
    profile: Annotated[str, typer.Option(help="cpu, gpu, cluster, or a Serve config YAML")] = "cpu",
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
    api_keys: ApiKeys = None,
) -> None:
    """Write the profile as a config for `serve deploy`, with absolute paths (replicas do not
    run in this folder); `serve deploy` it again to change live settings in place."""
    import yaml
    from pydantic import ValidationError as PydanticError

    from serving.deploy import render_config

    overrides = {
        k: v
        for k, v in (
            ("model_root", root),
            ("store", store),
            ("watch_s", watch_s),
            ("api_keys", api_keys),
        )
        if v is not None
    }
    try:
        cfg = render_config(profile, overrides, port=port, host=host)
    except PydanticError as e:
        raise LlmrecError(f"invalid settings: {validation_message(e)}") from None
    except FileNotFoundError as e:
        raise LlmrecError(f"no profile '{profile}': {e.strerror}") from None
    except ValueError as e:  # insecure_local on a public host
        raise LlmrecError(str(e)) from None
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    console.print(
        f"wrote {out}; deploy it with: serve deploy {out} -a http://<head>:8265",
        soft_wrap=True,
        highlight=False,
    )


def _event_store(store: str):
    """An existing event store (opening a missing SQLite path would create an empty one)."""
    from serving.events import StoreUnavailable, open_store, sqlite_path

    path = sqlite_path(store)
    if path is not None and not Path(path).exists():
        raise LlmrecError(f"no event store at '{path}'")
    try:
        return open_store(store)
    except (ValueError, StoreUnavailable) as e:
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
    from serving.recommender import RetrievalService
    from serving.replay import (
        NOTHING_TO_REPLAY,
        positives,
        print_replay,
        replay_cases,
        replay_report,
    )
    from serving.rerank_service import RerankService
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
