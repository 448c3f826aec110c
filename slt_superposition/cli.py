"""The `slt-superposition` command line (the console script and `python -m slt_superposition`
enter through `slt_superposition.entry`, which first splits the CPU into one device per core;
SLT_SPLIT_CPU=0 keeps one).

Each subcommand lives in `slt_superposition/commands/<name>.py` and exposes
`register(app)`. Errors the user can fix (`InputError`) print one line and exit 2.
"""

from __future__ import annotations

import sys

import typer

from slt_superposition.errors import InputError

COMMAND_MODULES = ("train", "llc", "sae", "plot", "reproduce", "launch")

app = typer.Typer(
    name="slt-superposition",
    help="Singular learning theory and superposition on toy models: train grids of toy models, "
    "estimate local learning coefficients, compare weight and activation bases, reproduce papers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: option names are never cut at 80 columns
)


def _print_version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    import jax

    from slt_superposition.provenance import git_commit

    try:
        ours = version("slt-superposition")
    except PackageNotFoundError:
        ours = "not installed"
    devices = jax.local_device_count()
    print(f"slt-superposition {ours} (git {git_commit()[:12]}); jax {jax.__version__} on {jax.default_backend()} "
          f"({devices} device{'s' if devices > 1 else ''})")
    raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version (and git commit, jax, backend) and exit."),
) -> None:
    """Singular learning theory and superposition on toy models."""


def _register_commands() -> None:
    import importlib

    for name in COMMAND_MODULES:
        module = importlib.import_module(f"slt_superposition.commands.{name}")
        module.register(app)


_register_commands()


def _say_interrupted(argv: list[str] | None) -> None:
    """The interrupted line, except for `launch`: its process 0 writes to the same terminal and says it."""
    from slt_superposition.interrupted import interrupted_message

    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["launch"]:
        return
    print(interrupted_message(args), file=sys.stderr)


PEER_LOST_SIGNS = ("Connection closed by peer", "Gloo", "heartbeat", "coordination service", "Connection reset")


def lost_peer_message(err: BaseException) -> str | None:
    """One line for a collective of a multi-process run that failed because another process died
    (`jax.errors.JaxRuntimeError` with one of `PEER_LOST_SIGNS` while `jax.process_count() > 1`),
    else None: the ninety-line traceback says nothing the line does not, and `launch` names the
    process that ended."""
    if "jax" not in sys.modules or type(err).__name__ != "JaxRuntimeError":
        return None
    import jax

    text = str(err)
    if jax.process_count() < 2 or not any(sign in text for sign in PEER_LOST_SIGNS):
        return None
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return (f"error: another process of this {jax.process_count()}-process run is gone ({first[:200]}); "
            f"rerun the same command: a resumable sweep goes on from its saved chunks")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 another process of a multi-process run lost,
    2 bad input or usage, 130 interrupted)."""
    try:
        app(args=argv)  # standalone mode: typer prints usage errors and raises SystemExit
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if code == 130:  # typer turns Ctrl-C into exit status 130
            _say_interrupted(argv)
        return code
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _say_interrupted(argv)
        return 130
    except Exception as err:  # noqa: BLE001 - only a lost peer becomes one line; anything else is raised
        said = lost_peer_message(err)
        if said is None:
            raise
        print(said, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
