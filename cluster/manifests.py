"""The cluster files checked against the code they configure.

`python -m cluster.manifests` copies serving/profiles/gpu.yaml into the RayService's
serveConfigV2 (the profile is the one source of truth) and checks every file in cluster/:

- Serve configs validate against Ray's Serve schema, their args and user_configs against
  `LiveSettings`, and they name only deployments the application has;
- each deployment's replica fits a node or pod of the cluster, and the cluster's maximum
  size holds every deployment at its maximum replica count (CPUs, GPUs, custom resources);
- the launcher YAML validates against Ray's cluster-launcher schema;
- job entrypoints call `llmrec` commands and options that exist;
- images and `rayVersion` match the Ray version the project runs.

`--check` changes nothing and exits non-zero on drift or any problem (the unit test and CI).
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from cluster.ingress_manifest import ingress_problems
from cluster.redis_manifest import redis_problems
from serving.api_models import MAX_BODY_BYTES

CLUSTER = Path(__file__).parent
ROOT = CLUSTER.parent
PROFILE = ROOT / "serving" / "profiles" / "gpu.yaml"
RAYSERVICE = CLUSTER / "kuberay" / "rayservice.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob-batch.yaml"
RAYCRONJOB = CLUSTER / "kuberay" / "raycronjob-retrain.yaml"
REDIS = CLUSTER / "kuberay" / "redis.yaml"
INGRESS = CLUSTER / "kuberay" / "ingress.yaml"
LAUNCHER = CLUSTER / "launcher.yaml"
RUNTIME_ENV = CLUSTER / "runtime_env.yaml"
SERVE_KEY = "  serveConfigV2: |\n"


# -- the RayService's serveConfigV2 is the GPU profile -----------------------------------------


def profile_body(path: Path = PROFILE) -> str:
    """The profile without its leading comment block (the manifest has its own)."""
    lines = path.read_text().splitlines(keepends=True)
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)
    return "".join(lines)


def with_serve_config(manifest: str, body: str) -> str:
    """`manifest` with its serveConfigV2 block replaced by `body`."""
    start = manifest.index(SERVE_KEY) + len(SERVE_KEY)
    end = start
    lines = manifest[start:].splitlines(keepends=True)
    for line in lines:
        if line.strip() and not line.startswith("    "):
            break
        end += len(line)
    block = "".join(f"    {x}" if x.strip() else x for x in body.splitlines(keepends=True))
    return manifest[:start] + block + manifest[end:]


# -- resources -------------------------------------------------------------------------------


def replica_demand(deployment: dict[str, Any]) -> dict[str, float]:
    opts = deployment.get("ray_actor_options") or {}
    demand = {"CPU": float(opts.get("num_cpus", 1)), "GPU": float(opts.get("num_gpus", 0))}
    demand.update({k: float(v) for k, v in (opts.get("resources") or {}).items()})
    return {k: v for k, v in demand.items() if v > 0}


def max_replicas(deployment: dict[str, Any]) -> int:
    auto = deployment.get("autoscaling_config")
    if auto:
        return int(auto.get("max_replicas", 1))
    return int(deployment.get("num_replicas", 1))


def _quantity(v: Any) -> float:
    s = str(v)
    return float(s[:-1]) / 1000 if s.endswith("m") else float(s)


def kuberay_groups(cluster: dict[str, Any]) -> dict[str, tuple[dict[str, float], int]]:
    """{group: (resources of one pod as Ray sees them, max pods)}, the head included."""

    def pod(spec: dict[str, Any]) -> dict[str, float]:
        params = spec.get("rayStartParams") or {}
        limits = {}
        for c in spec["template"]["spec"]["containers"]:
            limits.update((c.get("resources") or {}).get("limits") or {})
        res = {
            "CPU": _quantity(params.get("num-cpus", limits.get("cpu", 0))),
            "GPU": _quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0))),
        }
        if "resources" in params:
            res.update({k: float(v) for k, v in json.loads(params["resources"]).items()})
        return res

    groups = {"head": (pod(cluster["headGroupSpec"]), 1)}
    for g in cluster.get("workerGroupSpecs", []):
        groups[g["groupName"]] = (pod(g), int(g.get("maxReplicas", g.get("replicas", 1))))
    return groups


def launcher_groups(launcher: dict[str, Any]) -> dict[str, tuple[dict[str, float], int]]:
    out = {}
    for name, t in launcher["available_node_types"].items():
        count = 1 if name == launcher["head_node_type"] else int(t.get("max_workers", 0))
        out[name] = ({k: float(v) for k, v in t["resources"].items()}, count)
    return out


def capacity_problems(
    serve_cfg: dict[str, Any], groups: dict[str, tuple[dict[str, float], int]], where: str
) -> list[str]:
    """Each replica fits some node; the largest cluster holds every deployment at its max."""
    problems = []
    total: dict[str, float] = {}
    for app in serve_cfg["applications"]:
        for d in app.get("deployments", []):
            demand = replica_demand(d)
            for k, v in demand.items():
                total[k] = total.get(k, 0.0) + v * max_replicas(d)
            fits = [
                g
                for g, (res, _) in groups.items()
                if all(res.get(k, 0) >= v for k, v in demand.items())
            ]
            if not fits:
                problems.append(
                    f"{where}: no node type fits one {d['name']} replica ({demand}); "
                    "Serve would wait for it forever"
                )
    have: dict[str, float] = {}
    for res, count in groups.values():
        for k, v in res.items():
            have[k] = have.get(k, 0.0) + v * count
    for k, need in total.items():
        if have.get(k, 0.0) < need:
            problems.append(
                f"{where}: at most {have.get(k, 0.0):g} {k} but the Serve config may ask for "
                f"{need:g} at its maximum replica counts"
            )
    return problems


# -- Serve config against the application ----------------------------------------------------


def serve_config_problems(cfg: dict[str, Any], where: str) -> list[str]:
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    from serving.app import DEPLOYMENTS
    from serving.config import LiveSettings

    problems = []
    try:
        ServeDeploySchema.model_validate(cfg)
    except (ValidationError, ValueError, TypeError) as e:
        problems.append(f"{where}: not a valid Serve config: {str(e).splitlines()[0]}")
    for app in cfg.get("applications", []):
        if app.get("import_path") != "serving.app:build_app":
            problems.append(f"{where}: import_path must be serving.app:build_app")
        else:
            problems += builder_problems(app["import_path"], where)
        args = app.get("args") or {}
        for d in app.get("deployments", []):
            if d.get("name") not in DEPLOYMENTS:
                problems.append(f"{where}: unknown deployment {d.get('name')!r}")
            try:
                LiveSettings.model_validate({**args, **(d.get("user_config") or {})})
            except ValidationError as e:
                problems.append(
                    f"{where}: {d.get('name')} user_config/args: {e.errors()[0]['msg']} "
                    f"({'.'.join(map(str, e.errors()[0]['loc']))})"
                )
    return problems


def builder_problems(import_path: str, where: str) -> list[str]:
    """Serve calls an application builder with exactly one argument (the args dict)."""
    import importlib
    import inspect

    module, _, attr = import_path.partition(":")
    fn = getattr(importlib.import_module(module), attr, None)
    if fn is None:
        return [f"{where}: {import_path} does not exist"]
    if callable(fn) and not hasattr(fn, "_bound_deployment"):
        params = list(inspect.signature(fn).parameters.values())
        if len(params) != 1:
            return [f"{where}: Serve calls {import_path} with one argument; it takes {len(params)}"]
    return []


# -- job entrypoints against the CLI ---------------------------------------------------------


def cli_options() -> dict[str, set[str]]:
    import typer.main

    from cluster.cli import app

    group = typer.main.get_command(app)
    return {
        name: {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        for name, cmd in group.commands.items()
    }


def entrypoint_problems(entrypoint: str, where: str) -> list[str]:
    """Every `llmrec <command> --option` in a shell entrypoint exists."""
    known = cli_options()
    problems = []
    found = 0
    for chunk in re.split(r"&&|;|\|\|", entrypoint.replace("'", " ")):
        words = shlex.split(chunk)
        if len(words) < 2 or words[0] != "llmrec":
            continue
        found += 1
        cmd = words[1]
        if cmd not in known:
            problems.append(f"{where}: `llmrec {cmd}` does not exist")
            continue
        for w in words[2:]:
            opt = w.split("=", 1)[0]
            if opt.startswith("--") and opt not in known[cmd]:
                problems.append(f"{where}: `llmrec {cmd}` has no option {opt}")
    if not found:
        problems.append(f"{where}: the entrypoint runs no llmrec stage")
    return problems


# -- versions ----------------------------------------------------------------------------------


def image_problems(text: str, where: str, ray_version: str) -> list[str]:
    problems = []
    for image in re.findall(r"image:\s*([^\s]+)", text):
        if "llmrec" in image and not image.split(":")[-1].startswith(ray_version):
            problems.append(f"{where}: image {image} is not built on Ray {ray_version}")
    for v in re.findall(r'rayVersion:\s*"?([\d.]+)', text):
        if v != ray_version:
            problems.append(f"{where}: rayVersion {v}, but the project runs Ray {ray_version}")
    return problems


def launcher_schema_problems(launcher: dict[str, Any]) -> list[str]:
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    try:
        jsonschema.validate(launcher, schema)
    except jsonschema.ValidationError as e:
        return [f"launcher.yaml: {e.message} at {'/'.join(map(str, e.absolute_path))}"]
    return []


def image_env_problems(dockerfile: str, profile: dict[str, Any], where: str) -> list[str]:
    """Every node runs a Serve proxy (and the head the controller), which take their thread
    settings from the process environment, not from the application's runtime_env: the
    image every node runs must set the profile's values."""
    from serving.deploy import app_env_vars

    want = app_env_vars(profile["applications"][0])
    have: dict[str, str] = {}
    for line in dockerfile.replace("\\\n", " ").splitlines():
        if line.startswith("ENV "):
            have |= dict(kv.split("=", 1) for kv in line[4:].split() if "=" in kv)
    wrong = sorted(k for k, v in want.items() if have.get(k) != v)
    if not wrong:
        return []
    return [f"{where}: ENV must set {', '.join(wrong)} as the Serve profile's runtime_env does"]


