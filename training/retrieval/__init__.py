"""Candidate retrievers with one contract (`base.Retriever`), by name."""

from training.retrieval.base import Recommendation, RetrievalError, Retriever
from training.retrieval.cf import ALS, BPR, ItemKNN
from training.retrieval.content import Content
from training.retrieval.data import FitData
from training.retrieval.popularity import MostPopular, SegmentPopular
from training.retrieval.private_covisits import PrivateCoVisits
from training.retrieval.sequential import SelfAttentive
from training.retrieval.transitions import Transitions

RETRIEVERS: dict[str, type[Retriever]] = {
    k.kind: k
    for k in (
        MostPopular,
        SegmentPopular,
        Transitions,
        ALS,
        BPR,
        ItemKNN,
        Content,
        SelfAttentive,
        PrivateCoVisits,
    )
}

__all__ = [
    "ALS",
    "BPR",
    "RETRIEVERS",
    "Content",
    "FitData",
    "ItemKNN",
    "MostPopular",
    "PrivateCoVisits",
    "Recommendation",
    "RetrievalError",
    "Retriever",
    "SegmentPopular",
    "SelfAttentive",
    "Transitions",
]
