"""The `plot` subcommand: figures for any result dataset, chosen by its kind."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Optional

import typer

from slt_superposition.errors import InputError
from slt_superposition.io import open_result

# dataset kind -> "module:function"; each function is (ds: xr.Dataset, out_dir: Path) -> list[Path]
PLOTTERS = {
    "train": "analysis.plots:plot_training",
    "llc": "slt_superposition.plots:plot_llc",
    "calibration": "slt_superposition.plots:plot_calibration",
    "compare": "analysis.compare_plots:plot_comparison",
    "development": "analysis.compare_plots:plot_development",
}


def plot(
    path: Path = typer.Argument(..., help="A result dataset (.nc) written by slt-superposition."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Folder for the figures (created if missing; default: 'figures' next to the dataset)."),
) -> None:
    """Draw the figures for a result dataset (training grid, LLC traces, calibration sweep, comparison)."""
    out = path.parent / "figures" if out is None else out
    ds = open_result(path)
    kind = ds.attrs["slt_superposition_kind"]
    if kind not in PLOTTERS:
        raise InputError(f"no plots for '{kind}' datasets (known: {', '.join(PLOTTERS)})")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create output folder {out}: {err.strerror}") from None
    module_name, function_name = PLOTTERS[kind].split(":")
    plotter = getattr(importlib.import_module(module_name), function_name)
    import matplotlib

    matplotlib.use("Agg")
    for figure_path in plotter(ds, out):
        print(figure_path)


def register(app: typer.Typer) -> None:
    """Add the `plot` command to `app`."""
    app.command("plot")(plot)
