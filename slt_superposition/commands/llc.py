"""The `llc` subcommand (placeholder: to be written)."""

import typer


def register(app: typer.Typer) -> None:
    """Add the `llc` command to `app`."""
