"""Who gets in, over real HTTP: API keys and scopes on every protected operation, the rate
limit, the body limits, keys added and revoked while serving, Schemathesis against the
served /openapi.json (with a key per scope, and without any), and no key in any log."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from serving.auth import SCOPES, new_key, read_keys, revoke, write_keys
from serving.deploy import run_profile
from serving.proxy_gate import KEYS_ENV
from serving.sqlite_store import SQLiteEventStore
from tests.http_client import KeyedClient, add_key
from tests.ray.test_serve_http import _free_port, wait_ready

pytestmark = pytest.mark.ray

BIN = Path(sys.executable).parent
FUZZ_CONFIG = Path(__file__).with_name("schemathesis.toml")
#: examples per operation and phase in CI: bounded, about a minute in all
FUZZ_EXAMPLES = 25


class Graph:
    def __init__(self, base: str, db: Path, keys_file: Path, deploy):
        self.base, self.db, self.keys_file, self.deploy = base, db, keys_file, deploy
        self.keys: dict[str, str] = {}

    def add_key(self, name: str, scopes: list[str], rate: float | None = None) -> str:
        self.keys[name] = add_key(self.keys_file, name, scopes, rate)
        return self.keys[name]


@pytest.fixture(scope="module")
def graph(ray_cluster, published, tmp_path_factory):
    from ray import serve

    _, models = published
    work = tmp_path_factory.mktemp("guarded")
    # The file the session's Serve proxy gates on (tests/conftest.py), as `llmrec serve` sets.
    db, keys_file = work / "events.db", Path(os.environ[KEYS_ENV])
    g = Graph("", db, keys_file, None)
    for scope in SCOPES:  # one key per scope, fast enough for the fuzzing
        g.add_key(scope, [scope], rate=10_000)
    g.add_key("slow", ["recommend"], rate=1)
    port = _free_port()
    args = {
        "model_root": str(models),
        "store": f"sqlite://{db}",
        "api_keys": str(keys_file),
        "deadline_ms": 3000,
        "warm": False,
        "key_burst": 3,
    }

    def deploy(**live):
        run_profile("cpu", args, user_config=live or None, port=port)
        wait_ready(g.base)

    g.base, g.deploy = f"http://127.0.0.1:{port}", deploy
    deploy()
    yield g
    serve.shutdown()


def protected_operations(base: str) -> list[tuple[str, str, str]]:
    """(method, path with ids filled in, scope) of every operation the schema protects."""
    spec = requests.get(f"{base}/openapi.json", timeout=30).json()
    out = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            scopes = {s for req in op.get("security", []) for v in req.values() for s in v}
            if scopes:
                (scope,) = scopes
                out.append(
                    (method, path.replace("{user_id}", "1").replace("{item_id}", "1"), scope)
                )
    return out


def test_every_protected_operation_needs_a_key_with_its_scope(graph):
    ops = protected_operations(graph.base)
    assert {s for _, _, s in ops} == set(SCOPES) and len(ops) == 9
    body = {"user_id": "1", "item_id": "1", "type": "view"}
    for method, path, scope in ops:
        url = f"{graph.base}{path}"
        kw = {"json": body, "timeout": 30} if method in ("post", "put") else {"timeout": 30}
        r = requests.request(method, url, **kw)
        assert r.status_code == 401, (method, path, r.text)
        assert "Authorization: Bearer" in r.json()["detail"]
        for wrong in ("hunter2", graph.keys[scope][:-3] + "abc"):
            r = requests.request(method, url, headers={"Authorization": f"Bearer {wrong}"}, **kw)
            assert (r.status_code, r.json()["detail"]) == (401, "invalid API key"), path
        other = next(s for s in SCOPES if s != scope)
        r = KeyedClient(graph.keys[other]).request(method, url, **kw)
        assert r.status_code == 403 and scope in r.json()["detail"], (path, r.text)
        r = requests.request(method, url, headers={"X-API-Key": graph.keys[scope]}, **kw)
        assert r.status_code not in (401, 403), (method, path, r.text)
    for open_path in ("/healthz", "/readyz"):
        assert requests.get(f"{graph.base}{open_path}", timeout=30).status_code == 200


def test_a_key_over_its_rate_gets_429_and_other_keys_do_not(graph):
    slow, other = KeyedClient(graph.keys["slow"]), KeyedClient(graph.keys["recommend"])
    codes = [slow.get(f"{graph.base}/recommend/7?k=3", timeout=30) for _ in range(6)]
    limited = [r for r in codes if r.status_code == 429]
    assert limited, [r.status_code for r in codes]
    assert int(limited[0].headers["Retry-After"]) >= 1
    assert "1 requests/s" in limited[0].json()["detail"]
    assert other.get(f"{graph.base}/recommend/7?k=3", timeout=30).status_code == 200


def _api_refusals(graph, status: int) -> float:
    text = KeyedClient(graph.keys["ops"]).get(f"{graph.base}/metrics", timeout=30).text
    line = next(
        x for x in text.splitlines() if x.startswith(f'llmrec_denied_requests{{status="{status}"}}')
    )
    return float(line.split()[-1])


def test_serves_proxy_refuses_a_key_over_its_own_rate_before_the_api(graph):
    """The proxy gate (serving/proxy_gate.py) answers a flood of the 1/s key itself: most
    of its 429s never reach the (single) Api replica, whose own count grows less."""
    slow = KeyedClient(graph.keys["slow"])
    time.sleep(3)  # both buckets full again
    before = _api_refusals(graph, 429)
    codes = [slow.get(f"{graph.base}/recommend/7?k=3", timeout=30).status_code for _ in range(20)]
    refused = codes.count(429)
    assert refused >= 16 and set(codes) <= {200, 429}, codes
    assert _api_refusals(graph, 429) - before <= 4, "the Api saw what the proxy should refuse"


def test_bodies_past_their_limits_are_refused_and_nothing_is_stored(graph):
    events = KeyedClient(graph.keys["events"])
    before = SQLiteEventStore(graph.db).stats()["events"]
    huge = [{"user_id": "big", "item_id": "1", "type": "view", "event_id": "x" * 150}] * 12000
    r = events.post(f"{graph.base}/events", json=huge, timeout=60)
    assert r.status_code == 413 and "bytes" in r.json()["detail"], r.text[:200]
    r = events.post(f"{graph.base}/events", json=huge[:1001], timeout=60)
    assert r.status_code == 413 and "at most 1000" in r.json()["detail"]
    r = KeyedClient(graph.keys["recommend"]).get(f"{graph.base}/recommend/1?k=101", timeout=30)
    assert r.status_code == 422 and r.json()["detail"].startswith("k: ")
    assert SQLiteEventStore(graph.db).stats()["events"] == before


@pytest.mark.parametrize(
    ("scope", "method", "path", "body", "field"),
    [
        # Each answered 500 before ids and texts were checked for valid Unicode.
        (
            "events",
            "POST",
            "/events",
            r'{"user_id": "\udc80", "item_id": "1", "type": "view"}',
            "user_id",
        ),
        ("catalog", "POST", "/items", r'{"item_id": "new-1", "title": "\udc80"}', "title"),
        ("recommend", "POST", "/recommend", r'{"user_id": "\udc80"}', "user_id"),
        # Each was stored as it came before numbers had to be finite and within bounds.
        (
            "events",
            "POST",
            "/events",
            '{"user_id": "u", "item_id": "1", "type": "view", "value": NaN}',
            "value",
        ),
        (
            "events",
            "POST",
            "/events",
            '{"user_id": "u", "item_id": "1", "type": "view", "timestamp": 1e300}',
            "timestamp",
        ),
        ("users", "PUT", "/users/u/attributes", '{"age": Infinity}', "age"),
    ],
)
def test_input_that_once_broke_the_graph_gets_a_422_naming_the_field(
    graph, scope, method, path, body, field
):
    def stored() -> tuple[int, int]:
        stats = SQLiteEventStore(graph.db).stats()
        return stats["events"], stats["items_added"]

    before = stored()
    r = KeyedClient(graph.keys[scope]).request(
        method,
        f"{graph.base}{path}",
        data=body.encode("utf-8", "surrogatepass"),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 422 and r.json()["detail"].startswith(f"{field}: "), r.text
    assert stored() == before


def test_keys_created_and_revoked_reach_the_running_graph(graph, tmp_path):
    url = f"{graph.base}/recommend/5?k=3"
    made = subprocess.run(
        [
            *(f"{BIN}/llmrec", "keys", "create", "--name", "late", "--scope", "recommend"),
            *("--file", str(graph.keys_file)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    key = made.stdout.strip().splitlines()[-1]
    late = KeyedClient(key)
    assert wait_for(lambda: late.get(url, timeout=30).status_code == 200)
    records = read_keys(str(graph.keys_file))
    revoke(records, "late")
    write_keys(graph.keys_file, records)
    assert wait_for(lambda: late.get(url, timeout=30).status_code == 401)
    # A key file elsewhere (a rotated secret), taken through user_config without a redeploy.
    rotated = tmp_path / "rotated.json"
    fresh, record = new_key("rotated", ["recommend"])
    write_keys(rotated, [record])
    graph.deploy(api_keys=str(rotated))
    try:
        assert KeyedClient(fresh).get(url, timeout=30).status_code == 200
        assert KeyedClient(graph.keys["recommend"]).get(url, timeout=30).status_code == 401
    finally:
        graph.deploy()
    assert KeyedClient(graph.keys["recommend"]).get(url, timeout=30).status_code == 200


def wait_for(ok, timeout_s: float = 10) -> bool:
    end = time.time() + timeout_s
    while time.time() < end:
        if ok():
            return True
        time.sleep(0.25)
    return False


def test_schemathesis_finds_no_server_error_and_no_contract_break(graph):
    env = {**os.environ, **{f"LLMREC_KEY_{s.upper()}": graph.keys[s] for s in SCOPES}}
    proc = subprocess.run(
        [
            *(f"{BIN}/st", "--config-file", str(FUZZ_CONFIG), "run", f"{graph.base}/openapi.json"),
            *("--max-examples", str(FUZZ_EXAMPLES), "--seed", "20261205", "--no-color"),
            *("--workers", "2", "--request-timeout", "30"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    assert "11 selected / 11 total" in proc.stdout
    assert_store_intact(graph.db)


def test_without_a_key_fuzzed_requests_to_protected_operations_all_get_401(graph):
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{graph.base}/openapi.json")
    checked = 0
    for result in schema.get_all_operations():
        op = result.ok()
        if op.definition.raw.get("security"):
            statuses = calls_without_a_key(op, graph.base)
            assert statuses.count(401) >= len(statuses) // 2, (op.label, statuses)
            checked += 1
    assert checked == 9


def calls_without_a_key(op, base: str, examples: int = 10) -> list[int]:
    """Generated requests to `op` with every key header removed: their statuses."""
    import hypothesis

    statuses: list[int] = []

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=op.as_strategy())
    def call(case):
        headers = {
            k: v
            for k, v in (case.headers or {}).items()
            if k.lower() not in ("x-api-key", "authorization")
        }
        case.headers = headers
        r = case.call(base_url=base, timeout=30)
        statuses.append(r.status_code)
        # A body that is not JSON at all is refused before the key is looked at; else 401.
        assert r.status_code == 401 or r.status_code in (400, 413, 422), (op.label, r.text)
        assert "detail" in r.json()

    call()
    return statuses


def assert_store_intact(db: Path) -> None:
    """After the fuzzing: the file is sound, every event whole, every version consistent."""
    assert SQLiteEventStore(db).integrity_problems() == []
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_no_key_reaches_a_log_or_the_metrics(graph):
    import ray

    ops = KeyedClient(graph.keys["ops"])
    text = ops.get(f"{graph.base}/metrics", timeout=30).text
    assert 'llmrec_denied_requests{status="401"}' in text
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    # Each key, and its secret part on its own (what follows "llmrec_<8-hex id>_").
    secrets = [*graph.keys.values(), *(k[len("llmrec_") + 9 :] for k in graph.keys.values())]
    for f in (f for f in logs.rglob("*") if f.is_file()):
        data = f.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"a key in {f}"
    for secret in secrets:
        assert secret not in text
