"""API keys, scopes and rate buckets (serving/auth.py), and the body limit
(serving/body_limit.py): plain code, no server."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from serving.auth import Denied, Guard, TokenBucket, new_key, read_keys, revoke, write_keys
from serving.body_limit import BodyLimit


def guard_with(tmp_path, *keys: tuple[str, list[str]], rate: float = 100.0, burst: float = 10):
    path = tmp_path / "keys.json"
    made = [new_key(name, scopes) for name, scopes in keys]
    write_keys(path, [r for _, r in made])
    g = Guard()
    g.configure(str(path), True, rate, burst)
    return g, path, [k for k, _ in made]


def test_a_key_is_stored_only_as_a_salted_hash(tmp_path):
    key, record = new_key("web", ["recommend"])
    write_keys(tmp_path / "k.json", [record])
    text = (tmp_path / "k.json").read_text()
    secret = key.split("_", 2)[2]
    assert secret not in text and key not in text
    assert record.id in key and len(record.salt) == 32
    assert oct(os.stat(tmp_path / "k.json").st_mode)[-3:] == "600"
    # The same secret under two salts hashes differently.
    assert new_key("web", ["recommend"])[1].hash != record.hash


@pytest.mark.parametrize("scopes", [[], ["recommend", "admin"]])
def test_unknown_scopes_are_refused_naming_the_choices(scopes):
    with pytest.raises(ValueError, match="choose from recommend, events"):
        new_key("x", scopes)


def test_scopes_admit_and_refuse(tmp_path):
    g, _, (web, ops) = guard_with(tmp_path, ("web", ["recommend", "events"]), ("ops", ["ops"]))
    assert g.admit(web, "recommend") == "web"
    assert g.admit(f" {web}".strip(), "events") == "web"
    with pytest.raises(Denied) as e:
        g.admit(web, "users")
    assert e.value.status == 403 and "users" in e.value.message and web not in e.value.message
    assert g.admit(ops, "ops") == "ops"


@pytest.mark.parametrize("how", ["missing", "malformed", "unknown id", "wrong secret"])
def test_wrong_keys_get_401_with_nothing_that_helps_guessing(tmp_path, how):
    g, _, (key,) = guard_with(tmp_path, ("web", ["recommend"]))
    presented = {
        "missing": None,
        "malformed": "hunter2",
        "unknown id": "llmrec_00000000_" + key.split("_", 2)[2],
        "wrong secret": key[:-4] + "AAAA",
    }[how]
    with pytest.raises(Denied) as e:
        g.admit(presented, "recommend")
    assert e.value.status == 401
    if how != "missing":  # one answer for every wrong key
        assert e.value.message == "invalid API key"


def test_revoking_and_adding_keys_reach_a_running_guard_through_the_file(tmp_path):
    g, path, (old,) = guard_with(tmp_path, ("web", ["recommend"]))
    records = read_keys(str(path))
    new, record = new_key("web-2", ["recommend"])
    revoke(records, "web")
    time.sleep(0.01)
    write_keys(path, [*records, record])
    later = time.monotonic() + 2  # past the re-check period
    assert g.admit(new, "recommend", now=later) == "web-2"
    with pytest.raises(Denied):
        g.admit(old, "recommend", now=later)


def test_ambiguous_or_unknown_revocations_are_errors(tmp_path):
    records = [new_key("web", ["ops"])[1], new_key("web", ["ops"])[1]]
    with pytest.raises(ValueError, match="revoke by id"):
        revoke(records, "web")
    with pytest.raises(ValueError, match="no active key"):
        revoke(records, "nobody")
    assert revoke(records, records[0].id).revoked is not None


def test_keys_from_an_environment_variable(tmp_path, monkeypatch):
    key, record = new_key("svc", ["events"])
    write_keys(tmp_path / "k.json", [record])
    monkeypatch.setenv("LLMREC_TEST_KEYS", (tmp_path / "k.json").read_text())
    g = Guard()
    g.configure("env:LLMREC_TEST_KEYS", True, 10, 10)
    assert g.admit(key, "events") == "svc"
    g.configure("env:LLMREC_UNSET_VARIABLE", True, 10, 10)
    with pytest.raises(Denied):
        g.admit(key, "events")


def test_no_key_file_means_every_key_is_refused_and_insecure_admits_all(tmp_path):
    g = Guard()
    g.configure(str(tmp_path / "none.json"), True, 10, 10)
    with pytest.raises(Denied):
        g.admit(None, "recommend")
    g.configure(str(tmp_path / "none.json"), False, 10, 10)
    assert g.admit(None, "users") is None


def test_a_corrupt_key_file_is_a_clear_error(tmp_path):
    (tmp_path / "k.json").write_text("{not json")
    with pytest.raises(ValueError, match="not an llmrec key file"):
        read_keys(str(tmp_path / "k.json"))


def test_a_key_over_its_rate_gets_429_with_retry_after_and_others_are_unaffected(tmp_path):
    g, _, (a, b) = guard_with(tmp_path, ("a", ["recommend"]), ("b", ["recommend"]), rate=2, burst=3)
    now = 100.0
    for _ in range(3):
        g.admit(a, "recommend", now=now)
    with pytest.raises(Denied) as e:
        g.admit(a, "recommend", now=now)
    assert e.value.status == 429 and e.value.headers == {"Retry-After": "1"}
    assert "2 requests/s" in e.value.message
    assert g.admit(b, "recommend", now=now) == "b"  # its own bucket
    assert g.admit(a, "recommend", now=now + 0.5) == "a"  # one token back after 1/rate s


def test_a_key_with_its_own_rate_bursts_the_same_seconds_of_it(tmp_path):
    g, _, (a,) = guard_with(tmp_path, ("a", ["recommend"]), rate=200, burst=400)
    record = next(iter(g._keys.values()))
    assert g.limits(record) == (200, 400)
    record.rate = 5.0  # `llmrec keys create --rate 5`
    assert g.limits(record) == (5.0, 10.0)
    record.rate = 0.1
    assert g.limits(record) == (0.1, 1.0)  # never below one request
    admitted = 0
    for _ in range(50):
        try:
            g.admit(a, "recommend", now=100.0)
            admitted += 1
        except Denied:
            pass
    assert admitted == 1


def test_token_bucket_refills_at_its_rate_and_caps_at_its_burst():
    b = TokenBucket(rate=10, burst=5)
    assert sum(b.take(0.0) == 0 for _ in range(20)) == 5
    assert b.take(0.0) == pytest.approx(0.1)
    assert sum(b.take(10.0) == 0 for _ in range(20)) == 5  # ten seconds refill only 5


def _call(app, headers, chunks):
    sent = []
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(m):
        sent.append(m)

    scope = {"type": "http", "headers": headers}
    asyncio.run(app(scope, receive, send))
    return sent


def _echo():
    async def app(scope, receive, send):
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


@pytest.mark.parametrize("declared", [True, False])
def test_a_body_past_the_limit_is_413_before_the_app_reads_it(declared):
    app = BodyLimit(_echo(), limit=10)
    chunks = [b"0123456", b"789abc"]
    headers = [(b"content-length", b"13")] if declared else []
    sent = _call(app, headers, chunks)
    assert sent[0]["status"] == 413
    assert "limit of 10 bytes" in json.loads(sent[1]["body"])["detail"]
    ok = _call(app, [] if not declared else [(b"content-length", b"9")], [b"01234", b"5678"])
    assert ok[0]["status"] == 200 and ok[1]["body"] == b"012345678"


def test_key_checking_may_be_off_only_on_loopback():
    from serving.deploy import check_insecure

    check_insecure({"insecure_local": True}, "127.0.0.1")
    check_insecure({"insecure_local": False}, "0.0.0.0")
    with pytest.raises(ValueError, match=r"only with the proxy on 127\.0\.0\.1"):
        check_insecure({"insecure_local": True}, "0.0.0.0")