def proxy_gate_problems(service: dict[str, Any], api_keys: str, where: str) -> list[str]:
    """Every Ray container of the RayService runs a Serve proxy: each must load the proxy
    gate (serving/proxy_gate.py) on the key file the application reads."""
    from serving.proxy_gate import CALLBACK, CALLBACK_ENV, KEYS_ENV

    cluster = service["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    problems = []
    for pod in pods:
        for c in pod["template"]["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            if env.get(CALLBACK_ENV) != CALLBACK or env.get(KEYS_ENV) != api_keys:
                problems.append(
                    f"{where}: container {c['name']} must set {CALLBACK_ENV}={CALLBACK} and "
                    f"{KEYS_ENV}={api_keys} (the Api's api_keys)"
                )
    return problems


def all_problems() -> list[str]:
    import ray

    profile = yaml.safe_load(PROFILE.read_text())
    service = yaml.safe_load(RAYSERVICE.read_text())
    job = yaml.safe_load(RAYJOB.read_text())
    launcher = yaml.safe_load(LAUNCHER.read_text())
    problems = []
    if with_serve_config(RAYSERVICE.read_text(), profile_body()) != RAYSERVICE.read_text():
        problems.append(
            "rayservice.yaml: serveConfigV2 differs from serving/profiles/gpu.yaml; run "
            "`python -m cluster.manifests`"
        )
    serve_cfg = yaml.safe_load(service["spec"]["serveConfigV2"])
    for name, cfg in (
        ("serving/profiles/gpu.yaml", profile),
        ("serving/profiles/cpu.yaml", yaml.safe_load(PROFILE.with_name("cpu.yaml").read_text())),
        (
            "serving/profiles/cluster.yaml",
            yaml.safe_load(PROFILE.with_name("cluster.yaml").read_text()),
        ),
        ("rayservice.yaml serveConfigV2", serve_cfg),
    ):
        problems += serve_config_problems(cfg, name)
    store = serve_cfg["applications"][0]["args"]["store"]
    keys = serve_cfg["applications"][0]["args"].get("api_keys", "")
    problems += proxy_gate_problems(service, keys, "rayservice.yaml")
    redis_docs = [d for d in yaml.safe_load_all(REDIS.read_text()) if d]
    problems += redis_problems(redis_docs, service, store, "redis.yaml")
    problems += ingress_problems(yaml.safe_load(INGRESS.read_text()), service, MAX_BODY_BYTES)
    problems += capacity_problems(
        serve_cfg, kuberay_groups(service["spec"]["rayClusterConfig"]), "rayservice.yaml"
    )
    problems += image_env_problems((CLUSTER / "Dockerfile").read_text(), profile, "Dockerfile")
    if not service["spec"]["rayClusterConfig"].get("enableInTreeAutoscaling"):
        problems.append("rayservice.yaml: the autoscaler is off; Serve cannot add GPU pods")
    problems += capacity_problems(profile, launcher_groups(launcher), "launcher.yaml")
    problems += launcher_schema_problems(launcher)
    problems += entrypoint_problems(job["spec"]["entrypoint"], "rayjob-batch.yaml")
    problems += cronjob_problems(yaml.safe_load(RAYCRONJOB.read_text()), store)
    train_gpus = _train_gpus(job["spec"]["entrypoint"])
    gpu_pods = kuberay_groups(job["spec"]["rayClusterSpec"])
    have = sum(res.get("GPU", 0) * n for res, n in gpu_pods.values())
    if have < train_gpus:
        problems.append(f"rayjob-batch.yaml: training asks for {train_gpus} GPUs, at most {have:g}")
    for path in (RAYSERVICE, RAYJOB, RAYCRONJOB, LAUNCHER, REDIS, CLUSTER / "Dockerfile"):
        problems += image_problems(path.read_text(), path.name, ray.__version__)
    if "working_dir" not in yaml.safe_load(RUNTIME_ENV.read_text()):
        problems.append("runtime_env.yaml: no working_dir")
    return problems


def cronjob_problems(cron: dict[str, Any], store: str) -> list[str]:
    """The scheduled retrain: a valid five-field schedule, a real `llmrec retrain --once`,
    and the serving graph's own event store (another store would train on other events)."""
    where = "raycronjob-retrain.yaml"
    spec = cron.get("spec", {})
    problems = []
    if cron.get("kind") != "RayCronJob" or "jobTemplate" not in spec:
        return [f"{where}: not a RayCronJob with a jobTemplate"]
    fields = str(spec.get("schedule", "")).split()
    if len(fields) != 5 or not all(re.fullmatch(r"[\d*/,-]+", f) for f in fields):
        problems.append(f"{where}: schedule '{spec.get('schedule')}' is not a cron expression")
    entry = spec["jobTemplate"].get("entrypoint", "")
    problems += entrypoint_problems(entry, where)
    if "llmrec retrain" not in entry or "--once" not in entry:
        problems.append(f"{where}: the job must run `llmrec retrain --once`")
    if f"--store {store}" not in " ".join(entry.split()):
        problems.append(f"{where}: --store must be the serving graph's store {store}")
    return problems


def _train_gpus(entrypoint: str) -> int:
    for chunk in entrypoint.split("&&"):
        words = shlex.split(chunk.replace("'", " "))
        if words[:2] == ["llmrec", "train"] and "--gpu" in words:
            i = words.index("--workers") if "--workers" in words else -1
            return int(words[i + 1]) if i >= 0 else 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    check = "--check" in argv
    text = RAYSERVICE.read_text()
    synced = with_serve_config(text, profile_body())
    if synced != text and not check:
        RAYSERVICE.write_text(synced)
        print(f"copied {PROFILE.relative_to(ROOT)} into {RAYSERVICE.relative_to(ROOT)}")
    problems = all_problems()
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    if not problems:
        print("cluster/: every file agrees with the Serve profile, the CLI and Ray " + _ray())
    return 1 if problems else 0


def _ray() -> str:
    import ray

    return ray.__version__


if __name__ == "__main__":
    sys.exit(main())
