"""The `reproduce` subcommand (placeholder: to be written)."""

import typer


def register(app: typer.Typer) -> None:
    """Add the `reproduce` command to `app`."""
