"""The HTTP face of the Api deployment, without its routes: the FastAPI application with
the body limit, the published schema, the API-key dependency each route names its scope
with, the one error shape of every answer, and the 503 of a write the store could not take.

No `from __future__ import annotations`: FastAPI reads these dependencies' annotations."""

from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes
from ray import serve

from serving.api_models import MAX_BODY_BYTES, request_errors
from serving.api_schema import published_schema
from serving.auth import Denied, Guard
from serving.body_limit import BodyLimit
from serving.events import StoreUnavailable

#: seconds a client waits before retrying a write the store could not take
RETRY_AFTER_S = 1


async def stored_or_503(call: Any) -> Any:
    """A write through the EventStore deployment; while the store is unreachable, HTTP 503
    with Retry-After (the write was not made: retrying it, with the same event ids, stores
    each event once)."""
    try:
        return await call
    except Exception as e:
        # Through a Serve handle the store's exception arrives wrapped (its `cause`).
        if isinstance(e, StoreUnavailable) or isinstance(
            getattr(e, "cause", None), StoreUnavailable
        ):
            raise HTTPException(
                503,
                "store: the event store is unreachable and nothing was stored; retry after "
                f"{RETRY_AFTER_S} s (events with an event_id are stored once however often "
                "they are sent)",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        raise


api = FastAPI(
    title="llmrec",
    description="Real-time recommendations: retrieval, LLM re-ranking, cold-start fallback. "
    "Every endpoint but /healthz and /readyz takes an API key with the scope it names "
    "(`llmrec keys create`), as `Authorization: Bearer <key>` or `X-API-Key: <key>`.",
)
api.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
api.openapi = lambda: published_schema(api)  # type: ignore[method-assign]

_bearer = HTTPBearer(scheme_name="bearer", auto_error=False, description="an llmrec API key")
_x_api_key = APIKeyHeader(
    name="X-API-Key", scheme_name="x-api-key", auto_error=False, description="an llmrec API key"
)


def _presented(
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    x_api_key: Annotated[str | None, Depends(_x_api_key)],
) -> str | None:
    return bearer.credentials if bearer is not None else x_api_key


def _admit(scopes: SecurityScopes, key: Annotated[str | None, Depends(_presented)]) -> None:
    """Runs before the body is validated: a caller without the key learns nothing else."""
    # The replica object, found as Serve finds it for the routes' `self`: the app and its
    # dependencies run as a pickled copy in the replica, so module state would be a copy.
    guard: Guard = serve.get_replica_context().servable_object.guard
    try:
        guard.admit(key, scopes.scopes[0])
    except Denied as d:
        guard.denied[d.status] = guard.denied.get(d.status, 0) + 1
        raise HTTPException(d.status, d.message, headers=d.headers) from None


def scope(name: str) -> Any:
    """The route's dependency: an API key with scope `name`."""
    return Security(_admit, scopes=[name])


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException):
    detail = exc.detail
    if exc.status_code == 400:  # FastAPI could not read the body at all
        detail = f"body: {detail}; send UTF-8 JSON"
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)


@api.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception):
    # Logged by Serve with its traceback; the client gets the one error shape, no internals.
    return JSONResponse({"detail": "internal error: the request was not completed"}, 500)


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError):
    # One shape for every error (`Error`): the fields to fix, named, in one string.
    return JSONResponse({"detail": request_errors(list(exc.errors()))}, status_code=422)
