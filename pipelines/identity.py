"""One identity rule for users, shared by the dataset and the event store.

When a pseudonym key is configured, a user is known everywhere at rest by the keyed
HMAC-SHA256 of their id: the event store keys events by it, and `prepare` (and `retrain`)
replace the user ids of the interaction log and the users table with it, so artifacts and
models hold pseudonyms only and the two can be joined. Serving hashes the id a request
names before it looks the user up. Without a key the dataset keeps the source's ids.
"""

from __future__ import annotations

import hashlib
import hmac
import os

import pyarrow as pa
import pyarrow.compute as pc

KEY_ENV = "LLMREC_PSEUDONYM_KEY"
#: hashed with the key into the dataset manifest: a store opened with another key is refused
CHECK_MESSAGE = "llmrec pseudonym key check"


def pseudonymise(key: bytes, user_id: str) -> str:
    """The id a user is stored under: keyed HMAC-SHA256, shortened (every store's)."""
    return hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()[:32]


def key_check(key: bytes) -> str:
    """A value that tells two keys apart without revealing either (kept in manifests)."""
    return pseudonymise(key, CHECK_MESSAGE)


def configured_key() -> bytes | None:
    """The operator's pseudonym key ($LLMREC_PSEUDONYM_KEY), if one is set."""
    value = os.environ.get(KEY_ENV)
    return value.encode() if value else None


def pseudonymise_column(ids: pa.Array | pa.ChunkedArray, key: bytes) -> pa.Array:
    """`ids` (strings, nulls kept) replaced by their pseudonyms; each distinct id is hashed
    once."""
    encoded = pc.dictionary_encode(ids)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    names = [None if v is None else pseudonymise(key, v) for v in encoded.dictionary.to_pylist()]
    return pc.take(pa.array(names, pa.string()), encoded.indices)
