"""The event store on a Redis server: what a graph spread over several nodes shares.

    redis://[:password@]host:port/db[?durability=always|everysec|none&prefix=llmrec]
    rediss://...   (TLS)          password also from $LLMREC_REDIS_PASSWORD

Durability: an event answered 2xx is on disk. Each write is one Lua script (atomic: all of
a batch or none of it), and with `appendonly yes` + `appendfsync always` Redis writes the
script's effects to its append-only file and fsyncs it before it replies. The store reads
those settings when it opens and refuses to start when they cannot keep that promise,
unless the URL accepts less (`durability=everysec`: about the last 2 s of acknowledged
events can be lost when the server dies; `none`: everything since the last snapshot).

Keys (`<prefix>:` first): what belongs to one user sits under one hash tag,
`u:{<pseudonym>}:*` (events, version, cache, attributes, impression ids), so each user's
keys land in one Redis Cluster slot. The store-wide indexes (sequence counter, event ids,
users, items, impressions, attribution) are single keys, and every write script touches one
of them together with the user's keys: on Redis Cluster those scripts would cross slots.
The store is therefore single-shard (one primary, any number of replicas); docs/SERVING.md
says what moving to Cluster would change.

User ids are pseudonymised exactly as in the SQLite store (keyed HMAC-SHA256): the key is
$LLMREC_PSEUDONYM_KEY, else a random one created once in the server (`<prefix>:pseudonym-key`).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pipelines.identity import KEY_ENV, pseudonymise
from serving.events import POSITIVE, Event, EventStore, StoredItem, StoreUnavailable
from serving.experiments import Impression
from serving.redis_scripts import (
    ADD_ITEM,
    APPEND,
    CACHE_PUT,
    DELETE_USER,
    LOG_IMPRESSION,
    PURGE_IMPRESSION,
    PURGE_USER,
)

PASSWORD_ENV = "LLMREC_REDIS_PASSWORD"
PASSWORD_HINT = f"give the password in the URL (redis://:PASSWORD@host:port/db) or ${PASSWORD_ENV}"
DURABILITY = ("always", "everysec", "none")
#: after a failed call the server is not asked again for this long (doubling while it stays
#: down, up to RETRY_MAX_S): requests do not spend their deadline on a connection that
#: just failed
RETRY_AFTER_S = 0.5
RETRY_MAX_S = 5.0


def parse_url(url: str) -> tuple[str, str, str]:
    """(URL for the redis client, durability, key prefix): our two options are taken out
    of the query, the client's own (socket_timeout, ...) stay in it."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    durability = query.pop("durability", "always")
    if durability not in DURABILITY:
        raise ValueError(
            f"event store '{redacted(url)}': durability={durability} is not one of "
            f"{', '.join(DURABILITY)}"
        )
    prefix = query.pop("prefix", "llmrec")
    return urlunsplit(parts._replace(query=urlencode(query))), durability, prefix


