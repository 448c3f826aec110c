"""The `slt-superposition` console script (also `python -m slt_superposition`).

Each subcommand lives in `slt_superposition/commands/<name>.py` and exposes
`register(app)`. Errors the user can fix (`InputError`) print one line and exit 2.
"""

from __future__ import annotations

import sys

import typer

from slt_superposition.errors import InputError

COMMAND_MODULES = ("train", "llc", "plot", "reproduce")

app = typer.Typer(
    name="slt-superposition",
    help="Singular learning theory and superposition on toy models: train grids of toy models, "
    "estimate local learning coefficients, compare weight and activation bases, reproduce papers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Singular learning theory and superposition on toy models."""


def _register_commands() -> None:
    import importlib

    for name in COMMAND_MODULES:
        module = importlib.import_module(f"slt_superposition.commands.{name}")
        module.register(app)


_register_commands()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input or usage, 130 interrupted)."""
    try:
        app(args=argv)  # standalone mode: typer prints usage errors and raises SystemExit
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
