"""What `run_profile` deploys: the profile as `serve deploy` takes it, with the caller's
args, live settings, environment and port."""

from __future__ import annotations

import os

import pytest
from ray.serve.schema import ServeDeploySchema

from serving.deploy import export_serve_env, read_profile, render_config, resolved_args, serve_env


def test_the_deployed_config_is_the_profile_with_the_callers_changes():
    profile = read_profile("cpu")
    cfg = render_config(
        "cpu", {"model_root": "/m"}, port=8123, user_config={"rerank": False}, env={"X_TEST": "1"}
    )
    ServeDeploySchema.model_validate(cfg)  # what `serve deploy` would accept
    app, before = cfg["applications"][0], profile["applications"][0]
    assert cfg["http_options"]["port"] == 8123 and cfg["http_options"]["host"] == "127.0.0.1"
    assert app["args"] == resolved_args("cpu", {"model_root": "/m"})
    assert app["args"]["model_root"] == "/m" and app["args"]["deadline_ms"] == 200
    env = app["runtime_env"]["env_vars"]
    assert env["X_TEST"] == "1"
    assert env["RAY_SERVE_USE_GRPC_BY_DEFAULT"] == "1"  # the profile's Serve settings kept
    for d, was in zip(app["deployments"], before["deployments"], strict=True):
        assert d["user_config"] == {**was.get("user_config", {}), "rerank": False}
        assert d.get("ray_actor_options") == was.get("ray_actor_options")


def test_keys_may_be_off_only_on_loopback():
    render_config("cpu", user_config={"insecure_local": True})
    with pytest.raises(ValueError, match="insecure_local"):
        render_config("cpu", user_config={"insecure_local": True}, host="0.0.0.0")


def test_the_profiles_serve_env_reaches_this_process_without_overriding_a_choice(monkeypatch):
    env = serve_env("cpu")
    assert env["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] == "0"
    for k in env:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RAY_SERVE_USE_GRPC_BY_DEFAULT", "0")  # an operator's choice
    export_serve_env("cpu")
    assert os.environ["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] == "0"
    assert os.environ["RAY_SERVE_USE_GRPC_BY_DEFAULT"] == "0"
