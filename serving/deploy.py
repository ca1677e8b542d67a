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
    blocking: bool = False,
    env: dict[str, str] | None = None,
):
    """Deploy the profile's application on the connected Ray cluster.

    `args` override the profile's application args; `user_config` is merged into every
    deployment's user_config (a live change: replicas reconfigure in place); `env` overrides
    the environment the application gives its replicas (new replicas only). Returns the
    ingress handle."""
    from ray import serve

    from serving.app import compose

    cfg = read_profile(profile)
    app_cfg = cfg["applications"][0]
    http = dict(cfg.get("http_options", {}))
    if port is not None:
        http["port"] = port
    if host is not None:
        http["host"] = host
    check_insecure(
        {**app_cfg.get("args", {}), **(args or {}), **(user_config or {})},
        http.get("host", "127.0.0.1"),
    )
    serve.start(
        http_options={"host": http.get("host", "127.0.0.1"), "port": http.get("port", 8000)},
        logging_config=cfg.get("logging_config"),
    )
    if env:
        runtime_env = app_cfg.setdefault("runtime_env", {})
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **env}
    options = deployment_options(app_cfg, user_config)
    merged = {**app_cfg.get("args", {}), **(args or {})}
    return serve.run(
        compose(merged, options),
        name=app_cfg.get("name", APP_NAME),
        route_prefix=app_cfg.get("route_prefix", "/"),
        # serve.start's logging_config reaches the controller and proxy only; the replicas
        # take theirs here (`serve deploy` applies the top-level one to both itself).
        logging_config=app_cfg.get("logging_config", cfg.get("logging_config")),
        blocking=blocking,
    )


def deployment_options(
    app_cfg: dict[str, Any], user_config: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Each deployment's options as `serve run` / `serve deploy` would apply the profile's
    application: its `runtime_env` is every deployment's (a deployment's own keys win, env
    vars merged), and `user_config` is merged into every deployment's user_config."""
    app_env = app_cfg.get("runtime_env") or {}
    options = {}
    for d in app_cfg.get("deployments", []):
        o = {k: v for k, v in d.items() if k != "name"}
        if app_env:
            actor = dict(o.get("ray_actor_options") or {})
            own = actor.get("runtime_env") or {}
            env = {**app_env.get("env_vars", {}), **own.get("env_vars", {})}
            actor["runtime_env"] = {**app_env, **own, **({"env_vars": env} if env else {})}
            o["ray_actor_options"] = actor
        if user_config:
            o["user_config"] = {**o.get("user_config", {}), **user_config}
        options[d["name"]] = o
    return options


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
) -> dict[str, Any]:
    """A Serve config that `serve deploy` takes as it is: the profile with resolved args."""
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
    check_insecure(app["args"], http.get("host", "127.0.0.1"))
    return cfg
