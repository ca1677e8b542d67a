"""What only the Redis event store does: its durability check, its password, what it keeps
at rest, and a server that is killed, down, and back (each against a real redis-server)."""

from __future__ import annotations

import time

import pytest
import redis

from cluster.local_redis import LocalRedis
from serving.events import Event, StoreUnavailable, open_store
from serving.redis_store import parse_url, redacted


def ev(i: int, user: str = "u") -> Event:
    return Event(user, f"item-{i}", "click", float(i), None, f"event-{i}")


@pytest.fixture
def own_server(tmp_path):
    """A server this test may kill (the session's is shared)."""
    servers: list[LocalRedis] = []

    def start(**kw) -> LocalRedis:
        servers.append(LocalRedis(tmp_path / f"redis{len(servers)}", **kw).start())
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def test_weaker_persistence_is_refused_unless_accepted(own_server):
    everysec = own_server(fsync="everysec")
    with pytest.raises(ValueError, match=r"appendfsync is 'everysec'.*durability=everysec"):
        open_store(everysec.url)
    open_store(f"{everysec.url}?durability=everysec").append([ev(1)])  # the operator's choice
    no_aof = own_server(appendonly=False)
    for durability in ("always", "everysec"):
        with pytest.raises(ValueError, match="appendonly is 'no'"):
            open_store(f"{no_aof.url}?durability={durability}")
    assert open_store(f"{no_aof.url}?durability=none").append([ev(1)]) == (1, 0)
    with pytest.raises(ValueError, match="durability=sometimes is not one of"):
        open_store(f"{no_aof.url}?durability=sometimes")


def test_the_password_comes_from_the_url_or_the_environment(own_server, monkeypatch):
    server = own_server(password="s3cret")
    monkeypatch.delenv("LLMREC_REDIS_PASSWORD", raising=False)
    with pytest.raises(ValueError, match="LLMREC_REDIS_PASSWORD"):
        open_store(server.url)
    with pytest.raises(ValueError, match="LLMREC_REDIS_PASSWORD") as wrong:
        open_store(f"redis://:nope@127.0.0.1:{server.port}/0")
    assert "nope" not in str(wrong.value)  # never echoed
    open_store(f"redis://:s3cret@127.0.0.1:{server.port}/0").append([ev(1)])
    monkeypatch.setenv("LLMREC_REDIS_PASSWORD", "s3cret")
    assert open_store(server.url).version("u") > 0


def test_urls_keep_client_options_and_hide_passwords():
    url, durability, prefix = parse_url("redis://:pw@h:1/2?socket_timeout=3&durability=none")
    assert (url, durability, prefix) == ("redis://:pw@h:1/2?socket_timeout=3", "none", "llmrec")
    assert parse_url("rediss://h:1/0?prefix=shop")[2] == "shop"
    assert redacted("redis://:pw@h:1/0") == "redis://:***@h:1/0"


def test_no_raw_user_id_at_rest_and_one_hash_tag_per_user(redis_url, monkeypatch):
    monkeypatch.delenv("LLMREC_PSEUDONYM_KEY", raising=False)
    s = open_store(redis_url)
    user = "bob@example.com"
    s.append([Event(user, "i1", "click", 1.0, None, "e1", "r1")])
    s.set_attributes(user, {"age": 30})
    s.cache_put(user, s.version(user), {"user_id": user, "items": []})
    from serving.experiments import Impression

    s.log_impression(Impression("r1", user, ["i1"], "rerank", "v1", 1.0))
    r = redis.Redis.from_url(redis_url.split("?")[0], decode_responses=True)
    prefix = parse_url(redis_url)[2]
    keys = r.keys(f"{prefix}:*")
    dump = " ".join(keys) + " ".join(str(r.dump(k)) for k in keys)
    assert "bob" not in dump
    who = s.pseudonym(user)
    mine = [k for k in keys if who in k]
    assert len(mine) == 5 and all(f"{{{who}}}" in k for k in mine)
    # The key lives in the server: a second handle finds the same user.
    assert open_store(redis_url).events_of(user)[0].item_id == "i1"


def test_acknowledged_events_survive_kill_9_and_are_not_duplicated(own_server):
    server = own_server()
    store = open_store(server.url)
    n = 300
    for i in range(n):  # each call returned: each event acknowledged
        assert store.append([ev(i)]) == (1, 0)
    server.kill()  # SIGKILL: no shutdown, no final fsync
    server.start()
    again = open_store(server.url)
    assert [e.event_id for e in again.events_of("u")] == [f"event-{i}" for i in range(n)]
    # A client that never saw its acknowledgements sends everything again: nothing doubles.
    assert again.append([ev(i) for i in range(n)]) == (0, n)
    assert again.stats()["events"] == n


def test_a_server_that_is_down_fails_fast_and_is_found_again(own_server):
    server = own_server()
    store = open_store(server.url)
    store.append([ev(0)])
    server.kill()
    t = time.perf_counter()
    for call in (lambda: store.append([ev(1)]), lambda: store.version("u")):
        with pytest.raises(StoreUnavailable, match="unreachable"):
            call()
    assert time.perf_counter() - t < 1.0  # no retry storm while a request waits
    server.start()
    deadline = time.time() + 10
    while True:  # the same store object, no restart: back within its retry interval
        try:
            assert store.append([ev(1)]) == (1, 0)
            break
        except StoreUnavailable:
            assert time.time() < deadline
            time.sleep(0.1)
    assert [e.item_id for e in store.events_of("u")] == ["item-0", "item-1"]


def test_an_unreachable_server_is_a_clear_error():
    with pytest.raises(StoreUnavailable, match="unreachable"):
        open_store("redis://127.0.0.1:1/0")


def test_llmrec_serve_refuses_a_store_that_cannot_keep_its_promise(own_server, published):
    """Before anything starts: one line naming the setting, no traceback."""
    import subprocess
    import sys

    _, models = published
    weak = own_server(fsync="everysec")
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "serve", "--root", str(models), "--store", weak.url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "appendfsync is 'everysec'" in proc.stderr
