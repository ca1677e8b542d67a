"""What the request path (`serving.request_path`) calls and what can come back: the back
ends it reaches, the ways a stage is given up, and the writes it makes only when it can."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from serving.events import StoreUnavailable

log = logging.getLogger("ray.serve")


class Backends(Protocol):
    """The other deployments, as the request path calls them: each call returns an
    awaitable that can be cancelled (a Serve `DeploymentResponse`, or an asyncio task)."""

    def retrieve(self, *args: Any) -> Any: ...
    def score(self, request: tuple) -> Any: ...
    def cold_start(self, user_id: str, k: int, exclude: list[str]) -> Any: ...
    def similar(self, item_id: str, k: int) -> Any: ...


class Overloaded(Exception):
    """The retrieval queue is too deep for this request's budget."""


class Lagging(Exception):
    """The event loop lags too far behind for this request to await any stage."""


def fallback_reason(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "retrieval_timeout"
    if isinstance(e, Overloaded):
        return "retrieval_overload"
    if isinstance(e, Lagging):
        return "loop_lag"
    return "retrieval_error"


def best_effort(write: Callable[[], Any]) -> None:
    """A write off the request path (a cached list, an impression): while the store is down
    it is dropped, since a list can be recomputed and an impression is analytics."""
    try:
        write()
    except StoreUnavailable as e:
        log.debug("dropped while the store is down: %s", e)
