"""Refuse a key over its own rate in Serve's HTTP proxy, before the request costs an Api call.

A refusal in the Api replica is cheap to decide but not to reach: the request crosses the
proxy, Serve's router and a replica call first, and a key flooding past its limit then takes
that CPU from every other key's answers (docs/BENCHMARKS.md, API keys). Serve's proxy runs
the ASGI middlewares that the function named by `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`
returns; this module's `middlewares` adds `ProxyGate`, which answers 429 itself for a valid
key that has a rate of its own (`llmrec keys create --rate`) and is over it. Everything else
passes through untouched: the Api replica stays the one judge of keys, scopes and the
default rate, so the gate can only refuse earlier what the Api would refuse.

The proxy is not the application (it does not take its runtime_env or live settings), so
the gate reads its key source from the environment Ray gives its workers: `llmrec serve`
exports both variables before it starts Ray (`export_env`; a cluster started elsewhere keeps
its own environment, and then the Api does all the refusing); on Kubernetes they are set on
the Ray containers (cluster/kuberay). The gate re-reads a changed key file
within a second, as the Api does; bursts are the default's seconds of rate (`Guard.limits`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from serving.auth import Guard

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
KEYS_ENV = "LLMREC_PROXY_API_KEYS"
CALLBACK = "serving.proxy_gate:middlewares"
#: never gated (the probes take no key)
OPEN_PATHS = ("/healthz", "/readyz")


def export_env(api_keys: str | None) -> None:
    """Make the proxy of a Ray cluster started from this process gate `api_keys` (a file or
    `env:NAME`); a value already set wins (an operator's choice)."""
    if not api_keys:
        return
    os.environ.setdefault(KEYS_ENV, api_keys)
    os.environ.setdefault(CALLBACK_ENV, CALLBACK)


def middlewares() -> list[Any]:
    """What Serve's proxy calls at start: the gate when a key source is configured."""
    from starlette.middleware import Middleware

    source = os.environ.get(KEYS_ENV)
    return [Middleware(ProxyGate, source=source)] if source else []


def _presented(headers: list[tuple[bytes, bytes]]) -> str | None:
    bearer = x_api_key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, cred = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and cred.strip():
                bearer = cred.strip()
        elif name == b"x-api-key":
            x_api_key = value.decode("latin-1")
    return bearer if bearer is not None else x_api_key


class ProxyGate:
    """A pure ASGI middleware (no request object is built for what passes through)."""

    def __init__(self, app: Any, source: str) -> None:
        from serving.config import LiveSettings

        self.app = app
        self.guard = Guard()
        fields = LiveSettings.model_fields
        # A key with its own rate bursts the default's seconds of it (Guard.limits).
        self.guard.configure(source, True, fields["key_rate"].default, fields["key_burst"].default)
        #: requests this gate refused (the Api's 429 metric counts only what reached it)
        self.refused = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path", "") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        denied = self.guard.over_own_rate(_presented(scope.get("headers", [])))
        if denied is None:
            await self.app(scope, receive, send)
            return
        self.refused += 1
        body = json.dumps({"detail": denied.message}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *((k.lower().encode(), v.encode()) for k, v in (denied.headers or {}).items()),
        ]
        await send({"type": "http.response.start", "status": denied.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
