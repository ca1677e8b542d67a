"""Durable user events, new items and the nearline cache behind one small interface.

`EventStore` is what every deployment talks to; `serving.sqlite_store.SQLiteEventStore` (WAL
mode, one file, every write committed before it returns) is the single-node default, and
`serving.redis_store.RedisEventStore` the store a graph spread over several nodes shares.
`open_store` takes either by URL.

Every event gets a per-store sequence number; a user's *version* is the sequence number of
their newest event, so "is this cached list still current?" is one indexed lookup.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from serving.experiments import Impression

EVENT_TYPES = ("view", "click", "purchase", "rating", "dislike")
#: events that make an item part of the user's history (a dislike excludes it instead)
POSITIVE = ("view", "click", "purchase", "rating")


@dataclass(frozen=True)
class Event:
    user_id: str
    item_id: str
    type: str
    timestamp: float
    value: float | None = None
    event_id: str | None = None
    request_id: str | None = None
    #: the store's sequence number (set on events read back; 0 on events not yet stored)
    seq: int = 0


@dataclass
class StoredItem:
    item_id: str
    title: str
    text: str
    categories: list[str]


class StoreUnavailable(Exception):
    """The store cannot be reached now (a networked store's server is down): a write was
    not made, and a read has no answer. The caller degrades or asks the client to retry."""


class EventStore(ABC):
    _key: bytes  # the pseudonym key: every store sets it when it opens

    @abstractmethod
    def append(self, events: list[Event]) -> tuple[int, int]:
        """Store events durably (all or none); returns (stored, duplicates ignored)."""

    @abstractmethod
    def events_of(self, user_id: str) -> list[Event]:
        """The user's events, oldest first."""

    @abstractmethod
    def version(self, user_id: str) -> int:
        """Sequence number of the user's newest event (0: none)."""

    @abstractmethod
    def delete_user(self, user_id: str) -> dict[str, int]:
        """Erase everything stored about the user; returns counts per kind."""

    @abstractmethod
    def set_attributes(self, user_id: str, attributes: dict[str, Any]) -> None:
        """Store what the user stated about themselves (segments for cold start),
        replacing what was there."""

    @abstractmethod
    def attributes(self, user_id: str) -> dict[str, Any]: ...

    @abstractmethod
    def add_item(self, item: StoredItem) -> bool:
        """Store a new item; False when its id exists already."""

    @abstractmethod
    def items(self, after: int = 0) -> list[StoredItem]:
        """Items added through the API, in order, from position `after`."""

    @abstractmethod
    def cache_get(self, user_id: str, version: int) -> dict[str, Any] | None:
        """The cached response for the user, only if computed at this version (stored
        without its `user_id` field: no raw id at rest)."""

    @abstractmethod
    def cache_put(self, user_id: str, version: int, payload: dict[str, Any]) -> None: ...

    def current_cache(self, user_id: str) -> tuple[int, dict[str, Any] | None]:
        """The user's version and the cached response computed at it (None: none is): what
        the request path reads first. A networked store answers it in one round trip."""
        version = self.version(user_id)
        return version, self.cache_get(user_id, version)

    @abstractmethod
    def log_impression(self, impression: Impression) -> None:
        """Record what a response showed (analytics: not on the acknowledgement path)."""

    @abstractmethod
    def experiment_log(self, experiment: str | None) -> tuple[list[Impression], list[Event]]:
        """The experiment's impressions (None: every impression), and the events attributed
        to them by request_id (user ids as stored: pseudonyms, enough to match events to
        impressions)."""

    @abstractmethod
    def events_by_pseudonym(self, who: str) -> list[Event]:
        """A user's events, oldest first, found by the pseudonym the logs hold (replay)."""

    @abstractmethod
    def pseudonym(self, user_id: str) -> str: ...

    @property
    def key(self) -> bytes:
        """The pseudonym key (a retrain pseudonymises the base log with it)."""
        return self._key

    @abstractmethod
    def purge_before(self, timestamp: float) -> dict[str, int]:
        """Retention: delete raw events and impressions older than `timestamp`."""

    @abstractmethod
    def stats(self) -> dict[str, int]: ...

    # -- what retraining reads ------------------------------------------------------------------

    @abstractmethod
    def item_counts(self, item_ids: list[str]) -> dict[str, int]:
        """Positive events stored per item, for the items asked about (an item with none is
        left out): how engaged new items are, before any model has learned them."""

    @abstractmethod
    def high_water(self) -> int:
        """The newest sequence number handed out so far (0: none): a retrain reads the events
        up to it, and serving adds only what came after on top of that dataset."""

    @abstractmethod
    def export_events(self, through: int, page: int = 5000) -> Iterator[list[Event]]:
        """Every stored event with `seq <= through`, in pages, under its pseudonym (no
        order is promised across pages)."""

    @abstractmethod
    def erasures(self) -> dict[str, float]:
        """Pseudonym -> when that user was last erased: what `prepare` drops from older data."""


def sqlite_path(url: str) -> str | None:
    """The file of a `sqlite://<path>` URL (`sqlite:///abs/file.db`, `sqlite://rel/file.db`)
    or a bare path; None for any other scheme."""
    if url.startswith("sqlite://"):
        return url[len("sqlite://") :]
    return None if "://" in url else url


_shared: dict[str, EventStore] = {}
_shared_lock = threading.Lock()


def shared_store(url: str) -> EventStore:
    """The process's one store for `url` (a Redis store is a connection pool: one per
    process, not one per reload). A store that failed to open is tried again next call."""
    with _shared_lock:
        if url not in _shared:
            _shared[url] = open_store(url)
        return _shared[url]


def open_store(url: str) -> EventStore:
    """The event store at `url`: `sqlite://<path>` (see `sqlite_path`), or
    `redis://`/`rediss://` (see `serving.redis_store`)."""
    if url.startswith(("redis://", "rediss://")):
        from serving.redis_store import RedisEventStore

        return RedisEventStore(url)
    path = sqlite_path(url)
    if path is None:
        raise ValueError(
            f"unsupported event store '{url.split('@')[-1]}': use sqlite:///<path> or "
            "redis://host:port/db"
        )
    from serving.sqlite_store import SQLiteEventStore

    return SQLiteEventStore(path)
