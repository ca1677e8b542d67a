"""Which live changes rebuild a replica's models and which are applied in place: derived
from the declared fields, and every field reaches the services."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import LiveSettings
from serving.replicas import load_versions
from tests.live_changes import NOT_CHANGED, every_field_changed


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A model root with one version folder (what `load_version` reads)."""
    import json

    from training.publish import VERSION_FILE, point_current

    (tmp_path / "v1").mkdir()
    info = {"version": "v1", "dataset_uri": "x", "dataset_version": "d", "reranker": False}
    (tmp_path / "v1" / VERSION_FILE).write_text(json.dumps(info))
    point_current(tmp_path, "v1")
    return tmp_path


class Service:
    def __init__(self, settings: LiveSettings):
        self.settings = settings


def test_reload_fields_are_declared_and_known():
    assert set(LiveSettings.reload_fields()) <= set(LiveSettings.model_fields)
    assert {"store", "rerank", "compression", "rerank_threads"} <= set(LiveSettings.reload_fields())


def test_every_live_field_reaches_loaded_services(root, tmp_path):
    base = LiveSettings(model_root=str(root), store=f"sqlite://{tmp_path / 'a.db'}")
    changes = every_field_changed(base, f"sqlite://{tmp_path / 'b.db'}")
    loads: list[LiveSettings] = []

    def load(mv, s):
        loads.append(s)
        return Service(s)

    def refresh(svc, s):
        svc.settings = s

    loaded, served = load_versions(base, {}, load, refresh)
    assert served == "v1" and len(loads) == 1
    for name, value in changes.items():
        new = LiveSettings.model_validate({**base.model_dump(), name: value})
        after, _ = load_versions(new, loaded, load, refresh)
        svc = after["latest"][1]
        assert getattr(svc.settings, name) == getattr(new, name), name
        rebuilt = svc is not loaded["latest"][1]
        assert rebuilt == (name in LiveSettings.reload_fields()), name
    assert NOT_CHANGED.isdisjoint(changes)
