"""Global steps of the preprocessing job on compact integer columns, after the row-wise
steps of `pipelines.transforms` have encoded ids: dedup, k-core, contiguous ids, the
chronological order, the splits, CSR matrices and item popularity. Pure numpy: no Ray,
no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.errors import DataError
from pipelines.schema import Split


def dedup_mask(
    user: np.ndarray,
    item: np.ndarray,
    timestamp: np.ndarray,
    keep: str = "first",
    presorted: bool = False,
) -> np.ndarray:
    """Keep one row per (user, item): the earliest (`first`) or the latest (`last`).

    Among rows with the same timestamp the earlier row in the input wins, so the result does
    not depend on anything but the data. Input in any order; `presorted=True` says it is
    already in `chronological_order` (only valid with keep="first"), which skips the sort.
    """
    import pandas as pd

    if keep not in ("first", "last"):
        raise ValueError(f"keep must be 'first' or 'last', not {keep!r}")
    n = len(user)
    if n == 0:
        return np.zeros(0, dtype=bool)
    # Negated times put each pair's latest row first; the stable sort keeps input order on ties.
    if presorted and keep == "first":
        order = np.arange(n)
    else:
        order = chronological_order(user, item, timestamp if keep == "first" else -timestamp)
    key = user[order].astype(np.int64) * (int(item.max()) + 1) + item[order]
    dup = pd.Series(key).duplicated(keep="first").to_numpy()
    mask = np.zeros(n, dtype=bool)
    mask[order[~dup]] = True
    return mask


def kcore_mask(
    user: np.ndarray, item: np.ndarray, min_user: int, min_item: int, max_rounds: int = 100
) -> tuple[np.ndarray, int]:
    """Iteratively drop users with < min_user and items with < min_item interactions.

    Returns the keep mask and the number of rounds it took to converge.
    """
    keep = np.ones(len(user), dtype=bool)
    n_users = int(user.max()) + 1 if len(user) else 0
    n_items = int(item.max()) + 1 if len(item) else 0
    for rounds in range(1, max_rounds + 1):
        u_count = np.bincount(user[keep], minlength=n_users)
        i_count = np.bincount(item[keep], minlength=n_items)
        bad = keep & ((u_count[user] < min_user) | (i_count[item] < min_item))
        if not bad.any():
            return keep, rounds
        keep &= ~bad
    raise DataError(f"k-core filtering did not converge in {max_rounds} rounds")


def remap_contiguous(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map the non-negative codes that occur to 0..k-1 in increasing order.

    Returns (new ids per row, old code of each new id). Order is preserved, so contiguous
    ids follow the sorted raw ids. O(n): a bincount, not a sort.
    """
    if len(codes) == 0:
        return codes.astype(np.int32), np.zeros(0, dtype=np.int64)
    used = np.flatnonzero(np.bincount(codes))
    lookup = np.zeros(int(codes.max()) + 1, dtype=np.int32)
    lookup[used] = np.arange(len(used), dtype=np.int32)
    return lookup[codes], used


def _pack(major: np.ndarray, minor: np.ndarray) -> np.ndarray | None:
    """One int64 key ordering like (major, minor), or None when it would overflow."""
    lo_a, hi_a = int(major.min()), int(major.max())
    lo_b, hi_b = int(minor.min()), int(minor.max())
    span_b = hi_b - lo_b + 1
    if (hi_a - lo_a + 1) * span_b > 2**63:  # the largest key must fit a signed int64
        return None
    return (major.astype(np.int64) - lo_a) * span_b + (minor.astype(np.int64) - lo_b)


def chronological_order(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """Stable row order by (user, timestamp, item): the deterministic per-user sequence order.

    Keys are packed into one int64 where their ranges allow (one stable sort instead of a
    three-key lexsort: about 3x faster at 5M rows).
    """
    if len(user) == 0:
        return np.zeros(0, dtype=np.int64)
    for times in (timestamp, None):
        if times is None:  # raw times span too many bits: their dense rank orders the same
            times = np.unique(timestamp, return_inverse=True)[1].reshape(-1)
        user_time = _pack(user, times)
        full = None if user_time is None else _pack(user_time, item)
        if full is not None:
            return np.argsort(full, kind="stable")
    return np.lexsort((item, timestamp, user))


def user_offsets(sorted_user: np.ndarray, n_users: int) -> np.ndarray:
    """CSR-style offsets: rows of user u are indptr[u]:indptr[u+1] in a user-sorted array."""
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(sorted_user, minlength=n_users), out=indptr[1:])
    return indptr


