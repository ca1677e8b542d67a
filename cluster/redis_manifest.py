"""cluster/kuberay/redis.yaml checked against what the Serve graph expects of its event
store: the durability promise (AOF, fsync always, on a PersistentVolumeClaim), the Service
the profile's store URL names, and the password Secret the Ray pods read."""

from __future__ import annotations

import itertools
from typing import Any
from urllib.parse import urlsplit

from serving.redis_store import PASSWORD_ENV


def _args(container: dict[str, Any]) -> dict[str, str]:
    """`--name value` pairs of a redis-server container's args."""
    words = [str(w) for w in container.get("command", []) + container.get("args", [])]
    return {w[2:]: v for w, v in itertools.pairwise(words) if w.startswith("--")}


def _secret_refs(pod: dict[str, Any], env_name: str) -> set[tuple[str, str]]:
    refs = set()
    for c in pod.get("containers", []):
        for e in c.get("env", []):
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if e.get("name") == env_name and ref:
                refs.add((ref["name"], ref["key"]))
    return refs


def ray_pods(service: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    cluster = service["spec"]["rayClusterConfig"]
    pods = [("head", cluster["headGroupSpec"]["template"]["spec"])]
    pods += [(g["groupName"], g["template"]["spec"]) for g in cluster["workerGroupSpecs"]]
    return pods


def redis_problems(
    docs: list[dict[str, Any]], service: dict[str, Any], store: str, where: str
) -> list[str]:
    """What in `docs` (redis.yaml) breaks the store the RayService's profile (`store`)
    opens, or the promise that an acknowledged event is on disk."""
    problems = []
    by_kind = {d["kind"]: d for d in docs}
    sts, svc = by_kind.get("StatefulSet"), by_kind.get("Service")
    if sts is None or svc is None:
        return [f"{where}: needs a StatefulSet and a Service"]
    url = urlsplit(store)
    if url.scheme not in ("redis", "rediss"):
        return [f"the GPU profile's store is '{store}', not the Redis of {where}"]
    if url.hostname != svc["metadata"]["name"]:
        problems.append(
            f"{where}: Service '{svc['metadata']['name']}', but the store names '{url.hostname}'"
        )
    if (url.port or 6379) not in [p["port"] for p in svc["spec"]["ports"]]:
        problems.append(f"{where}: the Service does not expose port {url.port or 6379}")
    spec = sts["spec"]
    if spec.get("replicas", 1) != 1:
        problems.append(f"{where}: one primary only (the store is not Redis Cluster ready)")
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    args = _args(container)
    if args.get("appendonly") != "yes" or args.get("appendfsync") != "always":
        problems.append(f"{where}: redis-server needs --appendonly yes --appendfsync always")
    claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    data = args.get("dir", "/data")
    if not any(mounts.get(c) == data for c in claims):
        problems.append(f"{where}: the AOF directory {data} is not on a PersistentVolumeClaim")
    want = _secret_refs(pod, "REDIS_PASSWORD")
    if not want or "$(REDIS_PASSWORD)" not in args.get("requirepass", ""):
        problems.append(f"{where}: redis-server must take --requirepass from a Secret")
    for name, ray_pod in ray_pods(service):
        if _secret_refs(ray_pod, PASSWORD_ENV) != want:
            problems.append(
                f"rayservice.yaml: the {name} pods must read ${PASSWORD_ENV} from the Secret "
                f"{sorted(want)} that Redis uses"
            )
    return problems
