"""Run the Serve graph from a profile YAML in Python (`llmrec serve`, tests): the same file
`serve run` / `serve deploy` take, so replicas, resources, autoscaling and live settings
have one source of truth."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

PROFILES = Path(__file__).parent / "profiles"
APP_NAME = "llmrec"


def read_profile(profile: str | Path) -> dict[str, Any]:
    path = Path(profile)
    # A profile name wins over a folder of that name here ("cluster" is one).
    if not path.is_file() and (PROFILES / f"{profile}.yaml").exists():
        path = PROFILES / f"{profile}.yaml"
    return yaml.safe_load(path.read_text())


def app_env_vars(app_cfg: dict[str, Any]) -> dict[str, str]:
    """The environment a Serve application gives its replicas (`runtime_env.env_vars`)."""
    env = (app_cfg.get("runtime_env") or {}).get("env_vars", {})
    return {k: str(v) for k, v in env.items()}


def serve_env(profile: str | Path) -> dict[str, str]:
    """The environment the profile's application gives its replicas: Serve's own thread
    settings."""
    return app_env_vars(read_profile(profile)["applications"][0])


def export_serve_env(profile: str | Path) -> None:
    """Put the profile's replica environment into this process's, where it is not set, so
    that a Ray cluster started from here gives it to Serve's controller and proxy too:
    those are not the application's and do not take its runtime_env. A value already set
    wins (an operator's choice)."""
    for k, v in serve_env(profile).items():
        os.environ.setdefault(k, v)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_insecure(args: dict[str, Any], host: str) -> None:
    """Key checking may be off only where nobody else can connect."""
    if args.get("insecure_local") and host not in LOOPBACK:
        raise ValueError(
            f"insecure_local: API keys may be off only with the proxy on 127.0.0.1, but "
            f"http_options.host is {host}; create a key (llmrec keys create) instead"
        )


def run_profile(
    profile: str | Path,
    args: dict[str, Any] | None = None,
    user_config: dict[str, Any] | None = None,
    port: int | None = None,
    host: str | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 600.0,
) -> None:
    """Deploy the profile's application on the connected Ray cluster as `serve deploy`
    deploys the same file (`render_config`), and wait until it runs. Deployed again with
    only another `user_config`, the running replicas reconfigure in place (a live change);
    other args or another `env` replace them. (Serve's imperative `serve.run` would replace
    every replica on each call, whatever changed.)"""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    cfg = render_config(profile, args, port, host, user_config=user_config, env=env)
    http = cfg["http_options"]
    serve.start(
        http_options={"host": http.get("host", "127.0.0.1"), "port": http.get("port", 8000)},
        logging_config=cfg.get("logging_config"),
    )
    # What `serve deploy` sends, handed to the controller directly (no dashboard needed).
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(cfg))
    wait_running(cfg["applications"][0].get("name", APP_NAME), timeout_s)


def wait_running(name: str, timeout_s: float) -> None:
    """Until the application `name` runs its latest config; its own message if it failed.
    (Applying a config turns the application DEPLOYING before the call returns, so RUNNING
    here is the new config's.)"""
    import time

    from ray import serve

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        app = serve.status().applications.get(name)
        status = str(app.status) if app is not None else "NOT_STARTED"
        if status.endswith("RUNNING"):
            return
        if status.endswith("DEPLOY_FAILED"):
            raise RuntimeError(f"Serve application {name} failed to deploy: {app.message}")
        time.sleep(0.2)
    raise TimeoutError(f"Serve application {name} is not running after {timeout_s:.0f} s")


def resolved_args(profile: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The profile's application args with `overrides`, local paths made absolute: replicas
    do not run in the caller's working directory (URIs pass through unchanged)."""
    cfg = read_profile(profile)
    args = {**cfg["applications"][0].get("args", {}), **(overrides or {})}
    root = str(args.get("model_root", "artifacts/models/ml-100k"))
    if "://" not in root:
        args["model_root"] = str(Path(root).resolve())
    from serving.config import LiveSettings

    keys = args.get("api_keys", LiveSettings.model_fields["api_keys"].default)
    if keys and not str(keys).startswith("env:"):
        args["api_keys"] = str(Path(keys).resolve())
    url = str(args.get("store", "sqlite://artifacts/serving/events.db"))
    if url.startswith("sqlite://"):
        args["store"] = f"sqlite://{Path(url[len('sqlite://') :]).resolve()}"
    return args


def render_config(
    profile: str | Path,
    overrides: dict[str, Any] | None = None,
    port: int | None = None,
    host: str | None = None,
    user_config: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Serve config that `serve deploy` takes as it is: the profile with resolved args,
    `user_config` merged into every deployment's, and `env` over the application's replica
    environment (what `run_profile` deploys, and `llmrec serve-config` writes)."""
    from serving.config import LiveSettings

    cfg = read_profile(profile)
    app = cfg["applications"][0]
    app["args"] = resolved_args(profile, overrides)
    LiveSettings.model_validate(app["args"])  # a bad override fails here, not in a replica
    http = cfg.setdefault("http_options", {})
    if port is not None:
        http["port"] = port
    if host is not None:
        http["host"] = host
    check_insecure({**app["args"], **(user_config or {})}, http.get("host", "127.0.0.1"))
    if env:
        runtime_env = app.setdefault("runtime_env", {})
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **env}
    if user_config:
        for d in app.get("deployments", []):
            d["user_config"] = {**d.get("user_config", {}), **user_config}
    return cfg