def leave_one_out_split(sorted_user: np.ndarray, n_users: int, min_length: int = 3) -> np.ndarray:
    """Last interaction of each user is test, second-to-last validation, the rest train.

    `sorted_user` must be in chronological order per user. Users with fewer than `min_length`
    interactions keep everything in train.
    """
    indptr = user_offsets(sorted_user, n_users)
    lengths = np.diff(indptr)
    from_end = indptr[sorted_user + 1] - 1 - np.arange(len(sorted_user))
    eligible = lengths[sorted_user] >= min_length
    split = np.full(len(sorted_user), Split.TRAIN, dtype=np.int8)
    split[eligible & (from_end == 0)] = Split.TEST
    split[eligible & (from_end == 1)] = Split.VALIDATION
    return split


def temporal_split(
    timestamp: np.ndarray, validation_fraction: float = 0.1, test_fraction: float = 0.1
) -> tuple[np.ndarray, tuple[int, int]]:
    """Global cut by time: the latest `test_fraction` of interactions are test, the
    `validation_fraction` before them validation. Returns the split codes and the two cut
    timestamps (validation starts at the first, test at the second)."""
    if not (0 <= validation_fraction < 1 and 0 < test_fraction < 1):
        raise DataError("temporal split fractions must lie in [0, 1) and sum to less than 1")
    if validation_fraction + test_fraction >= 1:
        raise DataError("temporal split: validation + test fractions must be below 1")
    ts_sorted = np.sort(timestamp)
    n = len(ts_sorted)
    t_test = int(ts_sorted[min(n - 1, int(np.floor(n * (1 - test_fraction))))])
    t_val = int(ts_sorted[min(n - 1, int(np.floor(n * (1 - test_fraction - validation_fraction))))])
    split = np.full(n, Split.TRAIN, dtype=np.int8)
    split[timestamp >= t_val] = Split.VALIDATION
    split[timestamp >= t_test] = Split.TEST
    return split, (t_val, t_test)


@dataclass(frozen=True)
class Csr:
    """A CSR matrix as plain arrays (what `scipy.sparse.csr_matrix` and `implicit` take)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    shape: tuple[int, int]

    def to_scipy(self):  # scipy is imported lazily: serving may only need the arrays
        import scipy.sparse as sp

        return sp.csr_matrix((self.data, self.indices, self.indptr), shape=self.shape)

    @property
    def nnz(self) -> int:
        return len(self.indices)


def csr_from_pairs(
    user: np.ndarray, item: np.ndarray, value: np.ndarray, shape: tuple[int, int]
) -> Csr:
    """User x item CSR with each row's items sorted; duplicate pairs are summed."""
    import scipy.sparse as sp

    m = sp.csr_matrix((value.astype(np.float32), (user, item)), shape=shape)
    m.sum_duplicates()  # also sorts the column indices of each row
    return Csr(
        m.indptr.astype(np.int64), m.indices.astype(np.int32), m.data.astype(np.float32), shape
    )


def popularity(
    item: np.ndarray, timestamp: np.ndarray, n_items: int, recent_days: float = 30.0
) -> dict[str, np.ndarray]:
    """Interaction counts per item overall and within the last `recent_days` of the data."""
    count = np.bincount(item, minlength=n_items).astype(np.int64)
    if len(timestamp):
        start = int(timestamp.max()) - int(recent_days * 86400)
        recent = np.bincount(item[timestamp >= start], minlength=n_items).astype(np.int64)
        first = np.full(n_items, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, item, timestamp)
        last = np.full(n_items, np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(last, item, timestamp)
    else:
        recent = np.zeros(n_items, dtype=np.int64)
        first = last = np.zeros(n_items, dtype=np.int64)
    return {"count": count, "recent_count": recent, "first_seen": first, "last_seen": last}
