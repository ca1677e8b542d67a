"""`llmrec keys create|list|revoke`: the API keys the Serve graph accepts (serving/auth.py).
A new key is printed once; the file keeps only its hash. A running graph re-reads the file
within a second of a change."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cluster.commands.common import app, console, user_errors
from pipelines.errors import LlmrecError
from serving.auth import SCOPES, new_key, read_keys, revoke, write_keys
from serving.config import LiveSettings

keys_app = typer.Typer(
    help="API keys: create (printed once), list, revoke. Every endpoint but /healthz and "
    "/readyz needs a key with its scope.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")

#: the file the profiles read (`api_keys` in the live settings)
DEFAULT_KEYS = str(LiveSettings.model_fields["api_keys"].default)
KeyFile = Annotated[
    str, typer.Option("--file", help="the key file the Serve graph reads (its api_keys setting)")
]


def _read(path: str):
    try:
        return read_keys(path)
    except ValueError as e:
        raise LlmrecError(str(e)) from None


def create_key(path: str, name: str, scopes: list[str], rate: float | None = None) -> str:
    """Add a key to the file at `path`; the key (shown once)."""
    records = _read(path)
    try:
        key, record = new_key(name, scopes, rate)
    except ValueError as e:
        raise LlmrecError(str(e)) from None
    write_keys(path, [*records, record])
    return key


@keys_app.command("create")
@user_errors
def create(
    name: Annotated[str, typer.Option(help="who or what uses the key, e.g. web-frontend")],
    scope: Annotated[
        list[str],
        typer.Option(help=f"repeat for several: {', '.join(SCOPES)}, or all"),
    ],
    rate: Annotated[
        float | None,
        typer.Option(help="requests/s this key may make per Api replica [default: key_rate]"),
    ] = None,
    file: KeyFile = DEFAULT_KEYS,
) -> None:
    """Create a key and print it once (only its salted hash is stored)."""
    scopes = list(SCOPES) if scope == ["all"] else scope
    key = create_key(file, name, scopes, rate)
    console.print(f"created a key named '{name}' with scopes {', '.join(sorted(set(scopes)))}")
    console.print("the key (shown only now; store it in your secret manager):")
    print(key)


@keys_app.command("list")
@user_errors
def list_(file: KeyFile = DEFAULT_KEYS) -> None:
    """The keys in the file: id, name, scopes, created, revoked (never the key itself)."""
    records = _read(file)
    if not records:
        console.print(f"no keys in {file}: create one with llmrec keys create")
        return
    table = Table(title=file)
    for c in ("id", "name", "scopes", "rate/s", "created", "revoked"):
        table.add_column(c)
    for r in records:
        rate = "default" if r.rate is None else f"{r.rate:g}"
        table.add_row(r.id, r.name, " ".join(r.scopes), rate, r.created, r.revoked or "-")
    console.print(table)


@keys_app.command("revoke")
@user_errors
def revoke_(
    key: Annotated[str, typer.Argument(help="the key's id or name (llmrec keys list)")],
    file: KeyFile = DEFAULT_KEYS,
) -> None:
    """Revoke a key: a running graph refuses it within a second (a file it can watch) or at
    its next reconfigure (a secret in the environment)."""
    records = _read(file)
    try:
        gone = revoke(records, key)
    except ValueError as e:
        raise LlmrecError(str(e)) from None
    write_keys(file, records)
    console.print(f"revoked key {gone.id} ('{gone.name}')")
