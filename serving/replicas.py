"""What every replica of the graph shares: live settings from the application's args and the
deployment's `user_config`, the watch of the published `CURRENT` version, and the loading of
one or more model versions beside each other. Plain classes: the deployments in
`serving.backends` and `serving.app` put Serve's decorators on subclasses."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from serving.config import LiveSettings
from serving.heap import freeze_heap
from training.publish import ModelVersion, current_version, load_version

log = logging.getLogger("ray.serve")

Loaded = dict[str, tuple[str, Any]]  # requested version -> (load key, service)


def load_versions(
    settings: LiveSettings,
    old: Loaded,
    load: Callable[[ModelVersion, LiveSettings], Any],
    refresh: Callable[[Any, LiveSettings], None] | None = None,
) -> tuple[Loaded, str]:
    """The services of the base version and of every version an experiment names. One whose
    files and reload settings (`LiveSettings.reload_fields`) did not change is kept and
    given the new live settings by `refresh`. Returns them and the base version's name."""
    wanted = {settings.version}
    if settings.experiment is not None:
        wanted |= settings.experiment.versions()
    loaded: Loaded = {}
    served = ""
    for name in sorted(wanted):
        mv = load_version(settings.model_root, name)
        key = f"{mv.path}|{settings.load_key()}"
        kept = old.get(name)
        if kept and kept[0] == key:
            if refresh is not None:
                refresh(kept[1], settings)
            loaded[name] = kept
        else:
            loaded[name] = (key, load(mv, settings))
        if name == settings.version:
            served = mv.version
    return loaded, served


def pick(services: Loaded, current: Any, version: str | None) -> Any:
    """The service of the requested model version (None: the base version's)."""
    if version is None:
        return current
    if version not in services:
        raise LookupError(f"model version {version} is not loaded by this replica")
    return services[version][1]


class Replica:
    """Settings = the application's args, overridden key by key by the `user_config`.

    With `watch` and `version: latest`, a daemon thread re-reads CURRENT every `watch_s`
    seconds and reconfigures the replica when it names another version: `llmrec publish`
    reaches a running application without a redeploy. Replicas swap independently, within
    one period; each response names the version that served it."""

    settings: LiveSettings
    served: str | None = None

    def _start(self, settings: dict[str, Any] | None, watch: bool = True) -> None:
        self._base = settings or {}
        self._user_cfg: dict[str, Any] = {}
        self._reload = threading.Lock()
        self.reconfigure({})
        if watch:
            threading.Thread(target=self._watch, name="llmrec-version-watch", daemon=True).start()

    def _merge(self, cfg: dict[str, Any] | None) -> LiveSettings:
        return LiveSettings.model_validate({**self._base, **(cfg or {})})

    def reconfigure(self, cfg: dict[str, Any]) -> None:
        with self._reload:
            self._user_cfg = cfg or {}
            # Only after a load: a change of live settings does not pay a full collection.
            if self._apply(self._merge(cfg)):
                took = freeze_heap()
                if took > 0.5:
                    log.warning("%s: froze the loaded heap in %.2f s", type(self).__name__, took)

    def _apply(self, settings: LiveSettings) -> bool:
        """Take `settings`; whether that loaded or dropped model objects."""
        self.settings = settings
        return False

    def live_settings(self) -> dict[str, Any]:
        """The settings this replica acts on now (checked by the tests of live changes)."""
        return self.settings.model_dump(mode="json")

    def _watch(self) -> None:
        while True:
            time.sleep(self.settings.watch_s or 5.0)
            s = self.settings
            if s.version != "latest" or not s.watch_s:
                continue
            try:
                if current_version(s.model_root) != self.served:
                    self.reconfigure(self._user_cfg)
                    log.warning("%s now serves model version %s", type(self).__name__, self.served)
            except Exception as e:  # a half-published or unreadable root: keep serving
                log.warning("model version watch: %s", e)


class VersionedReplica(Replica):
    """Loads the model version named by the settings; a new version is loaded beside the
    old one and swapped in, so requests in flight finish on the version they started with.
    Versions that experiment variants name are loaded beside the base one, and a request
    names the version it wants (None: the base)."""

    current: Any = None
    services: Loaded

    def _apply(self, settings: LiveSettings) -> bool:
        old = getattr(self, "services", {})
        self.services, self.served = load_versions(settings, old, self.load, self.refresh)
        self.current = self.services[settings.version][1]
        self.settings = settings
        return self.services != old

    def service(self, version: str | None) -> Any:
        return pick(self.services, self.current, version)

    def load(self, mv: ModelVersion, settings: LiveSettings) -> Any:
        raise NotImplementedError

    def refresh(self, service: Any, settings: LiveSettings) -> None:
        """Give a kept service the new live settings (default: it reads none)."""

    def live_settings(self) -> dict[str, Any]:
        out = super().live_settings()
        out["services"] = {
            name: svc.settings.model_dump(mode="json")
            for name, (_, svc) in self.services.items()
            if isinstance(getattr(svc, "settings", None), LiveSettings)
        }
        return out
