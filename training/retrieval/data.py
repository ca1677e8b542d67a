"""What retrievers are fitted on: a view of the dataset artifact up to a split."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from pipelines.artifact import Dataset
from pipelines.global_steps import Csr, csr_from_pairs, user_offsets
from pipelines.schema import ITEM_CATEGORIES, ITEM_TEXT, Split

AGE_BANDS = (18, 25, 35, 45, 50, 56)  # MovieLens' own bands: <18, 18-24, ..., 56+
AGE_LABELS = ("under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
NOT_SEGMENTS = ("user_idx", "user_id", "zip_code")


@dataclass
class FitData:
    """Interactions visible to a model, as arrays: the matrix, the sequences, item texts.

    `through` is the last split included: TRAIN to select hyper-parameters on validation,
    VALIDATION to refit before the test split.
    """

    n_users: int
    n_items: int
    matrix: Csr
    seq_indptr: np.ndarray
    seq_items: np.ndarray
    seq_times: np.ndarray
    item_text: list[str]
    item_categories: list[list[str]]
    user_segments: dict[str, np.ndarray]
    dataset_name: str = ""
    dataset_version: str = ""
    #: per attribute, the readable value of each segment code
    segment_labels: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_dataset(cls, ds: Dataset, through: Split = Split.TRAIN) -> FitData:
        seq = ds.sequences
        keep = seq.splits <= through
        users = np.repeat(np.arange(ds.manifest.n_users), np.diff(seq.indptr))[keep]
        items, times = seq.items[keep], seq.timestamps[keep]
        n_users, n_items = ds.manifest.n_users, ds.manifest.n_items
        matrix = csr_from_pairs(users, items, np.ones(len(items), np.float32), (n_users, n_items))
        text = ds.items[ITEM_TEXT].to_pylist()
        cats = [c or [] for c in ds.items[ITEM_CATEGORIES].to_pylist()]
        labels = segment_labels(ds)
        return cls(
            n_users=n_users,
            n_items=n_items,
            matrix=matrix,
            seq_indptr=user_offsets(users, n_users),
            seq_items=items.astype(np.int32),
            seq_times=times,
            item_text=text,
            item_categories=cats,
            user_segments=user_segments(ds, labels),
            dataset_name=ds.manifest.name,
            dataset_version=ds.manifest.version,
            segment_labels=labels,
        )

    def history(self, user: int) -> np.ndarray:
        return self.seq_items[self.seq_indptr[user] : self.seq_indptr[user + 1]]

    def holdout_last(self, m: int, keep: int = 2) -> tuple[FitData, list[np.ndarray]]:
        """This data with each user's last `m` items hidden (at least `keep` stay visible),
        and the hidden items per user, oldest first: next-item targets free of leakage."""
        if m < 1:
            raise ValueError(f"holdout must be >= 1, got {m}")
        lengths = np.diff(self.seq_indptr)
        drop = np.clip(lengths - keep, 0, m)
        visible = np.ones(len(self.seq_items), dtype=bool)
        hidden = []
        for u in range(self.n_users):
            end = self.seq_indptr[u + 1]
            visible[end - drop[u] : end] = False
            hidden.append(self.seq_items[end - drop[u] : end].copy())
        return self.only(visible, f"holdout{m}"), hidden

    def only(self, visible: np.ndarray, label: str) -> FitData:
        """This data with only the interactions where `visible` (a mask over `seq_items`)
        is true; users and items keep their indices. `label` names the view in its
        version."""
        users = self.seq_users()[visible]
        items = self.seq_items[visible]
        matrix = csr_from_pairs(
            users, items, np.ones(len(items), np.float32), (self.n_users, self.n_items)
        )
        return replace(
            self,
            matrix=matrix,
            seq_indptr=user_offsets(users, self.n_users),
            seq_items=items,
            seq_times=self.seq_times[visible],
            dataset_version=f"{self.dataset_version}-{label}",
        )

    def seq_users(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_users), np.diff(self.seq_indptr))


def segment_labels(ds: Dataset) -> dict[str, list[str]]:
    """Per categorical user attribute, its segments' readable values; a segment's code is its
    position here (age is banded). Attributes with more than 100 values are ids, not
    segments."""
    users = ds.users
    out: dict[str, list[str]] = {}
    for col in users.column_names:
        if col in NOT_SEGMENTS:
            continue
        if col == "age":
            out[col] = list(AGE_LABELS)
            continue
        vocab = sorted({str(v) for v in users[col].to_pylist() if v is not None})
        if len(vocab) <= 100:
            out[col] = vocab
    return out


def segment_code(attribute: str, value: Any, labels: list[str]) -> int:
    """The segment code of one attribute value: the one encoding shared by the dataset's
    users and users who state their attributes online. -1: unknown."""
    if value is None:
        return -1
    if attribute == "age":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{attribute}: a number of years, not {value!r}")
        return int(np.searchsorted(AGE_BANDS, value, side="right"))
    try:
        return labels.index(str(value))
    except ValueError:
        return -1


def user_segments(ds: Dataset, labels: dict[str, list[str]] | None = None) -> dict[str, np.ndarray]:
    """Integer segment codes per user for each categorical attribute (`labels`, default
    `segment_labels(ds)`).

    Code -1 means unknown. Used by segment popularity; empty when users have no attributes.
    """
    labels = segment_labels(ds) if labels is None else labels
    return {
        attr: np.array(
            [segment_code(attr, v, values) for v in ds.users[attr].to_pylist()], dtype=np.int32
        )
        for attr, values in labels.items()
    }
