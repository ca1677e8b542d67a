"""The counts table printed after `llmrec prepare` (raw -> filtered -> split)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from pipelines.artifact import DatasetManifest


def counts_table(m: DatasetManifest) -> Table:
    c = m.counts
    t = Table(title=f"{m.name} -> {m.version} ({m.engine} engine)", show_lines=False)
    t.add_column("step")
    t.add_column("rows", justify="right")
    t.add_column("users", justify="right")
    t.add_column("items", justify="right")
    t.add_column("dropped", justify="left")
    dropped = {k: v for k, v in c.dropped.items() if k != "kept" and v}

    def d(*keys: str) -> str:
        return ", ".join(f"{k} {dropped[k]:,}" for k in keys if k in dropped) or "-"

    t.add_row("raw", f"{c.rows['raw']:,}", "", "", "")
    t.add_row(
        "cleaned",
        f"{c.rows['cleaned']:,}",
        f"{c.users['cleaned']:,}",
        f"{c.items['cleaned']:,}",
        d("null_id", "bad_timestamp", "below_threshold", "negative_event", "unknown_item"),
    )
    t.add_row("deduplicated", f"{c.rows['deduplicated']:,}", "", "", d("duplicate"))
    t.add_row(
        f"{m.params['min_user_interactions']}/{m.params['min_item_interactions']}-core",
        f"{c.rows['kcore']:,}",
        f"{c.users['kcore']:,}",
        f"{c.items['kcore']:,}",
        d("kcore") + f" ({c.kcore_rounds} rounds)",
    )
    for split, n in c.splits.items():
        t.add_row(f"split: {split}", f"{n:,}", "", "", "")
    return t


def print_summary(m: DatasetManifest, out: str, console: Console | None = None) -> None:
    console = console or Console()
    console.print(counts_table(m))
    console.print(f"split protocol: {m.split_protocol}; ties: {m.tie_break}")
    console.print(f"written: {out}")
