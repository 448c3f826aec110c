"""The `train` subcommand (placeholder: to be written)."""

import typer


def register(app: typer.Typer) -> None:
    """Add the `train` command to `app`."""
