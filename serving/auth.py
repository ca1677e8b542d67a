"""API keys: who may call which endpoint, and how often. Plain code (no Ray, no FastAPI):
the Api replica asks its `Guard` about every protected request.

A key is `llmrec_<id>_<secret>`: the id (8 hex digits) names the key in lists, logs and
revocations, the secret (256 random bits) is never stored. The key file holds, per key, its
id, name, scopes, a random salt and HMAC-SHA256(salt, secret); a presented key is looked up
by its id and its secret compared in constant time. A fast hash is enough here: the secret is
random, not a password, so there is nothing to guess from a stolen file.

Keys are read from a JSON file, or from an environment variable (`env:NAME`, where a
Kubernetes secret is injected). Several keys may be active at once (rotation: create the new
one, move the clients, revoke the old one); the file is re-read when it changes and whenever
the replica is reconfigured."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import math
import os
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: what a key may be allowed to do; every protected endpoint needs exactly one of them
SCOPES = ("recommend", "events", "catalog", "users", "ops")
PREFIX = "llmrec_"
HEADER_HINT = "send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
#: how often (seconds) a request may check whether the key file changed
RECHECK_S = 1.0


@dataclass
class KeyRecord:
    id: str
    name: str
    scopes: list[str]
    salt: str
    hash: str
    created: str
    revoked: str | None = None
    #: requests per second this key may make on one Api replica (None: the settings')
    rate: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None


def _digest(salt: str, secret: str) -> str:
    return hmac.new(bytes.fromhex(salt), secret.encode(), hashlib.sha256).hexdigest()


def _split(key: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    if not key.startswith(PREFIX) or len(key) < len(PREFIX) + 10 or key[len(PREFIX) + 8] != "_":
        return None
    return key[len(PREFIX) : len(PREFIX) + 8], key[len(PREFIX) + 9 :]


def new_key(name: str, scopes: list[str], rate: float | None = None) -> tuple[str, KeyRecord]:
    """A fresh key and the record that verifies it (the key itself is shown once)."""
    bad = sorted(set(scopes) - set(SCOPES))
    if bad or not scopes:
        raise ValueError(f"scope: choose from {', '.join(SCOPES)}; got {', '.join(bad) or 'none'}")
    if not name.strip():
        raise ValueError("name: must not be empty")
    if rate is not None and not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate: must be a positive number of requests per second, got {rate}")
    kid, secret, salt = secrets.token_hex(4), secrets.token_urlsafe(32), secrets.token_hex(16)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    record = KeyRecord(kid, name, sorted(set(scopes)), salt, _digest(salt, secret), now, None, rate)
    return f"{PREFIX}{kid}_{secret}", record


def parse_keys(text: str, where: str) -> list[KeyRecord]:
    try:
        raw = json.loads(text)
        return [KeyRecord(**k) for k in raw.get("keys", [])]
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{where}: not an llmrec key file ({e})") from None


def read_keys(source: str | None) -> list[KeyRecord]:
    """The records of `source`: a file path or `env:NAME`. A missing file or variable holds
    no key (every protected endpoint then answers 401)."""
    if not source:
        return []
    if source.startswith("env:"):
        text = os.environ.get(source[4:])
        return parse_keys(text, source) if text else []
    path = Path(source)
    return parse_keys(path.read_text(), source) if path.exists() else []


def write_keys(path: str | Path, records: list[KeyRecord]) -> None:
    """Atomically, readable by the owner only: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump({"keys": [asdict(r) for r in records]}, f, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def revoke(records: list[KeyRecord], which: str) -> KeyRecord:
    """Mark the active key with id or name `which` revoked (a name must be unambiguous)."""
    hits = [r for r in records if r.active and which in (r.id, r.name)]
    if not hits:
        raise ValueError(f"no active key with id or name '{which}' (llmrec keys list)")
    if len(hits) > 1:
        ids = ", ".join(r.id for r in hits)
        raise ValueError(f"'{which}' names {len(hits)} active keys ({ids}): revoke by id")
    hits[0].revoked = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return hits[0]


class Denied(Exception):
    """A refused request: its HTTP status, a message that helps the caller but not a guesser,
    and headers (Retry-After on 429)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


@dataclass
class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; one per request."""

    rate: float
    burst: float
    tokens: float = field(default=-1.0)
    last: float = 0.0

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one will be there."""
        if self.tokens < 0:  # a new bucket starts full
            self.tokens, self.last = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Guard:
    """The keys one Api replica accepts, and each key's rate bucket (per replica: with N
    Api replicas a key's effective limit is N times the rate)."""

    def __init__(self) -> None:
        self.enforce = True
        self.source: str | None = None
        self.rate, self.burst = 50.0, 100.0
        self._keys: dict[str, KeyRecord] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        #: refusals by HTTP status (a metric: no key or key name in it)
        self.denied: dict[int, int] = {401: 0, 403: 0, 429: 0}

    @property
    def active_keys(self) -> int:
        return len(self._keys)

    def configure(self, source: str | None, enforce: bool, rate: float, burst: float) -> None:
        """Take new settings and re-read the keys (a reconfigure is also the way to make a
        replica re-read a secret it cannot watch)."""
        if (rate, burst) != (self.rate, self.burst):
            self._buckets.clear()
        self.enforce, self.rate, self.burst, self.source = enforce, rate, burst, source
        self._load()

    def _file_stamp(self) -> tuple[float, int] | None:
        if not self.source or self.source.startswith("env:"):
            return None
        try:
            st = os.stat(self.source)
        except OSError:
            return None
        return st.st_mtime, st.st_size

    def _load(self) -> None:
        self._stamp = self._file_stamp()
        self._keys = {r.id: r for r in read_keys(self.source) if r.active}
        self._buckets = {k: b for k, b in self._buckets.items() if k in self._keys}

    def _maybe_reload(self, now: float) -> None:
        if now - self._checked < RECHECK_S:
            return
        self._checked = now
        if self._file_stamp() != self._stamp:
            with contextlib.suppress(ValueError):  # half-edited by hand: keep the keys we have
                self._load()

    def limits(self, record: KeyRecord) -> tuple[float, float]:
        """(requests/s, burst) of a key. A key with its own rate saves up as many seconds of
        it as the default burst is of the default rate: `key_burst` 400 at `key_rate` 200
        is 2 s, so a key held to 5/s bursts 10, not the 400 that would let it spend 80 s of
        its rate at once (each of them a full computation when nothing is cached)."""
        if record.rate is None:
            return self.rate, max(self.burst, 1.0)
        return record.rate, max(self.burst * record.rate / self.rate, 1.0)

    def identify(self, presented: str | None) -> KeyRecord:
        """The active key `presented` is, or Denied(401)."""
        if not presented:
            raise Denied(401, f"missing API key: {HEADER_HINT}")
        parts = _split(presented)
        record = self._keys.get(parts[0]) if parts else None
        # The same answer for a malformed key, an unknown id, a wrong secret and a revoked key.
        if parts is None or record is None:
            raise Denied(401, "invalid API key")
        if not hmac.compare_digest(record.hash, _digest(record.salt, parts[1])):
            raise Denied(401, "invalid API key")
        return record

    def admit(self, presented: str | None, scope: str, now: float | None = None) -> str | None:
        """Check a request that needs `scope`: the key's name when admitted (None when keys
        are not enforced); Denied with 401, 403 or 429 otherwise."""
        if not self.enforce:
            return None
        now = time.monotonic() if now is None else now
        self._maybe_reload(now)
        record = self.identify(presented)
        if scope not in record.scopes:
            raise Denied(403, f"this API key lacks the scope '{scope}'")
        self._take(record, now)
        return record.name

    def over_own_rate(self, presented: str | None, now: float | None = None) -> Denied | None:
        """Serve's proxy asks this first (serving/proxy_gate.py): a 429 for a valid key with
        a rate of its own (`llmrec keys create --rate`) that is over it; None for anything
        else, which the Api replica judges in full."""
        now = time.monotonic() if now is None else now
        self._maybe_reload(now)
        try:
            record = self.identify(presented)
        except Denied:
            return None
        if record.rate is None:
            return None
        try:
            self._take(record, now)
        except Denied as d:
            return d
        return None

    def _take(self, record: KeyRecord, now: float) -> None:
        bucket = self._buckets.get(record.id)
        if bucket is None:
            bucket = self._buckets[record.id] = TokenBucket(*self.limits(record))
        wait = bucket.take(now)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            raise Denied(
                429,
                f"rate limit: this key may make {bucket.rate:g} requests/s (bursts of "
                f"{bucket.burst:g}); retry after {retry} s",
                {"Retry-After": str(retry)},
            )
