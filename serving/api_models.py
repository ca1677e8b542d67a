"""The HTTP contract of the Serve graph: request bodies and the one model of each response.

Every route declares its response model, so `/openapi.json` documents what clients get, and
every answer path (re-ranked, retrieval, cold start, popularity fallback, cache) builds the
same `Recommendation`. The models forbid unknown fields: a path that drifts from the
contract fails its tests instead of reaching clients."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    field_validator,
)

Id = StrictStr | StrictInt
EventType = Literal["view", "click", "purchase", "rating", "dislike"]
Stage = Literal["rerank", "retrieval", "cold_start"]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- requests (422 with the field named on bad input) ---------------------------------------


class EventIn(_Closed):
    user_id: Id
    item_id: Id
    type: EventType
    value: float | None = None
    timestamp: float | None = Field(None, ge=0)
    event_id: StrictStr | None = Field(None, max_length=200)
    request_id: StrictStr | None = Field(None, max_length=200)

    @field_validator("user_id", "item_id")
    @classmethod
    def _not_blank(cls, v: Id) -> Id:
        if isinstance(v, str) and not v.strip():
            raise ValueError("must not be empty")
        return v


class RecommendIn(_Closed):
    user_id: Id
    k: int | None = Field(None, ge=1)
    exclude: list[Id] = Field(default_factory=list, max_length=1000)
    category: StrictStr | None = None


class ItemIn(_Closed):
    item_id: Id
    title: StrictStr = Field(min_length=1, max_length=500)
    text: StrictStr | None = Field(None, max_length=5000)
    categories: list[StrictStr] = Field(default_factory=list, max_length=50)


EVENTS = TypeAdapter(list[EventIn])


def field_errors(e: ValidationError, batch: bool) -> str:
    """'events[3].type: Input should be ...' (the field to fix, named)."""
    parts = []
    for err in e.errors()[:10]:
        loc = list(err["loc"])
        index, rest = loc[0], ".".join(map(str, loc[1:])) or "event"
        where = f"events[{index}].{rest}" if batch else rest
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


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
    stage: Stage
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
    stage: Stage
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
