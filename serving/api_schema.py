"""The published OpenAPI document's error answers and the parts FastAPI cannot derive: every
error is `api_models.Error`, each route lists the statuses it can answer, and POST /events
publishes the body it validates (`api_models.EventsBody`: one event or a bounded list)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter

from serving.api_models import Error, EventsBody

Responses = dict[int | str, dict[str, Any]]

_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 1},
    }
}
_WHY = {
    400: "the body could not be read as UTF-8 JSON",
    401: "no API key, or one that is not valid (unknown, wrong or revoked)",
    403: "the API key lacks the scope this endpoint needs",
    404: "no such item",
    409: "the item exists already",
    413: "the body is larger than its limit (bytes, or events per batch)",
    422: "a field is invalid; the message names it",
    429: "the API key is over its rate limit; retry after Retry-After",
    503: "the event store is unreachable: nothing stored; retry after Retry-After",
}
#: the Prometheus text format (`/metrics`)
METRICS_MEDIA_TYPE = "text/plain"


def errors(*statuses: int, store: bool = False, metrics: bool = False) -> Responses:
    """The error answers of a protected route: 401, 403, 422 and 429 always, plus `statuses`
    (400 and 413 with a body, 503 when it writes to the event store)."""
    body = (400, 413) if 413 in statuses else ()
    codes = sorted({401, 403, 422, 429, *statuses, *body, *((503,) if store else ())})
    out: Responses = {}
    for code in codes:
        out[code] = {"model": Error, "description": _WHY[code]}
        if code in (429, 503):
            out[code]["headers"] = _RETRY_AFTER
    if metrics:
        out[200] = {
            "description": "metrics in the Prometheus text format",
            "content": {METRICS_MEDIA_TYPE: {"schema": {"type": "string"}}},
        }
    return out


def published_schema(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document with the /events body filled in (cached on the app, as FastAPI's)."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    body = TypeAdapter(EventsBody).json_schema(ref_template="#/components/schemas/{model}")
    doc.setdefault("components", {}).setdefault("schemas", {}).update(body.pop("$defs", {}))
    op = doc["paths"]["/events"]["post"]
    op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    app.openapi_schema = doc
    return doc
