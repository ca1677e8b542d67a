"""Small files in every supported layout, written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

GENRE_COUNT = 19  # u.item: 'unknown' + 18 genres


def dense_log(n_users: int = 8, n_items: int = 7, seed: int = 0) -> list[tuple[int, int, int, int]]:
    """(user, item, rating, timestamp): every user rates every item, plus a user with 2 rows
    (dropped by 5-core). Ids start at 1 as in MovieLens."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        for k, i in enumerate(rng.permutation(np.arange(1, n_items + 1))):
            rows.append((u, int(i), int(rng.integers(1, 6)), 1_000_000 + 100 * k + u))
    rows += [(n_users + 1, 1, 4, 1_000_000), (n_users + 1, 2, 4, 1_000_001)]
    return rows


def write_ml100k(folder: Path, rows=None, n_items: int = 7) -> Path:
    rows = rows or dense_log(n_items=n_items)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    lines = []
    for i in range(1, n_items + 1):
        flags = ["0"] * GENRE_COUNT
        flags[1 + i % 18] = "1"
        lines.append(f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|" + "|".join(flags))
    (folder / "u.item").write_text("\n".join(lines) + "\n", encoding="latin-1")
    return folder


def write_ml1m(folder: Path, rows=None, n_items: int = 7) -> Path:
    rows = rows or dense_log(n_items=n_items)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows))
    movies = "".join(f"{i}::Film: Part {i} (1999)::Drama|Comedy\n" for i in range(1, n_items + 1))
    (folder / "movies.dat").write_text(movies, encoding="latin-1")
    return folder


def write_ml_csv(folder: Path, rows=None, n_items: int = 7) -> Path:
    rows = rows or dense_log(n_items=n_items)
    folder.mkdir(parents=True, exist_ok=True)
    body = "".join(f"{u},{i},{r}.0,{t}\n" for u, i, r, t in rows)
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + body)
    movies = "".join(f'{i},"Film, The {i} (2001)",Action|Sci-Fi\n' for i in range(1, n_items + 1))
    (folder / "movies.csv").write_text("movieId,title,genres\n" + movies)
    return folder
