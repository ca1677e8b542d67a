"""What only the SQLite event store does: its key file, its transactions, a killed writer.
Every store's behaviour is in test_store_conformance.py."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import pytest

from serving.events import Event, open_store
from serving.sqlite_store import SQLiteEventStore


def ev(user="u", item="i", type_="click", ts=1.0, event_id=None):
    return Event(user, item, type_, ts, None, event_id)


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


def test_unknown_store_urls_are_refused():
    with pytest.raises(ValueError, match="unsupported event store"):
        open_store("mysql://localhost/events")


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


def test_integrity_problems_names_what_is_wrong(tmp_path):
    store = SQLiteEventStore(tmp_path / "e.db")
    store.append([Event("u1", "i1", "view", 1.0)])
    assert store.integrity_problems() == []
    with sqlite3.connect(tmp_path / "e.db") as c:
        c.execute(
            "INSERT INTO events (user_id, item_id, type, ts, received) "
            "VALUES ('raw-id', 'x', 'like', 1, 1)"
        )
        c.execute(
            "INSERT INTO cache (user_id, version, payload) VALUES (?, 99, '{}')",
            (store.pseudonym("u1"),),
        )
    problems = "; ".join(store.integrity_problems())
    for what in ("raw or empty user id", "unknown type", "newer than their user's events"):
        assert what in problems, problems
