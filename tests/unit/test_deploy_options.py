"""What `run_profile` hands `serve.run` for each deployment: the same as `serve run` and
`serve deploy` make of the profile YAML."""

from __future__ import annotations

import os

from serving.deploy import deployment_options, export_serve_env, read_profile, serve_env


def test_every_deployment_of_a_profile_runs_with_the_applications_serve_threads():
    app = read_profile("cpu")["applications"][0]
    options = deployment_options(app)
    assert set(options) == {d["name"] for d in app["deployments"]}
    for o in options.values():
        env = o["ray_actor_options"]["runtime_env"]["env_vars"]
        assert env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
        assert env["RAY_SERVE_USE_GRPC_BY_DEFAULT"] == "1"
    # the rest of each deployment's actor options is kept
    assert options["Reranker"]["ray_actor_options"]["num_cpus"] == 1


def test_a_deployments_own_runtime_env_wins_key_by_key_and_user_config_merges():
    app = {
        "runtime_env": {"env_vars": {"A": "app", "B": "app"}, "pip": ["x"]},
        "deployments": [
            {
                "name": "Api",
                "ray_actor_options": {"num_cpus": 0.5, "runtime_env": {"env_vars": {"B": "own"}}},
                "user_config": {"deadline_ms": 100},
            },
            {"name": "Store"},
        ],
    }
    options = deployment_options(app, {"rerank": False})
    api = options["Api"]
    assert api["ray_actor_options"] == {
        "num_cpus": 0.5,
        "runtime_env": {"env_vars": {"A": "app", "B": "own"}, "pip": ["x"]},
    }
    assert api["user_config"] == {"deadline_ms": 100, "rerank": False}
    assert options["Store"]["ray_actor_options"]["runtime_env"]["env_vars"] == {
        "A": "app",
        "B": "app",
    }
    assert "runtime_env" not in deployment_options({"deployments": [{"name": "X"}]})["X"].get(
        "ray_actor_options", {}
    )


def test_the_profiles_serve_env_reaches_this_process_without_overriding_a_choice(monkeypatch):
    env = serve_env("cpu")
    assert env["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] == "0"
    for k in env:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RAY_SERVE_USE_GRPC_BY_DEFAULT", "0")  # an operator's choice
    export_serve_env("cpu")
    assert os.environ["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] == "0"
    assert os.environ["RAY_SERVE_USE_GRPC_BY_DEFAULT"] == "0"
