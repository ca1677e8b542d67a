"""HTTP calls to the Serve graph with an API key: `requests`' functions with the key's header
added (thread-safe: no shared session). `/readyz` and `/healthz` need none."""

from __future__ import annotations

from typing import Any

import requests


class KeyedClient:
    def __init__(self, key: str | None = None) -> None:
        self.key = key

    def request(self, method: str, url: str, **kw: Any) -> requests.Response:
        headers = dict(kw.pop("headers", None) or {})
        if self.key is not None:
            headers.setdefault("Authorization", f"Bearer {self.key}")
        return requests.request(method, url, headers=headers, **kw)

    def get(self, url: str, **kw: Any) -> requests.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> requests.Response:
        return self.request("POST", url, **kw)

    def put(self, url: str, **kw: Any) -> requests.Response:
        return self.request("PUT", url, **kw)

    def delete(self, url: str, **kw: Any) -> requests.Response:
        return self.request("DELETE", url, **kw)


def add_key(path, name: str, scopes: list[str], rate: float | None = None) -> str:
    """A new key, its record added to the key file at `path` (created if missing)."""
    from serving.auth import new_key, read_keys, write_keys

    key, record = new_key(name, scopes, rate)
    write_keys(path, [*read_keys(str(path)), record])
    return key


def all_scopes_key(path) -> str:
    """A key with every scope, added to the key file at `path`."""
    from serving.auth import SCOPES

    return add_key(path, "tests", list(SCOPES))
