"""Transition module: the reproduce registry moved to `experiments.registry` (the application
layer). The names below keep the experiments that still import them from here working until
they move to `experiments.registry`; then this file goes."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from experiments.registry import EXPERIMENTS, get_experiment, load_runner, reproduce, row_variables  # noqa: F401


def command_line(name: str, out_dir: str | Path, quick: bool, full: bool = False) -> str:
    """The CLI command that reproduces `name` into `out_dir`, with the older (quick, full) flags
    (`experiments.registry.command_line` takes the size)."""
    flag = " --quick" if quick else " --full" if full else ""
    return f"slt-superposition reproduce {name}{flag} --out {out_dir}"


def module_command(module: str, argv: list[str] | None = None) -> str:
    """`python -m <module> <args>` as run directly (argv None: this process's arguments)."""
    return f"python -m {module} " + shlex.join(sys.argv[1:] if argv is None else argv)
