"""The `reproduce` subcommand: rerun a published result by name."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from slt_superposition.commands import distributed_options as dist
from slt_superposition.errors import InputError


def reproduce(
    name: Optional[str] = typer.Argument(None, help="Experiment name (see --list), e.g. tms-pentagon."),
    quick: bool = typer.Option(
        False, "--quick",
        help="Small settings: minutes on a laptop CPU rather than hours (docs/benchmarks.md lists each "
             "experiment's, from `python -m benchmarks.quick_times`)."),
    full: bool = typer.Option(False, "--full", help="The full grid where an experiment has one (sized for a GPU)."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Folder for the dataset, figures and report.md (default: results/NAME, results/quick/NAME with "
                            "--quick, results/full/NAME with --full); a folder holding another experiment's report "
                            "is refused."
    ),
    only: Optional[List[str]] = typer.Option(
        None, "--only", help="Run only this named case (repeatable) of an experiment with cases; rerunning into the "
                             "same --out adds cases, and a run without --only completes the rest."),
    set_: Optional[List[str]] = typer.Option(
        None, "--set", help="NAME=VALUE: one of the experiment's own options (repeatable; VALUE a Python literal), "
                            "e.g. --set estimate_chains=4 for normal-crossing; for weights-vs-activations any "
                            "field of its FlagshipConfig, e.g. --set calibration_max_steps=19200. A wrong NAME "
                            "lists the experiment's options."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars and per-case lines on stderr/stdout."),
    list_: bool = typer.Option(False, "--list", help="List the experiments, with the sizes and --only each takes, and exit."),
    coordinator: Optional[str] = dist.COORDINATOR,
    num_processes: Optional[int] = dist.NUM_PROCESSES,
    process_id: Optional[int] = dist.PROCESS_ID,
) -> None:
    """Reproduce an experiment by name: writes its dataset (.nc), figures and report.md into one folder.

    In a multi-process run (see `launch`) every process computes, process 0 writes into --out
    and the others write their copies of the figures and report into a scratch folder that
    is deleted at the end.
    """
    from experiments.registry import EXPERIMENTS, check_request, parse_options, reproduce as run_experiment

    if list_:
        flags = {name: " ".join([f"--{size}" for size in ("quick", "full") if size in e.sizes]
                                + (["--only"] if e.cases else [])) for name, e in EXPERIMENTS.items()}
        width, flag_width = max(map(len, EXPERIMENTS)), max(map(len, flags.values()))
        for experiment in EXPERIMENTS.values():
            print(f"{experiment.name:<{width}}  {flags[experiment.name]:<{flag_width}}  {experiment.summary}")
        print("(second column: which of --quick, --full and --only CASE the experiment takes)")
        return
    if name is None:
        raise InputError("give an experiment name or --list (known: " + ", ".join(EXPERIMENTS) + ")")
    if quick and full:
        raise InputError("--quick and --full exclude each other")
    size = "quick" if quick else "full" if full else "default"
    options = parse_options(set_ or [])
    check_request(name, size, only, options)  # unknown names, sizes and options fail before anything is created
    if out is None:  # results/NAME, results/quick/NAME, results/full/NAME: each size its own folder
        out = Path("results") / name if size == "default" else Path("results") / size / name
    dist.initialize(coordinator, num_processes, process_id)
    import contextlib
    import shutil
    import tempfile

    import matplotlib

    from slt_superposition.io import is_writer, output_lock

    matplotlib.use("Agg")
    if is_writer():
        existed = out.exists()
        try:
            with output_lock(out, folder=True):
                run_experiment(name, out, size=size, progress=progress, only=only, options=options)
        except InputError:  # refused (e.g. --only naming no case): a folder made for it goes if still empty
            if not existed:
                with contextlib.suppress(OSError):
                    out.rmdir()
            raise
        print(f"{name}: dataset, figures and report.md in {out}")
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"slt-superposition-{name}-"))
    try:
        run_experiment(name, scratch / out.name, size=size, progress=progress, only=only, options=options)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def register(app: typer.Typer) -> None:
    """Add the `reproduce` command to `app`."""
    app.command("reproduce")(reproduce)
