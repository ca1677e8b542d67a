"""The proxy gate (serving/proxy_gate.py) as Serve's proxy runs it, a pure ASGI middleware
in front of an app: a key over its own rate is refused without reaching the app; everything
else reaches it untouched. No Ray, no server."""

from __future__ import annotations

import asyncio
import json

import pytest

from serving import proxy_gate
from serving.auth import new_key, write_keys
from serving.proxy_gate import ProxyGate, export_env, middlewares


def gate_with(tmp_path, rate: float | None):
    key, record = new_key("client", ["recommend"], rate=rate)
    other, other_rec = new_key("other", ["recommend"], rate=rate)
    write_keys(tmp_path / "keys.json", [record, other_rec])
    reached: list[str] = []

    async def app(scope, receive, send):
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return ProxyGate(app, source=str(tmp_path / "keys.json")), key, other, reached


def call(gate, path: str, headers: list[tuple[bytes, bytes]]):
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "path": path, "headers": headers}
    asyncio.run(gate(scope, receive, send))
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), body


def test_a_key_over_its_own_rate_is_refused_before_the_app(tmp_path):
    gate, key, other, reached = gate_with(tmp_path, rate=1.0)  # burst: 2 s of it
    bearer = [(b"authorization", f"Bearer {key}".encode())]
    codes = [call(gate, "/recommend/1", bearer)[0] for _ in range(5)]
    assert codes == [200, 200, 429, 429, 429] and len(reached) == 2
    status, headers, body = call(gate, "/recommend/1", [(b"x-api-key", key.encode())])
    assert status == 429 and int(headers[b"retry-after"]) >= 1
    assert "rate limit" in json.loads(body)["detail"] and key not in body.decode()
    assert gate.refused == 4
    # Another key and the probes are not affected.
    assert call(gate, "/recommend/1", [(b"x-api-key", other.encode())])[0] == 200
    assert call(gate, "/healthz", bearer)[0] == 200


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"authorization", b"Bearer llmrec_00000000_wrong")],
        [(b"x-api-key", b"not a key")],
        [(b"authorization", b"Basic dXNlcjpwYXNz")],
    ],
)
def test_anything_the_gate_does_not_judge_reaches_the_app(tmp_path, headers):
    gate, *_, reached = gate_with(tmp_path, rate=1.0)
    for _ in range(5):  # the Api answers 401 for these, with its own message and metric
        assert call(gate, "/recommend/1", headers)[0] == 200
    assert len(reached) == 5


def test_keys_without_their_own_rate_are_left_to_the_api(tmp_path):
    gate, key, _, reached = gate_with(tmp_path, rate=None)
    bearer = [(b"authorization", f"Bearer {key}".encode())]
    assert all(call(gate, "/events", bearer)[0] == 200 for _ in range(50))
    assert len(reached) == 50


def test_the_gate_is_loaded_only_when_a_key_source_is_exported(tmp_path, monkeypatch):
    monkeypatch.delenv(proxy_gate.KEYS_ENV, raising=False)
    monkeypatch.delenv(proxy_gate.CALLBACK_ENV, raising=False)
    assert middlewares() == []
    export_env(None)
    assert middlewares() == []
    export_env(str(tmp_path / "keys.json"))
    (gate,) = middlewares()
    assert gate.cls is ProxyGate and gate.kwargs == {"source": str(tmp_path / "keys.json")}
    import os

    assert os.environ[proxy_gate.CALLBACK_ENV] == "serving.proxy_gate:middlewares"
