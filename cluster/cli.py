"""`llmrec`: one command, a subcommand per stage (modules in `cluster/commands/`).

Runs locally (`llmrec prepare ...`) or as a Ray job on a cluster, unchanged:
`ray job submit -- python -m cluster.cli prepare ...`.
"""

from __future__ import annotations

# Importing a command group registers its commands on the application.
from cluster.commands import data, demo, keys, models, retrain, serving  # noqa: F401
from cluster.commands.common import app


def main(argv: list[str] | None = None) -> None:
    """Console-script entry; typer reports usage errors itself (exit status 2)."""
    app(args=argv)


if __name__ == "__main__":
    main()
