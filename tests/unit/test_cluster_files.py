"""cluster/: the launcher YAML, the KubeRay manifests and the job entrypoints agree with the
Serve profile, Ray's schemas and the CLI (no Kubernetes here: parsed and checked)."""

from __future__ import annotations

import copy
import subprocess
import sys

import yaml

from cluster import manifests as m


def test_every_cluster_file_checks_out():
    assert m.all_problems() == []


def test_the_check_command_passes_and_changes_nothing():
    before = m.RAYSERVICE.read_text()
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.manifests", "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert m.RAYSERVICE.read_text() == before


def test_the_rayservice_serves_the_gpu_profile():
    service = yaml.safe_load(m.RAYSERVICE.read_text())
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == yaml.safe_load(m.PROFILE.read_text())


def test_profile_drift_is_caught_and_synced():
    text = m.RAYSERVICE.read_text()
    edited = m.profile_body().replace("deadline_ms: 150", "deadline_ms: 120")
    drifted = m.with_serve_config(text, edited)
    assert drifted != text and "deadline_ms: 120" in drifted
    assert m.with_serve_config(drifted, m.profile_body()) == text
    # the rest of the manifest is untouched
    assert drifted.split("rayClusterConfig:")[1] == text.split("rayClusterConfig:")[1]


def _service():
    service = yaml.safe_load(m.RAYSERVICE.read_text())
    return yaml.safe_load(service["spec"]["serveConfigV2"]), service["spec"]["rayClusterConfig"]


def test_a_cluster_too_small_for_the_serve_config_is_reported():
    serve_cfg, cluster = _service()
    assert m.capacity_problems(serve_cfg, m.kuberay_groups(cluster), "x") == []
    small = copy.deepcopy(cluster)
    gpu = next(g for g in small["workerGroupSpecs"] if g["groupName"] == "gpu")
    gpu["maxReplicas"] = 2  # the Reranker may scale to 8 one-GPU replicas
    problems = m.capacity_problems(serve_cfg, m.kuberay_groups(small), "x")
    assert "x: at most 2 GPU but the Serve config may ask for 8 at its maximum replica counts" in (
        problems
    )
    gpu["rayStartParams"]["num-cpus"] = "1"  # a replica needs 2 CPUs next to its GPU
    problems = m.capacity_problems(serve_cfg, m.kuberay_groups(small), "x")
    assert any("no node type fits one Reranker replica" in p for p in problems)


def test_custom_resources_must_exist_on_some_node():
    serve_cfg, cluster = _service()
    d = serve_cfg["applications"][0]["deployments"][0]
    d["ray_actor_options"]["resources"] = {"store_node": 1}
    assert any("Api" in p for p in m.capacity_problems(serve_cfg, m.kuberay_groups(cluster), "x"))


def test_bad_serve_configs_are_reported():
    serve_cfg, _ = _service()
    bad = copy.deepcopy(serve_cfg)
    bad["applications"][0]["deployments"][2]["user_config"] = {"compression": {"int8": "sometimes"}}
    bad["applications"][0]["deployments"].append({"name": "Nope"})
    bad["applications"][0]["deployments"][0]["max_ongoing_requests"] = "lots"
    problems = m.serve_config_problems(bad, "x")
    assert any("not a valid Serve config" in p for p in problems)
    assert any("unknown deployment 'Nope'" in p for p in problems)
    assert any("Reranker" in p and "compression.int8" in p for p in problems)


def test_entrypoints_may_only_use_real_commands_and_options():
    ok = "llmrec prepare --dataset ml-100k --out /x && llmrec publish --root s3://b/m --stack /s"
    assert m.entrypoint_problems(ok, "x") == []
    bad = "llmrec prepare --no-such-flag 1 && llmrec deploy-everything"
    assert m.entrypoint_problems(bad, "x") == [
        "x: `llmrec prepare` has no option --no-such-flag",
        "x: `llmrec deploy-everything` does not exist",
    ]
    assert m.entrypoint_problems("python other.py", "x") == [
        "x: the entrypoint runs no llmrec stage"
    ]


def test_the_launcher_yaml_is_checked_against_rays_schema():
    launcher = yaml.safe_load(m.LAUNCHER.read_text())
    assert m.launcher_schema_problems(launcher) == []
    launcher["available_node_types"]["gpu_worker"]["resources"] = {"GPU": "one"}
    assert m.launcher_schema_problems(launcher)


