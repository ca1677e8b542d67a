"""The SQLite event store: durable appends, duplicates, erasure, versioned cache."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import pytest

from serving.events import Event, SQLiteEventStore, StoredItem, open_store


def ev(user="u", item="i", type_="click", ts=1.0, event_id=None):
    return Event(user, item, type_, ts, None, event_id)


def test_appends_are_durable_and_duplicates_ignored(tmp_path):
    db = tmp_path / "e.db"
    s = SQLiteEventStore(db)
    assert s.append([ev(event_id="a"), ev(item="j", event_id="b")]) == (2, 0)
    assert s.append([ev(event_id="a"), ev(item="k")]) == (1, 1)
    # A second connection (another process would do the same) sees every committed event.
    again = open_store(f"sqlite://{db}")
    assert [e.item_id for e in again.events_of("u")] == ["i", "j", "k"]
    v = again.version("u")
    assert v > 0 and again.version("nobody") == 0
    s.append([ev(item="l")])
    assert again.version("u") > v  # a new event always moves the user's version on


def _write(db: str, n: int) -> None:
    s = SQLiteEventStore(db)
    for i in range(n):
        s.append([ev(item=str(i))])


def test_events_acknowledged_by_a_killed_process_survive(tmp_path):
    db = str(tmp_path / "e.db")
    SQLiteEventStore(db)
    p = mp.get_context("spawn").Process(target=_write, args=(db, 50))
    p.start()
    p.join(60)
    p.kill()  # SIGKILL after the writes returned: nothing acknowledged may be lost
    assert len(SQLiteEventStore(db).events_of("u")) == 50


def test_a_failing_batch_stores_nothing(tmp_path):
    s = SQLiteEventStore(tmp_path / "e.db")
    with pytest.raises(sqlite3.IntegrityError):
        s.append([ev(), Event("u", None, "click", 1.0)])  # item_id NOT NULL
    assert s.events_of("u") == []


def test_delete_user_erases_events_and_cached_lists(tmp_path):
    s = SQLiteEventStore(tmp_path / "e.db")
    s.append([ev(), ev(user="other")])
    s.cache_put("u", 1, {"items": []})
    s.set_attributes("u", {"age": 30})
    s.set_attributes("other", {"age": 40})
    assert s.delete_user("u") == {
        "events": 1,
        "cached_lists": 1,
        "impressions": 0,
        "attributes": 1,
    }
    assert s.events_of("u") == [] and s.cache_get("u", 1) is None and s.attributes("u") == {}
    assert s.attributes("other") == {"age": 40}
    assert len(s.events_of("other")) == 1


def test_cache_serves_only_its_version_and_never_goes_back(tmp_path):
    s = SQLiteEventStore(tmp_path / "e.db")
    s.cache_put("u", 2, {"v": 2})
    assert s.cache_get("u", 2) == {"v": 2} and s.cache_get("u", 3) is None
    s.cache_put("u", 1, {"v": 1})  # a slow, older computation finishing late
    assert s.cache_get("u", 2) == {"v": 2}


def test_items_added_in_order_once(tmp_path):
    s = SQLiteEventStore(tmp_path / "e.db")
    assert s.add_item(StoredItem("x", "X", "", ["a"]))
    assert not s.add_item(StoredItem("x", "X2", "", []))
    s.add_item(StoredItem("y", "Y", "text", []))
    assert [i.item_id for i in s.items()] == ["x", "y"]
    assert [i.item_id for i in s.items(after=1)] == ["y"]


def test_unknown_store_urls_are_refused():
    with pytest.raises(ValueError, match="unsupported event store"):
        open_store("redis://localhost")


def test_user_ids_are_pseudonymised_at_rest(tmp_path, monkeypatch):
    import sqlite3

    monkeypatch.delenv("LLMREC_PSEUDONYM_KEY", raising=False)
    db = tmp_path / "e.db"
    s = SQLiteEventStore(db)
    s.append([Event("bob@example.com", "i1", "click", 1.0)])
    s.cache_put("bob@example.com", 1, {"user_id": "bob@example.com", "items": []})
    assert (tmp_path / "e.db.key").stat().st_mode & 0o077 == 0  # owner-only
    with sqlite3.connect(db) as c:
        ids = {
            r[0] for r in c.execute("SELECT user_id FROM events UNION SELECT user_id FROM cache")
        }
        payloads = [r[0] for r in c.execute("SELECT payload FROM cache")]
    assert ids == {s.pseudonym("bob@example.com")} and "bob" not in payloads[0]
    assert s.events_of("bob@example.com")[0].user_id == "bob@example.com"
    assert s.cache_get("bob@example.com", 1) == {"items": []}
    assert SQLiteEventStore(db).pseudonym("x") == s.pseudonym("x")  # one key per database
    # Another key (or a lost key file) cannot link the stored events to anyone.
    monkeypatch.setenv("LLMREC_PSEUDONYM_KEY", "another-key")
    assert SQLiteEventStore(db).events_of("bob@example.com") == []


def test_retention_removes_only_old_raw_events(tmp_path):
    from serving.experiments import Impression

    s = SQLiteEventStore(tmp_path / "e.db")
    s.append([Event("u", "old", "click", 100.0), Event("u", "new", "click", 300.0)])
    s.log_impression(Impression("r1", "u", ["a"], "rerank", "v1", 100.0))
    s.log_impression(Impression("r2", "u", ["a"], "rerank", "v1", 300.0))
    assert s.purge_before(200.0) == {"events": 1, "impressions": 1}
    assert [e.item_id for e in s.events_of("u")] == ["new"]
    assert s.stats()["impressions"] == 1
