"""The `plot` subcommand: figures for any result dataset, chosen by its kind."""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer

from slt_superposition.errors import InputError

# dataset kind -> "module:function"; each function is (ds: xr.Dataset, out_dir: Path) -> list[Path]
PLOTTERS = {
    "train": "analysis.plots:plot_training",
    "llc": "slt_superposition.plots:plot_llc",
    "calibration": "slt_superposition.plots:plot_calibration",
    "compare": "analysis.compare_plots:plot_comparison",
    "development": "analysis.compare_plots:plot_development",
    "sae": "analysis.sae_plots:plot_sae",
}


def plot(
    path: Path = typer.Argument(..., help="A result dataset (.nc) written by slt-superposition."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Folder for the figures (created if missing; default: figures/NAME next to the dataset "
                            "NAME.nc, so that two datasets' figures of the same kind do not replace each other)."),
) -> None:
    """Draw the figures for a result dataset (training grid, LLC traces, calibration sweep, comparison)."""
    from slt_superposition.io import open_result

    out = default_figure_folder(path) if out is None else out
    ds = open_result(path)
    kind = ds.attrs["slt_superposition_kind"]
    if kind not in PLOTTERS:
        drawn = sorted(p.name for p in path.parent.glob("*.png"))
        where = f": {', '.join(drawn)} in {path.parent}" if drawn else ""
        raise InputError(f"no plots for '{kind}' datasets (plot draws: {', '.join(PLOTTERS)}); an experiment's "
                         f"figures are drawn by `slt-superposition reproduce`, next to its dataset{where}")
    created = _writable_folder(out)
    module_name, function_name = PLOTTERS[kind].split(":")
    plotter = getattr(importlib.import_module(module_name), function_name)
    import matplotlib

    matplotlib.use("Agg")
    try:
        with warnings.catch_warnings(record=True) as caught:  # printed as one 'warning:' line each
            warnings.simplefilter("always", RuntimeWarning)
            paths = plotter(ds, out)
    except OSError as err:  # e.g. the disk filled up: each figure is written atomically, none is half-written
        _remove_if_empty(out, created)
        raise InputError(f"cannot write figures into {out}: {err.strerror or err}") from None
    except InputError:  # nothing to draw (e.g. every instance's W is NaN): leave no empty folder behind
        _remove_if_empty(out, created)
        raise
    for warning in caught:
        if issubclass(warning.category, RuntimeWarning):  # about the data (e.g. diverged instances)
            print(f"warning: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    for figure_path in paths:
        print(figure_path)


def default_figure_folder(path: Path) -> Path:
    """Where `plot PATH` draws without --out: `figures/<dataset name>` beside the dataset (one
    folder per dataset: the figure names are per kind, so a shared folder would let the second
    dataset of a kind replace the first's figures)."""
    return path.parent / "figures" / path.stem


def _writable_folder(out: Path) -> bool:
    """Create `out` if missing and check that a file can be written there (root passes
    `os.access` on read-only file systems, so try it). Returns whether `out` was created;
    `InputError` (one line) if it cannot be written, before anything is drawn."""
    import tempfile

    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create output folder {out}: {err.strerror}") from None
    try:
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        _remove_if_empty(out, created)
        raise InputError(f"cannot write figures into {out}: {err.strerror}") from None
    return created


def _remove_if_empty(out: Path, created: bool) -> None:
    """Remove the folder `plot` itself created if nothing was written into it."""
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def register(app: typer.Typer) -> None:
    """Add the `plot` command to `app`."""
    app.command("plot")(plot)
