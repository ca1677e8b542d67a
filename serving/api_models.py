"""The HTTP contract of the Serve graph: request bodies and the one model of each response.

Every route declares its response model, so `/openapi.json` documents what clients get, and
every answer path (re-ranked, retrieval, cold start, popularity fallback, cache) builds the
same `Recommendation`. The models forbid unknown fields: a path that drifts from the
contract fails its tests instead of reaching clients."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StrictStr,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)

# -- limits (in the published schema, so a client generated from it keeps them) -------------

#: largest request body, in bytes (413 past it)
MAX_BODY_BYTES = 2 * 1024 * 1024
#: events in one POST /events (413 past it)
MAX_BATCH_EVENTS = 1000
#: the most items one /recommend or /items/{id}/similar answer may ask for
K_MAX = 100
MAX_ID_CHARS = 200
MAX_EXCLUDE = 1000
#: GET /recommend's `exclude`: the whole URL must stay under the proxy's 64 KiB, even with
#: every character percent-encoded (longer lists: POST /recommend)
MAX_QUERY_EXCLUDE, MAX_QUERY_ID_CHARS = 50, 64
MAX_ATTRIBUTES = 20
MAX_TITLE_CHARS, MAX_TEXT_CHARS, MAX_CATEGORIES = 500, 5000, 50
#: timestamps are seconds since the epoch, before 2100
MAX_TIMESTAMP = 4_102_444_800.0

#: integers JSON parsers everywhere read exactly (an id past them would change in a client)
MAX_JSON_INT = 2**53 - 1


def _utf8(v: str) -> str:
    # JSON may carry lone surrogates, which no store can encode: refused here, not at rest.
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (a lone surrogate is not)") from None
    return v


def _id(v: Any) -> str | int:
    # One check with one message, instead of a union's error per member.
    if isinstance(v, float) and v.is_integer():  # JSON Schema's integer includes 3.0
        v = int(v)
    if isinstance(v, int) and not isinstance(v, bool):
        if abs(v) > MAX_JSON_INT:
            raise ValueError(f"an integer id must lie within +-{MAX_JSON_INT}")
        return v
    if not isinstance(v, str):
        raise ValueError("must be a string or an integer")
    if not v.strip():
        raise ValueError("must not be empty")
    if len(v) > MAX_ID_CHARS:
        raise ValueError(f"must be at most {MAX_ID_CHARS} characters")
    return _utf8(v)


def _number(v: Any) -> Any:
    # Pydantic's lax numbers take true and "3"; JSON Schema's do not.
    if isinstance(v, bool | str):
        raise ValueError("must be a JSON number, not a string or a boolean")
    return v


def number(**limits: Any) -> Any:
    """A JSON number within `limits`: finite, never a boolean or a string. (The limits come
    before the validator, or they would not reach the published schema.)"""
    return Annotated[float, Field(allow_inf_nan=False, **limits), BeforeValidator(_number)]


def integer(**limits: Any) -> Any:
    """A JSON integer within `limits` (3.0 included; true and "3" not)."""
    return Annotated[int, Field(**limits), BeforeValidator(_number)]


#: a string field as stored: valid Unicode
Text = Annotated[StrictStr, AfterValidator(_utf8)]
#: an id: a non-empty string or an integer, both bounded
Id = Annotated[
    str | int,
    PlainValidator(_id),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS, "pattern": r"\S"},
                {"type": "integer", "minimum": -MAX_JSON_INT, "maximum": MAX_JSON_INT},
            ]
        }
    ),
]
EventType = Literal["view", "click", "purchase", "rating", "dislike"]
Stage = Literal["rerank", "features", "retrieval", "cold_start"]
#: an item's: how its place was decided (`new_item`: the list's place for the most engaged
#: new item, `LiveSettings.shown_new_item_rank`)
ItemStage = Literal["rerank", "features", "retrieval", "cold_start", "new_item"]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- requests (422 with the field named on bad input) ---------------------------------------


class EventIn(_Closed):
    user_id: Id
    item_id: Id
    type: EventType
    value: number() | None = None
    timestamp: number(ge=0, le=MAX_TIMESTAMP) | None = None
    event_id: Text | None = Field(None, max_length=MAX_ID_CHARS)
    request_id: Text | None = Field(None, max_length=MAX_ID_CHARS)


class RecommendIn(_Closed):
    user_id: Id
    k: integer(ge=1, le=K_MAX) | None = None
    exclude: list[Id] = Field(default_factory=list, max_length=MAX_EXCLUDE)
    category: Text | None = Field(None, max_length=MAX_ID_CHARS)


class ItemIn(_Closed):
    item_id: Id
    title: Text = Field(min_length=1, max_length=MAX_TITLE_CHARS)
    text: Text | None = Field(None, max_length=MAX_TEXT_CHARS)
    categories: list[Annotated[Text, Field(max_length=MAX_ID_CHARS)]] = Field(
        default_factory=list, max_length=MAX_CATEGORIES
    )


EVENTS = TypeAdapter(list[EventIn])
#: the body of POST /events as the schema publishes it (validated by `EVENTS`, whose errors
#: name the event and field: `events[3].type`)
EventsBody = EventIn | Annotated[list[EventIn], Field(min_length=1, max_length=MAX_BATCH_EVENTS)]


def _attribute(v: Any) -> str | int | float | None:
    # One check with one message (a union would report an error per member).
    if v is None or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v
    if isinstance(v, str):
        if len(v) > MAX_ID_CHARS:
            raise ValueError(f"must be at most {MAX_ID_CHARS} characters")
        return _utf8(v)
    raise ValueError("must be a string, a number or null")


#: a stated attribute's value (null: not stated)
AttributeValue = Annotated[
    str | int | float | None,
    PlainValidator(_attribute),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "maxLength": MAX_ID_CHARS},
                {"type": "number"},
                {"type": "null"},
            ]
        }
    ),
]
#: PUT /users/{id}/attributes: attribute name -> stated value (null: not stated)
Attributes = Annotated[
    dict[Annotated[Text, Field(max_length=MAX_ID_CHARS)], AttributeValue],
    Field(max_length=MAX_ATTRIBUTES),
]


def field_errors(e: ValidationError, batch: bool) -> str:
    """'events[3].type: Input should be ...' (the field to fix, named)."""
    parts = []
    for err in e.errors()[:10]:
        loc = list(err["loc"])
        index, rest = loc[0], ".".join(map(str, loc[1:])) or "event"
        where = f"events[{index}].{rest}" if batch else rest
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def request_errors(errors: list[dict[str, Any]]) -> str:
    """FastAPI's validation errors as one message naming each field: 'k: Input should be
    less than or equal to 100' (the location's first part, query/path/body, dropped)."""
    parts = []
    for err in errors[:10]:
        loc = [str(x) for x in err.get("loc", ())]
        where = ".".join(loc[1:]) or (loc[0] if loc else "request")
        if err.get("type") == "json_invalid":
            where = "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "request: invalid"


class Error(BaseModel):
    """Every 4xx and 5xx answer: one message that names what to fix."""

    detail: str


# -- responses --------------------------------------------------------------------------------


class ItemScores(_Closed):
    retrieval: float | None
    rerank: float | None


class SegmentRef(_Closed):
    attribute: str
    value: str


class RecommendedItem(_Closed):
    item_id: str
    title: str
    score: float | None
    sources: list[str]
    source_scores: dict[str, float]
    scores: ItemScores
    stage: ItemStage = Field(
        description="what placed the item: rerank, features, retrieval, cold_start, or "
        "new_item (the list's place for the most engaged new item, which no model ranks "
        "until the next refit)"
    )
    explanation: str
    because: str | None = Field(description="the history item that drove the candidate")
    because_source: str | None = Field(description="the source that named `because`")
    segment: SegmentRef | None = Field(description="cold start: the stated attribute used")


class Versions(_Closed):
    model: str | None
    reranker: str | None


class ExperimentRef(_Closed):
    name: str
    variant: str


class Recommendation(_Closed):
    user_id: str
    request_id: str
    stage: Stage = Field(
        description="how the head was ordered: rerank (the LM re-ranker), features (the "
        "re-ranker's feature layer alone: the routing table found no LM gain for this "
        "history length), retrieval, or cold_start"
    )
    path: str = Field(description="warm, sparse, cold_start, or fallback")
    fallback: str | None = Field(
        description="why the answer is not the full pipeline's (a late, refused or failed "
        "stage; store_unavailable: the event store did not answer, so the user's recent "
        "events are missing); None when nothing fell back"
    )
    routed: str | None = Field(None, description="the re-ranker was skipped by routing, and why")
    items: list[RecommendedItem]
    versions: Versions
    user_version: int | None
    timings_ms: dict[str, float]
    ignored: dict[str, int]
    cached: bool
    experiment: ExperimentRef | None


class EventsStored(_Closed):
    stored: int
    duplicates: int
    unknown_items: int


class SimilarItem(_Closed):
    item_id: str
    title: str
    score: float
    sources: list[str]


class SimilarItems(_Closed):
    item_id: str
    items: list[SimilarItem]


class ItemAdded(_Closed):
    item_id: str
    recommendable: bool


class AttributesSet(_Closed):
    user_id: str
    segments: dict[str, str]


class UserErased(_Closed):
    user_id: str
    removed: dict[str, int]
    status: str = Field(
        description="where to ask which model version is the first trained without the user"
    )


class ErasureStatus(_Closed):
    user_id: str
    erased_at: float | None = Field(description="when the user was last erased (None: never)")
    first_version_without: str | None = Field(
        description="the first model version whose data was built after the erasure (None: "
        "no retrain since)"
    )
    current_version: str
    current_without: bool = Field(description="whether the served version is that one or later")


class Health(_Closed):
    status: str


class WarmState(_Closed):
    model: str | None
    users: int
    done: int
    seconds: float | None


class Readiness(_Closed):
    ready: bool
    reason: str | None = None
    model: str | None = None
    reranker: str | None = None
    warm: WarmState | None = None


def recommendation_keys() -> tuple[set[str], set[str]]:
    """The keys of a response and of each of its items: every answer path fills them all."""
    return set(Recommendation.model_fields), set(RecommendedItem.model_fields)
