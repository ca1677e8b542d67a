"""Which model version is the first without an erased user: what the erasure status
endpoint answers (`GET /users/{id}/erasure`).

An erasure removes the user's stored events at once; the models forget them when a retrain
builds a dataset after it. Each version `llmrec retrain` publishes records the erasures its
data honoured (`live.erased_through`, the newest erasure time it read), so the first version
(by creation) whose mark is at or after the user's erasure time is the first without them.
"""

from __future__ import annotations

from typing import Any

from pipelines import storage
from serving.events import EventStore
from training.publish import VERSION_FILE, current_version


def published_versions(root: str) -> list[dict[str, Any]]:
    """version.json of every version under `root`, oldest first (gate candidates, which were
    never served, left out)."""
    fs, base = storage.resolve(root)
    out = []
    for info in storage.list_files(fs, base):
        path = f"{info.path}/{VERSION_FILE}"
        if info.base_name.endswith(".candidate") or not storage.exists(fs, path):
            continue
        out.append(storage.read_json(fs, path))
    return sorted(out, key=lambda v: (v.get("created", ""), v.get("version", "")))


def erasure_status(store: EventStore, root: str, user_id: str) -> dict[str, Any]:
    erased_at = store.erasures().get(store.pseudonym(user_id))
    current = current_version(root)
    published = published_versions(root)
    first = None
    if erased_at is not None:
        for v in published:
            mark = (v.get("live") or {}).get("erased_through")
            if mark is not None and mark >= erased_at:
                first = v["version"]
                break
    versions = [v["version"] for v in published]
    live_without = first is not None and versions.index(current) >= versions.index(first)
    return {
        "user_id": user_id,
        "erased_at": erased_at,
        "first_version_without": first,
        "current_version": current,
        "current_without": live_without,
    }
