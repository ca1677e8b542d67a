"""The single-node event store: one SQLite file in WAL mode, every write committed (fsynced)
before it returns. See `serving.events` for the interface it implements."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipelines.identity import KEY_ENV, pseudonymise
from serving.events import EVENT_TYPES, POSITIVE, Event, EventStore, StoredItem
from serving.experiments import Impression


def pseudonym_key(db_path: str) -> bytes:
    """The key user ids are pseudonymised with: $LLMREC_PSEUDONYM_KEY, else a random key
    created once beside the database (`<db>.key`, owner-only). Keep it apart from the data
    in production; deleting it makes the stored events unlinkable to anyone."""
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].encode()
    path = f"{db_path}.key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:  # first opener: every other process reads what it wrote
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    for _ in range(100):  # another process may be between create and write
        key = Path(path).read_text().strip()
        if key:
            return key.encode()
        time.sleep(0.01)
    raise RuntimeError(f"pseudonym key file '{path}' is empty")


class SQLiteEventStore(EventStore):
    """One SQLite file in WAL mode; safe to open from several processes on one node.

    User ids are stored pseudonymised (keyed HMAC-SHA256): the file holds no raw user id,
    and every lookup hashes the id it is given."""

    def __init__(self, path: str | Path, synchronous: str = "FULL", key: bytes | None = None):
        self.path = str(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._synchronous = synchronous
        self._key = key or pseudonym_key(self.path)
        with self._conn() as c:
            c.executescript(_SCHEMA)

    def _conn(self, synchronous: str | None = None) -> sqlite3.Connection:
        mode = synchronous or self._synchronous
        conn = getattr(self._local, f"conn_{mode}", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before append() returns (the acknowledgement).
            conn.execute(f"PRAGMA synchronous={mode}")
            conn.execute("PRAGMA busy_timeout=30000")
            setattr(self._local, f"conn_{mode}", conn)
        return conn

    def pseudonym(self, user_id: str) -> str:
        return pseudonymise(self._key, user_id)

    def append(self, events: list[Event]) -> tuple[int, int]:
        c = self._conn()
        now = time.time()
        stored = 0
        c.execute("BEGIN IMMEDIATE")
        try:
            for e in events:
                cur = c.execute(
                    # Only a repeated event_id is skipped; any other violation fails loudly.
                    "INSERT INTO events (event_id, user_id, item_id, type, value, "
                    "ts, request_id, received) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(event_id) DO NOTHING",
                    (
                        e.event_id,
                        self.pseudonym(e.user_id),
                        e.item_id,
                        e.type,
                        e.value,
                        e.timestamp,
                        e.request_id,
                        now,
                    ),
                )
                stored += cur.rowcount
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return stored, len(events) - stored

    def events_of(self, user_id: str) -> list[Event]:
        # Handed back under the id asked for, not the pseudonym stored.
        return [
            replace(e, user_id=user_id) for e in self.events_by_pseudonym(self.pseudonym(user_id))
        ]

    def version(self, user_id: str) -> int:
        row = (
            self._conn()
            .execute("SELECT MAX(seq) FROM events WHERE user_id = ?", (self.pseudonym(user_id),))
            .fetchone()
        )
        return int(row[0] or 0)

    def delete_user(self, user_id: str) -> dict[str, int]:
        c = self._conn()
        who = (self.pseudonym(user_id),)
        c.execute("BEGIN IMMEDIATE")
        try:
            n_events = c.execute("DELETE FROM events WHERE user_id = ?", who).rowcount
            n_cache = c.execute("DELETE FROM cache WHERE user_id = ?", who).rowcount
            n_shown = c.execute("DELETE FROM impressions WHERE user_id = ?", who).rowcount
            n_attrs = c.execute("DELETE FROM user_attributes WHERE user_id = ?", who).rowcount
            c.execute(
                "INSERT INTO erasures (user_id, ts) VALUES (?, ?) "
                "ON CONFLICT(user_id) DO UPDATE SET ts = excluded.ts",
                (who[0], time.time()),
            )
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return {
            "events": n_events,
            "cached_lists": n_cache,
            "impressions": n_shown,
            "attributes": n_attrs,
        }

    def set_attributes(self, user_id: str, attributes: dict[str, Any]) -> None:
        self._conn().execute(
            "INSERT INTO user_attributes (user_id, attributes) VALUES (?, ?) "
            "ON CONFLICT(user_id) DO UPDATE SET attributes = excluded.attributes",
            (self.pseudonym(user_id), json.dumps(attributes, sort_keys=True)),
        )

    def attributes(self, user_id: str) -> dict[str, Any]:
        row = (
            self._conn()
            .execute(
                "SELECT attributes FROM user_attributes WHERE user_id = ?",
                (self.pseudonym(user_id),),
            )
            .fetchone()
        )
        return {} if row is None else json.loads(row[0])

    def add_item(self, item: StoredItem) -> bool:
        cur = self._conn().execute(
            "INSERT OR IGNORE INTO items (item_id, title, text, categories) VALUES (?, ?, ?, ?)",
            (item.item_id, item.title, item.text, json.dumps(item.categories)),
        )
        return cur.rowcount == 1

    def items(self, after: int = 0) -> list[StoredItem]:
        rows = self._conn().execute(
            # `after` counts items already taken; positions can skip (an ignored insert
            # still uses one), so it is an offset, not a position.
            "SELECT item_id, title, text, categories FROM items ORDER BY pos LIMIT -1 OFFSET ?",
            (after,),
        )
        return [StoredItem(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    def cache_get(self, user_id: str, version: int) -> dict[str, Any] | None:
        row = (
            self._conn()
            .execute(
                "SELECT payload FROM cache WHERE user_id = ? AND version = ?",
                (self.pseudonym(user_id), version),
            )
            .fetchone()
        )
        return None if row is None else json.loads(row[0])

    def cache_put(self, user_id: str, version: int, payload: dict[str, Any]) -> None:
        # Never replace a newer entry with an older computation. NORMAL: a cached list
        # can be recomputed, so it is not worth an fsync per write.
        self._conn("NORMAL").execute(
            "INSERT INTO cache (user_id, version, payload) VALUES (?, ?, ?) "
            "ON CONFLICT(user_id) DO UPDATE SET version = excluded.version, "
            "payload = excluded.payload WHERE excluded.version >= cache.version",
            (
                self.pseudonym(user_id),
                version,
                json.dumps({k: v for k, v in payload.items() if k != "user_id"}),
            ),
        )

    def log_impression(self, impression: Impression) -> None:
        i = impression
        # NORMAL: no fsync per impression (analytics); a crash may lose the last few.
        self._conn("NORMAL").execute(
            "INSERT OR IGNORE INTO impressions (request_id, user_id, items, stage, model, ts, "
            "experiment, variant) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                i.request_id,
                self.pseudonym(i.user_id),
                json.dumps(i.items),
                i.stage,
                i.model,
                i.timestamp,
                i.experiment,
                i.variant,
            ),
        )

    def events_by_pseudonym(self, who: str) -> list[Event]:
        rows = self._conn().execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE user_id = ? ORDER BY ts, seq", (who,)
        )
        return [Event(*r) for r in rows]

    def item_counts(self, item_ids: list[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        kinds = ", ".join("?" * len(POSITIVE))
        for start in range(0, len(item_ids), 500):  # under SQLite's bound-variable limit
            chunk = item_ids[start : start + 500]
            rows = self._conn().execute(
                f"SELECT item_id, COUNT(*) FROM events WHERE item_id IN "
                f"({', '.join('?' * len(chunk))}) AND type IN ({kinds}) GROUP BY item_id",
                (*chunk, *POSITIVE),
            )
            out.update((i, int(n)) for i, n in rows)
        return out

    def high_water(self) -> int:
        # AUTOINCREMENT keeps its counter in sqlite_sequence, so erased or purged events
        # never lower it.
        row = self._conn().execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
        found = row.fetchone()
        return int(found[0]) if found else 0

    def export_events(self, through: int, page: int = 5000) -> Iterator[list[Event]]:
        after = 0
        while True:
            rows = self._conn().execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq > ? AND seq <= ? "
                "ORDER BY seq LIMIT ?",
                (after, through, page),
            )
            batch = [Event(*r) for r in rows]
            if not batch:
                return
            yield batch
            after = batch[-1].seq

    def erasures(self) -> dict[str, float]:
        return dict(self._conn().execute("SELECT user_id, ts FROM erasures").fetchall())

    def experiment_log(self, experiment: str | None) -> tuple[list[Impression], list[Event]]:
        c = self._conn()
        shown = [
            Impression(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5], r[6], r[7])
            for r in c.execute(
                "SELECT request_id, user_id, items, stage, model, ts, experiment, variant "
                "FROM impressions WHERE ?1 IS NULL OR experiment = ?1 ORDER BY ts",
                (experiment,),
            )
        ]
        events = [
            Event(*r)
            for r in c.execute(
                "SELECT e.user_id, e.item_id, e.type, e.ts, e.value, e.event_id, e.request_id, "
                "e.seq FROM events e JOIN impressions i ON e.request_id = i.request_id "
                "WHERE ?1 IS NULL OR i.experiment = ?1 ORDER BY e.seq",
                (experiment,),
            )
        ]
        return shown, events

    def purge_before(self, timestamp: float) -> dict[str, int]:
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            events = c.execute("DELETE FROM events WHERE ts < ?", (timestamp,)).rowcount
            shown = c.execute("DELETE FROM impressions WHERE ts < ?", (timestamp,)).rowcount
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return {"events": events, "impressions": shown}

    def integrity_problems(self) -> list[str]:
        """What is wrong in the file (empty when sound): SQLite's own check, then every
        event whole (a pseudonymised user, a known type, a finite time) and no cached list
        claiming a version past its user's last event."""
        c = self._conn()
        problems = [r[0] for r in c.execute("PRAGMA integrity_check") if r[0] != "ok"]
        types = ",".join(f"'{t}'" for t in EVENT_TYPES)
        checks = {
            "events with a raw or empty user id": "SELECT COUNT(*) FROM events WHERE "
            "length(user_id) != 32 OR user_id GLOB '*[^0-9a-f]*'",
            "events without an item": "SELECT COUNT(*) FROM events WHERE item_id = ''",
            "events of an unknown type": f"SELECT COUNT(*) FROM events WHERE type NOT IN ({types})",
            "events without a finite time": "SELECT COUNT(*) FROM events WHERE ts IS NULL "
            "OR ts < 0 OR ts > 1e10",
            "cached lists newer than their user's events": "SELECT COUNT(*) FROM cache c "
            "WHERE c.version > COALESCE((SELECT MAX(seq) FROM events e "
            "WHERE e.user_id = c.user_id), 0)",
            "items without a title": "SELECT COUNT(*) FROM items WHERE title = ''",
        }
        for what, sql in checks.items():
            n = c.execute(sql).fetchone()[0]
            if n:
                problems.append(f"{n} {what}")
        return problems

    def stats(self) -> dict[str, int]:
        c = self._conn()
        return {
            "events": c.execute("SELECT COUNT(*) FROM events").fetchone()[0],
            "users": c.execute("SELECT COUNT(DISTINCT user_id) FROM events").fetchone()[0],
            "items_added": c.execute("SELECT COUNT(*) FROM items").fetchone()[0],
            "cached_lists": c.execute("SELECT COUNT(*) FROM cache").fetchone()[0],
            "impressions": c.execute("SELECT COUNT(*) FROM impressions").fetchone()[0],
        }


_EVENT_COLUMNS = "user_id, item_id, type, ts, value, event_id, request_id, seq"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT UNIQUE,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    type TEXT NOT NULL,
    value REAL,
    ts REAL NOT NULL,
    request_id TEXT,
    received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user ON events (user_id, seq);
CREATE INDEX IF NOT EXISTS events_item ON events (item_id);
CREATE TABLE IF NOT EXISTS items (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT UNIQUE NOT NULL,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    categories TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_request ON events (request_id) WHERE request_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS impressions (
    request_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    items TEXT NOT NULL,
    stage TEXT NOT NULL,
    model TEXT NOT NULL,
    ts REAL NOT NULL,
    experiment TEXT,
    variant TEXT
);
CREATE INDEX IF NOT EXISTS impressions_user ON impressions (user_id);
CREATE INDEX IF NOT EXISTS impressions_experiment ON impressions (experiment, variant);
CREATE TABLE IF NOT EXISTS user_attributes (
    user_id TEXT PRIMARY KEY,
    attributes TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS erasures (
    user_id TEXT PRIMARY KEY,
    ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cache (
    user_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    payload TEXT NOT NULL
);
"""
