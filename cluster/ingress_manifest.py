"""cluster/kuberay/ingress.yaml checked against the RayService behind it and the API's own
limits: the backend is KubeRay's Serve Service on Serve's port, TLS is on, the body limit is
the API's, and the per-address limits are set."""

from __future__ import annotations

import re
from typing import Any

import yaml

PREFIX = "nginx.ingress.kubernetes.io/"
UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def nginx_size(value: str) -> int | None:
    """Bytes in an nginx size ("2m", "512k", "1048576"); None when it is not one."""
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", value.strip())
    return int(m.group(1)) * UNITS[m.group(2).lower()] if m else None


def ingress_problems(
    ingress: dict[str, Any], service: dict[str, Any], body_limit: int
) -> list[str]:
    """What in `ingress` does not fit the RayService `service` or the API's `body_limit`."""
    where = "ingress.yaml"
    if ingress.get("kind") != "Ingress":
        return [f"{where}: not an Ingress"]
    problems = []
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    want = (f"{service['metadata']['name']}-serve-svc", serve["http_options"]["port"])
    spec = ingress.get("spec", {})
    for rule in spec.get("rules", []):
        for path in rule.get("http", {}).get("paths", []):
            svc = path.get("backend", {}).get("service", {})
            got = (svc.get("name"), svc.get("port", {}).get("number"))
            if got != want:
                problems.append(
                    f"{where}: backend {got[0]}:{got[1]}, but Serve is {want[0]}:{want[1]}"
                )
    if not spec.get("rules"):
        problems.append(f"{where}: no rules: nothing reaches Serve")
    if not spec.get("tls"):
        problems.append(f"{where}: no tls: API keys would cross the network in clear")
    notes = ingress.get("metadata", {}).get("annotations", {})
    size = nginx_size(str(notes.get(PREFIX + "proxy-body-size", "")))
    if size != body_limit:
        problems.append(
            f"{where}: proxy-body-size must be the API's body limit, {body_limit} bytes "
            f"(serving/api_models.py: MAX_BODY_BYTES)"
        )
    for name in ("limit-rps", "limit-connections"):
        if not str(notes.get(PREFIX + name, "")).isdigit():
            problems.append(f"{where}: no {name}: a flood reaches Serve's proxy unlimited")
    return problems
