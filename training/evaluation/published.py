"""Published results on the data sets we evaluate on, printed beside ours.

MovieLens-1M as the sequential-recommendation papers preprocess it (6,040 users, 3,416
items, 999,611 interactions), leave-one-out, full ranking: test (NDCG@10, Recall@10) of
SASRec (Kang and McAuley, 2018, as re-measured with the original BCE loss), BERT4Rec (Sun
et al., 2019), gSASRec (Petrov and Macdonald, 2023) and SASRec with full or sampled
cross-entropy (Klenitskiy and Vasilev, 2023).
"""

from __future__ import annotations

PUBLISHED: dict[str, dict[str, tuple[float, float]]] = {
    "ml-1m": {
        "SASRec (BCE, original)": (0.1341, 0.2500),
        "BERT4Rec": (0.1537, 0.2843),
        "gSASRec": (0.1726, 0.3003),
        "SASRec, full cross-entropy": (0.1821, 0.3152),
        "SASRec, CE over 3,000 sampled negatives": (0.1857, 0.3159),
    }
}


def published(dataset: str) -> dict[str, tuple[float, float]]:
    """(test NDCG@10, Recall@10) per published model on `dataset`; empty when none."""
    return PUBLISHED.get(dataset, {})
