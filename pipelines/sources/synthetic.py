"""A synthetic interaction log at any size, for scale tests and benchmarks.

Items belong to topics and have power-law popularity; each user has a sparse taste over
topics; a share of each user's next items are the "successor" of the previous one (sequential
structure that transition models can learn); titles and texts come from per-topic
vocabularies. Files are written in chunks so memory stays bounded at any size.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.schema import items_table
from pipelines.sources.base import Source
from pipelines.sources.generic import ItemColumns
from pipelines.sources.generic import load as load_generic
from pipelines.transforms import ColumnMapping

_SYLLABLES = (
    "ka",
    "lo",
    "mi",
    "ren",
    "to",
    "sa",
    "vel",
    "dor",
    "an",
    "qui",
    "zo",
    "ber",
    "tal",
    "nor",
    "pe",
    "lin",
    "gra",
    "mu",
    "shi",
    "fen",
)


@dataclass(frozen=True)
class SyntheticSpec:
    n_interactions: int = 100_000
    n_users: int | None = None  # default: interactions / 50
    n_items: int | None = None  # default: interactions / 40, at least 100
    n_topics: int = 20
    successor_probability: float = 0.3
    popularity_exponent: float = 1.0
    rows_per_file: int = 1_000_000
    seed: int = 0

    def resolved(self) -> SyntheticSpec:
        users = self.n_users or max(10, self.n_interactions // 50)
        items = self.n_items or max(100, self.n_interactions // 40)
        return SyntheticSpec(**{**asdict(self), "n_users": users, "n_items": items})

    def key(self) -> str:
        s = self.resolved()
        return f"synthetic-{s.n_interactions}-u{s.n_users}-i{s.n_items}-t{s.n_topics}-s{s.seed}"


def _word(rng: np.random.Generator) -> str:
    return "".join(rng.choice(_SYLLABLES, size=rng.integers(2, 4)))


def _items(spec: SyntheticSpec, rng: np.random.Generator) -> pa.Table:
    vocab = [[_word(rng) for _ in range(12)] for _ in range(spec.n_topics)]
    topic_names = [_word(rng).capitalize() for _ in range(spec.n_topics)]
    topic = np.arange(spec.n_items) * spec.n_topics // spec.n_items
    titles, texts = [], []
    for i, t in enumerate(topic):
        w = rng.choice(vocab[t], size=4, replace=False)
        titles.append(f"The {w[0].capitalize()} {w[1].capitalize()} {i}")
        texts.append(f"A story of {w[2]} and {w[3]}.")
    return items_table(
        pa.array(np.arange(spec.n_items), pa.int64()),
        title=titles,
        description=texts,
        categories=[[topic_names[t]] for t in topic],
    )


def generate(spec: SyntheticSpec, folder: Path) -> Path:
    """Write `interactions/part-*.parquet` and `items.parquet` under `folder` (idempotent)."""
    spec = spec.resolved()
    done = folder / "spec.json"
    if done.exists() and json.loads(done.read_text()) == asdict(spec):
        return folder
    rng = np.random.default_rng(spec.seed)
    (folder / "interactions").mkdir(parents=True, exist_ok=True)
    for old in (folder / "interactions").glob("*.parquet"):
        old.unlink()
    n_users, n_items, n_topics = spec.n_users, spec.n_items, spec.n_topics
    assert n_users is not None and n_items is not None

    # Item popularity: Zipf weights on a random permutation, normalised within each topic.
    topic_of = np.arange(n_items) * n_topics // n_items
    weight = 1.0 / (rng.permutation(n_items) + 1.0) ** spec.popularity_exponent
    topic_start = np.searchsorted(topic_of, np.arange(n_topics + 1))
    cdf = np.empty(n_items)
    for t in range(n_topics):
        s, e = topic_start[t], topic_start[t + 1]
        c = np.cumsum(weight[s:e])
        cdf[s:e] = t + c / c[-1]
    cdf[-1] = n_topics  # guard the float edge

    taste = np.cumsum(rng.dirichlet(np.full(n_topics, 0.3), size=n_users), axis=1)
    lengths = np.maximum(3, rng.lognormal(0.0, 0.8, size=n_users))
    lengths = np.maximum(3, np.round(lengths * spec.n_interactions / lengths.sum())).astype(int)
    user_start_time = rng.integers(1_500_000_000, 1_600_000_000, size=n_users)

    bounds = np.searchsorted(np.cumsum(lengths), np.arange(0, lengths.sum(), spec.rows_per_file))
    bounds = np.unique(np.append(bounds, n_users))
    part = 0
    lo = 0
    for hi in bounds:
        if hi <= lo:
            continue
        users = np.repeat(np.arange(lo, hi), lengths[lo:hi])
        n = len(users)
        r = rng.random(n)
        topic = (taste[users] < r[:, None]).sum(axis=1).clip(max=n_topics - 1)
        fresh = np.searchsorted(cdf, topic + rng.random(n)).clip(max=n_items - 1)
        # A successor continues a run from its start: item = start item + steps, within topic.
        first_of_user = np.ones(n, dtype=bool)
        first_of_user[1:] = users[1:] != users[:-1]
        succ = (rng.random(n) < spec.successor_probability) & ~first_of_user
        idx = np.arange(n)
        run_start = np.maximum.accumulate(np.where(succ, 0, idx))
        base = fresh[run_start]
        t0, t1 = topic_start[topic_of[base]], topic_start[topic_of[base] + 1]
        item = t0 + (base - t0 + (idx - run_start)) % (t1 - t0)
        gaps = rng.exponential(86_400.0, size=n).astype(np.int64)
        gaps[first_of_user] = 0
        csum = np.cumsum(gaps)
        seg_start = np.maximum.accumulate(np.where(first_of_user, idx, 0))
        ts = user_start_time[users] + csum - csum[seg_start]
        rating = rng.choice(np.arange(1, 6), size=n, p=[0.06, 0.11, 0.27, 0.34, 0.22])
        table = pa.table(
            {
                "user": pa.array(users.astype(np.int64)),
                "item": pa.array(item.astype(np.int64)),
                "ts": pa.array(ts.astype(np.int64)),
                "rating": pa.array(rating.astype(np.int8)),
            }
        )
        pq.write_table(table, folder / "interactions" / f"part-{part:05d}.parquet")
        part += 1
        lo = hi
    pq.write_table(_items(spec, rng), folder / "items.parquet")
    done.write_text(json.dumps(asdict(spec)))
    return folder


def load(spec: SyntheticSpec, cache: Path) -> Source:
    folder = generate(spec, cache / spec.key())
    source = load_generic(
        str(folder / "interactions"),
        ColumnMapping(user="user", item="item", timestamp="ts", value="rating"),
        items=str(folder / "items.parquet"),
        item_columns=ItemColumns(description="description", categories="categories"),
        name=spec.key(),
    )
    source.kind = "synthetic"
    return source