def redacted(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def durability_problem(config: dict[str, str], durability: str) -> str | None:
    """Why the server's persistence settings break the promise `durability` makes (None:
    they keep it)."""
    if durability == "none":
        return None
    if config.get("appendonly") != "yes":
        return "appendonly is 'no': set `appendonly yes`"
    fsync = config.get("appendfsync")
    if durability == "always" and fsync != "always":
        return (
            f"appendfsync is '{fsync}': set `appendfsync always`, or accept losing the last "
            "~2 s of acknowledged events with ?durability=everysec"
        )
    if durability == "everysec" and fsync not in ("always", "everysec"):
        return f"appendfsync is '{fsync}': set `appendfsync everysec` or `always`"
    return None


class RedisEventStore(EventStore):
    """`EventStore` on one Redis server (or primary); thread-safe (one connection pool)."""

    def __init__(self, url: str):
        client_url, durability, prefix = parse_url(url)
        self.url = redacted(url)
        self.p = prefix
        self._down_until, self._down_for = 0.0, 0.0
        extra: dict[str, Any] = {}
        if urlsplit(client_url).password is None and os.environ.get(PASSWORD_ENV):
            extra["password"] = os.environ[PASSWORD_ENV]
        # One retry without backoff: a pooled connection that died with a restarted server
        # is replaced at once; a server that is down fails the call in milliseconds.
        self.r = redis.Redis.from_url(
            client_url,
            decode_responses=True,
            # Short: the request path reads the store within a deadline. The URL's query
            # (socket_timeout=..., socket_connect_timeout=...) overrides them.
            socket_connect_timeout=0.2,
            socket_timeout=1.0,
            health_check_interval=30,
            retry=Retry(NoBackoff(), 1),
            **extra,
        )
        try:
            config = self.r.config_get("append*")
        except (redis.AuthenticationError, redis.AuthenticationWrongNumberOfArgsError) as e:
            raise ValueError(f"event store {self.url}: {e}: {PASSWORD_HINT}") from None
        except redis.ConnectionError as e:
            raise StoreUnavailable(f"event store {self.url} is unreachable: {e}") from None
        except redis.ResponseError as e:  # CONFIG renamed or forbidden (managed services)
            if "NOAUTH" in str(e):
                raise ValueError(f"event store {self.url}: {e}: {PASSWORD_HINT}") from None
            if durability != "none":
                raise ValueError(
                    f"event store {self.url}: cannot read the server's persistence settings "
                    f"({e}); check them yourself and pass ?durability=none"
                ) from None
            config = {}
        problem = durability_problem(config, durability)
        if problem:
            raise ValueError(
                f"event store {self.url} cannot promise an acknowledged event is on disk: {problem}"
            )
        self._key = self._pseudonym_key()
        reg = self.r.register_script
        self._append, self._delete = reg(APPEND), reg(DELETE_USER)
        self._add_item, self._cache_put = reg(ADD_ITEM), reg(CACHE_PUT)
        self._log_impression, self._purge_user = reg(LOG_IMPRESSION), reg(PURGE_USER)
        self._purge_impression = reg(PURGE_IMPRESSION)

    # -- keys ----------------------------------------------------------------------------------

    def k(self, name: str) -> str:
        return f"{self.p}:{name}"

    def u(self, who: str, name: str) -> str:
        """A key of one user (by pseudonym): one hash tag per user."""
        return f"{self.p}:u:{{{who}}}:{name}"

    def _pseudonym_key(self) -> bytes:
        if os.environ.get(KEY_ENV):
            return os.environ[KEY_ENV].encode()
        self.r.set(self.k("pseudonym-key"), secrets.token_hex(32), nx=True)
        return self.r.get(self.k("pseudonym-key")).encode()

    def _call(self, fn, *args, **kwargs):
        """One server call; a connection failure becomes `StoreUnavailable` (and the next
        calls for RETRY_AFTER_S fail at once, without waiting on the network)."""
        if time.monotonic() < self._down_until:
            raise StoreUnavailable(f"event store {self.url} is unreachable (retrying shortly)")
        try:
            out = fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            self._down_for = min(RETRY_MAX_S, max(RETRY_AFTER_S, 2 * self._down_for))
            self._down_until = time.monotonic() + self._down_for
            raise StoreUnavailable(f"event store {self.url} is unreachable: {e}") from None
        self._down_for = 0.0
        return out

    def pseudonym(self, user_id: str) -> str:
        return pseudonymise(self._key, user_id)

    # -- events --------------------------------------------------------------------------------

    def append(self, events: list[Event]) -> tuple[int, int]:
        names = ("seq", "eids", "users", "attributed", "n_events", "item_counts")
        keys = [self.k(n) for n in names]
        argv: list[Any] = []
        now = time.time()
        for e in events:
            who = self.pseudonym(e.user_id)
            keys += [self.u(who, "ev"), self.u(who, "ver")]
            body = {"i": e.item_id, "t": e.type, "ts": e.timestamp, "rc": now}
            body.update(
                (k, v)
                for k, v in (("v", e.value), ("e", e.event_id), ("r", e.request_id))
                if v is not None
            )
            counted = e.item_id if e.type in POSITIVE else ""
            argv += [who, e.event_id or "", json.dumps(body), "1" if e.request_id else "0", counted]
        stored = int(self._call(self._append, keys=keys, args=argv)) if events else 0
        return stored, len(events) - stored

    @staticmethod
    def _event(who: str, raw: str, seq: str | int) -> Event:
        b = json.loads(raw)
        return Event(who, b["i"], b["t"], b["ts"], b.get("v"), b.get("e"), b.get("r"), int(seq))

    def _events(self, who: str, fields: dict[str, str]) -> list[Event]:
        """The user's events, oldest first (by timestamp, then arrival), as SQLite orders."""
        rows = [self._event(who, raw, seq) for seq, raw in fields.items()]
        return sorted(rows, key=lambda e: (e.timestamp, e.seq))

    def events_by_pseudonym(self, who: str) -> list[Event]:
        return self._events(who, self._call(self.r.hgetall, self.u(who, "ev")))

    def events_of(self, user_id: str) -> list[Event]:
        # Handed back under the id asked for, not the pseudonym stored.
        events = self.events_by_pseudonym(self.pseudonym(user_id))
        return [replace(e, user_id=user_id) for e in events]

    def version(self, user_id: str) -> int:
        return int(self._call(self.r.get, self.u(self.pseudonym(user_id), "ver")) or 0)

    def delete_user(self, user_id: str) -> dict[str, int]:
        who = self.pseudonym(user_id)
        keys = [self.u(who, n) for n in ("ev", "ver", "cache", "imp", "attrs")]
        keys += [self.k(n) for n in ("eids", "users", "attributed", "imp", "imp_ts")]
        keys += [self.k(n) for n in ("n_events", "cached", "erased", "item_counts")]
        counts = self._call(self._delete, keys=keys, args=[who, time.time()])
        return dict(
            zip(("events", "cached_lists", "impressions", "attributes"), counts, strict=True)
        )

    # -- attributes, items, cache --------------------------------------------------------------

    def set_attributes(self, user_id: str, attributes: dict[str, Any]) -> None:
        key = self.u(self.pseudonym(user_id), "attrs")
        self._call(self.r.set, key, json.dumps(attributes, sort_keys=True))

    def attributes(self, user_id: str) -> dict[str, Any]:
        raw = self._call(self.r.get, self.u(self.pseudonym(user_id), "attrs"))
        return {} if raw is None else json.loads(raw)

    def add_item(self, item: StoredItem) -> bool:
        body = json.dumps([item.item_id, item.title, item.text, item.categories])
        keys = [self.k("item_ids"), self.k("items")]
        return bool(self._call(self._add_item, keys=keys, args=[item.item_id, body]))

    def items(self, after: int = 0) -> list[StoredItem]:
        rows = self._call(self.r.lrange, self.k("items"), after, -1)
        return [StoredItem(*json.loads(r)) for r in rows]

    def cache_get(self, user_id: str, version: int) -> dict[str, Any] | None:
        key = self.u(self.pseudonym(user_id), "cache")
        stored, payload = self._call(self.r.hmget, key, ["version", "payload"])
        if stored is None or int(stored) != version:
            return None
        return json.loads(payload)

    def current_cache(self, user_id: str) -> tuple[int, dict[str, Any] | None]:
        who = self.pseudonym(user_id)
        pipe = self.r.pipeline(transaction=False)
        pipe.get(self.u(who, "ver")).hmget(self.u(who, "cache"), ["version", "payload"])
        version, (stored, payload) = self._call(pipe.execute)
        version = int(version or 0)
        if stored is None or int(stored) != version:
            return version, None
        return version, json.loads(payload)

    def cache_put(self, user_id: str, version: int, payload: dict[str, Any]) -> None:
        # Never replace a newer entry with an older computation (checked in the script).
        who = self.pseudonym(user_id)
        body = json.dumps({k: v for k, v in payload.items() if k != "user_id"})
        keys = [self.u(who, "cache"), self.k("cached")]
        self._call(self._cache_put, keys=keys, args=[who, version, body])

    # -- impressions, attribution, retention ---------------------------------------------------

    def log_impression(self, impression: Impression) -> None:
        i = impression
        who = self.pseudonym(i.user_id)
        body = json.dumps([who, i.items, i.stage, i.model, i.timestamp, i.experiment, i.variant])
        keys = [self.k("imp"), self.k("imp_ts"), self.u(who, "imp")]
        self._call(self._log_impression, keys=keys, args=[i.request_id, i.timestamp, body])

    def _impressions(self) -> list[Impression]:
        ids = self._call(self.r.zrange, self.k("imp_ts"), 0, -1)
        bodies = self._call(self.r.hmget, self.k("imp"), ids) if ids else []
        return [
            Impression(r, *json.loads(b)) for r, b in zip(ids, bodies, strict=True) if b is not None
        ]

    def experiment_log(self, experiment: str | None) -> tuple[list[Impression], list[Event]]:
        shown = [i for i in self._impressions() if experiment is None or i.experiment == experiment]
        requests = {i.request_id for i in shown}
        by_user: dict[str, list[str]] = {}
        for member in self._call(self.r.zrange, self.k("attributed"), 0, -1):
            who, seq = member.rsplit("/", 1)
            by_user.setdefault(who, []).append(seq)
        attributed = []
        for who, seqs in by_user.items():
            for seq, raw in zip(
                seqs, self._call(self.r.hmget, self.u(who, "ev"), seqs), strict=True
            ):
                e = None if raw is None else self._event(who, raw, seq)
                if e is not None and e.request_id in requests:
                    attributed.append((int(seq), e))
        return shown, [e for _, e in sorted(attributed, key=lambda x: x[0])]

    def purge_before(self, timestamp: float) -> dict[str, int]:
        events = 0
        keys = [self.k(n) for n in ("eids", "users", "attributed", "n_events", "item_counts")]
        for who in self._call(self.r.smembers, self.k("users")):
            user_keys = [self.u(who, "ev"), self.u(who, "ver")]
            events += int(
                self._call(self._purge_user, keys=user_keys + keys, args=[who, timestamp])
            )
        shown = 0
        old = self._call(self.r.zrangebyscore, self.k("imp_ts"), "-inf", f"({timestamp}")
        for request_id in old:
            body = self._call(self.r.hget, self.k("imp"), request_id)
            who = json.loads(body)[0] if body else ""
            keys = [self.k("imp"), self.k("imp_ts"), self.u(who, "imp")]
            shown += int(self._call(self._purge_impression, keys=keys, args=[request_id]))
        return {"events": events, "impressions": shown}

    def item_counts(self, item_ids: list[str]) -> dict[str, int]:
        # Kept by the write scripts (a store written before they counted starts from 0).
        if not item_ids:
            return {}
        values = self._call(self.r.hmget, self.k("item_counts"), item_ids)
        return {i: int(v) for i, v in zip(item_ids, values, strict=True) if v and int(v) > 0}

    # -- what retraining reads -----------------------------------------------------------------

    def high_water(self) -> int:
        return int(self._call(self.r.get, self.k("seq")) or 0)

    def export_events(self, through: int, page: int = 5000) -> Iterator[list[Event]]:
        # Users are scanned (SSCAN: no blocking of the server), each user's hash read in one
        # pipelined round trip per page of users.
        cursor, batch = 0, []
        while True:
            cursor, users = self._call(self.r.sscan, self.k("users"), cursor, count=200)
            if users:
                pipe = self.r.pipeline(transaction=False)
                for who in users:
                    pipe.hgetall(self.u(who, "ev"))
                for who, fields in zip(users, self._call(pipe.execute), strict=True):
                    batch += [e for e in self._events(who, fields) if e.seq <= through]
            while len(batch) >= page or (cursor == 0 and batch):
                yield batch[:page]
                batch = batch[page:]
            if cursor == 0:
                return

    def erasures(self) -> dict[str, float]:
        return {who: float(ts) for who, ts in self._call(self.r.hgetall, self.k("erased")).items()}

    def stats(self) -> dict[str, int]:
        pipe = self.r.pipeline(transaction=False)
        pipe.get(self.k("n_events")).scard(self.k("users")).llen(self.k("items"))
        pipe.scard(self.k("cached")).hlen(self.k("imp"))
        n_events, users, items, cached, shown = self._call(pipe.execute)
        return {
            "events": int(n_events or 0),
            "users": users,
            "items_added": items,
            "cached_lists": cached,
            "impressions": shown,
        }
