"""Run the Serve graph from a profile YAML in Python (`llmrec serve`, tests): the same file
`serve run` / `serve deploy` take, so replicas, resources, autoscaling and live settings
have one source of truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PROFILES = Path(__file__).parent / "profiles"
APP_NAME = "llmrec"


def read_profile(profile: str | Path) -> dict[str, Any]:
    path = Path(profile)
    if not path.exists() and (PROFILES / f"{profile}.yaml").exists():
        path = PROFILES / f"{profile}.yaml"
    return yaml.safe_load(path.read_text())


def run_profile(
    profile: str | Path,
    args: dict[str, Any] | None = None,
    user_config: dict[str, Any] | None = None,
    port: int | None = None,
    host: str | None = None,
    blocking: bool = False,
):
    """Deploy the profile's application on the connected Ray cluster.

    `args` override the profile's application args; `user_config` is merged into every
    deployment's user_config (a live change: replicas reconfigure in place). Returns the
    ingress handle."""
    from ray import serve

    from serving.app import build_app

    cfg = read_profile(profile)
    app_cfg = cfg["applications"][0]
    http = dict(cfg.get("http_options", {}))
    if port is not None:
        http["port"] = port
    if host is not None:
        http["host"] = host
    serve.start(
        http_options={"host": http.get("host", "127.0.0.1"), "port": http.get("port", 8000)},
        logging_config=cfg.get("logging_config"),
    )
    options = {}
    for d in app_cfg.get("deployments", []):
        o = {k: v for k, v in d.items() if k != "name"}
        if user_config:
            o["user_config"] = {**o.get("user_config", {}), **user_config}
        options[d["name"]] = o
    merged = {**app_cfg.get("args", {}), **(args or {})}
    return serve.run(
        build_app(merged, options),
        name=app_cfg.get("name", APP_NAME),
        route_prefix=app_cfg.get("route_prefix", "/"),
        blocking=blocking,
    )