def test_images_follow_the_ray_version():
    assert m.image_problems("image: ghcr.io/llmrec/llmrec:2.60.0-gpu", "x", "2.60.0") == []
    assert m.image_problems("image: ghcr.io/llmrec/llmrec:2.9.0-gpu", "x", "2.60.0")
    assert m.image_problems('rayVersion: "2.59.0"', "x", "2.60.0")


def test_the_application_builder_takes_what_serve_passes():
    """`serve run`/`serve deploy` call the builder with exactly one argument."""
    assert m.builder_problems("serving.app:build_app", "x") == []
    assert m.builder_problems("serving.deploy:check_insecure", "x") == [
        "x: Serve calls serving.deploy:check_insecure with one argument; it takes 2"
    ]


def test_an_image_without_the_profiles_serve_env_is_reported():
    dockerfile = (m.CLUSTER / "Dockerfile").read_text()
    profile = yaml.safe_load(m.PROFILE.read_text())
    assert m.image_env_problems(dockerfile, profile, "Dockerfile") == []
    broken = dockerfile.replace("RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0", "")
    assert m.image_env_problems(broken, profile, "Dockerfile") == [
        "Dockerfile: ENV must set RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP as the Serve "
        "profile's runtime_env does"
    ]


def _redis():
    docs = [d for d in yaml.safe_load_all(m.REDIS.read_text()) if d]
    service = yaml.safe_load(m.RAYSERVICE.read_text())
    store = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]["store"]
    return docs, service, store


def test_the_redis_manifest_keeps_the_durability_promise_and_matches_the_rayservice():
    from cluster.redis_manifest import redis_problems

    docs, service, store = _redis()
    assert redis_problems(docs, service, store, "r") == []
    weak = copy.deepcopy(docs)
    sts = next(d for d in weak if d["kind"] == "StatefulSet")
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    args[args.index("always")] = "everysec"
    sts["spec"]["volumeClaimTemplates"] = []
    assert redis_problems(weak, service, store, "r") == [
        "r: redis-server needs --appendonly yes --appendfsync always",
        "r: the AOF directory /data is not on a PersistentVolumeClaim",
    ]
    assert redis_problems(docs, service, "redis://elsewhere:6379/0", "r") == [
        "r: Service 'llmrec-redis', but the store names 'elsewhere'"
    ]
    no_env = copy.deepcopy(service)
    no_env["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][
        0
    ].pop("env")
    (problem,) = redis_problems(docs, no_env, store, "r")
    assert problem.startswith("rayservice.yaml: the gpu pods must read $LLMREC_REDIS_PASSWORD")


def test_the_ingress_reaches_serve_with_tls_and_the_apis_body_limit():
    from cluster.ingress_manifest import PREFIX, ingress_problems, nginx_size
    from serving.api_models import MAX_BODY_BYTES

    ingress = yaml.safe_load(m.INGRESS.read_text())
    service = yaml.safe_load(m.RAYSERVICE.read_text())
    assert ingress_problems(ingress, service, MAX_BODY_BYTES) == []
    assert [nginx_size(v) for v in ("2m", "512k", "100", "2 m")] == [2 << 20, 512 << 10, 100, None]
    bad = copy.deepcopy(ingress)
    bad["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] = "llmrec-head-svc"
    bad["spec"].pop("tls")
    bad["metadata"]["annotations"][PREFIX + "proxy-body-size"] = "10m"
    bad["metadata"]["annotations"].pop(PREFIX + "limit-rps")
    assert ingress_problems(bad, service, MAX_BODY_BYTES) == [
        "ingress.yaml: backend llmrec-head-svc:8000, but Serve is llmrec-serve-svc:8000",
        "ingress.yaml: no tls: API keys would cross the network in clear",
        "ingress.yaml: proxy-body-size must be the API's body limit, 2097152 bytes "
        "(serving/api_models.py: MAX_BODY_BYTES)",
        "ingress.yaml: no limit-rps: a flood reaches Serve's proxy unlimited",
    ]


def test_every_ray_container_loads_the_proxy_gate_on_the_apis_key_file():
    service = yaml.safe_load(m.RAYSERVICE.read_text())
    keys = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert m.proxy_gate_problems(service, keys["api_keys"], "rs") == []
    broken = copy.deepcopy(service)
    worker = broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    env = worker["template"]["spec"]["containers"][0]["env"]
    env[:] = [e for e in env if e["name"] != "LLMREC_PROXY_API_KEYS"]
    (problem,) = m.proxy_gate_problems(broken, keys["api_keys"], "rs")
    assert "ray-worker must set" in problem
    assert m.proxy_gate_problems(service, "/elsewhere.json", "rs")  # another key file
