"""The registry behind `slt-superposition reproduce NAME`.

Each experiment is a module `experiments/<snake_name>.py` exposing

    run(out_dir: Path, *, quick: bool = False) -> xr.Dataset

which writes its dataset, figures and `report.md` (naming the command that made them)
under `out_dir`. Modules are imported only when run, so a missing or broken one does not
stop the others.
"""

from __future__ import annotations

import importlib
import inspect
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from slt_superposition.errors import InputError


@dataclass(frozen=True)
class Experiment:
    name: str
    summary: str

    @property
    def module(self) -> str:
        return "experiments." + self.name.replace("-", "_")


EXPERIMENTS = {
    e.name: e
    for e in (
        Experiment("tms-pentagon", "Elhage et al.: n=5, m=2, p=0.05 learns a regular pentagon (D_i = 2/5, 72 degrees)"),
        Experiment("tms-phase-diagram", "Elhage et al.: n=2, m=1 phase diagram against the analytic losses"),
        Experiment("tms-sticky-dimensions", "Elhage et al.: n=200, m=20 sparsity sweep, D_i sticks at 1, 3/4, 2/3, 1/2, 2/5, ..."),
        Experiment("dln-validation", "Furman & Lau / Aoyagi: LLC of deep linear networks against exact learning coefficients"),
        Experiment("kgon-llc", "Chen et al. 2023: LLC of the TMS 5-gon and 6-gon critical points (theory 7 and 8.5)"),
        Experiment("normal-crossing", "devinterp's normal crossings w1^a w2^b x (and 3 parameters): calibrated LLC "
                                      "against the exact finite-n expectation by quadrature"),
        Experiment("tms-llc-vs-n", "the LLC of trained TMS against the sample count n, next to the symmetry bound "
                                   "and the quadratic prediction"),
        Experiment("per-feature-basis", "each feature's weight-refined LLC (its column) against its D_i, ||W_i|| "
                                        "and data-refined LLC, for n6_m2 and n20_m5"),
        Experiment("weights-vs-activations", "flagship: LLC (weight basis) against superposition (activation basis) on one grid"),
        Experiment("sae-progressive-codes", "TopK, Multi-TopK and Matryoshka SAEs on TMS ground truth: codes at k' != k, "
                                            "latent order, information outside the TopK"),
        Experiment("meta-sae", "meta-SAEs on an idealized and a trained SAE of a TMS with rare features: what a "
                               "narrower meta-SAE loses first"),
    )
}


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise InputError(f"unknown experiment '{name}' (known: {', '.join(EXPERIMENTS)}); see `reproduce --list`")
    return EXPERIMENTS[name]


def load_runner(name: str):
    """The `run` function of experiment `name` (every registered module exists: the
    `experiments` package is installed with this one)."""
    experiment = get_experiment(name)
    module = importlib.import_module(experiment.module)
    run = getattr(module, "run", None)
    if not callable(run):
        raise InputError(f"experiment module {experiment.module} has no run(out_dir, *, quick) function")
    return run


def reproduce(name: str, out_dir: str | Path, *, quick: bool = False, full: bool = False) -> xr.Dataset:
    """Run experiment `name`, writing everything under `out_dir`; returns its dataset.

    `quick`: small settings for a laptop CPU; `full`: the full grid (for a GPU), where the
    experiment has one (its `run` takes `full=`)."""
    if quick and full:
        raise InputError("--quick and --full exclude each other")
    run = load_runner(name)
    if full and "full" not in inspect.signature(run).parameters:
        raise InputError(f"experiment '{name}' has no --full grid (its default run is the full size)")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create output folder {out_dir}: {err.strerror}") from None
    return run(out_dir, quick=quick, full=True) if full else run(out_dir, quick=quick)


def row_variables(rows: list[dict], variables: dict[str, tuple[str, str]], dim: str) -> dict[str, xr.Variable]:
    """One `dim`-long variable per entry of `variables` (name -> (long_name, units)) from a
    list of result rows (dicts), for an experiment's results table."""
    return {name: xr.Variable(dim, np.array([row[name] for row in rows]), {"long_name": long_name, "units": units})
            for name, (long_name, units) in variables.items()}


def command_line(name: str, out_dir: str | Path, quick: bool, full: bool = False) -> str:
    """The CLI command that reproduces `name` into `out_dir` (for report.md)."""
    flag = " --quick" if quick else " --full" if full else ""
    return f"slt-superposition reproduce {name}{flag} --out {out_dir}"


def module_command(module: str, argv: list[str] | None = None) -> str:
    """`python -m <module> <args>` as run directly (argv None: this process's arguments), for report.md."""
    return f"python -m {module} " + shlex.join(sys.argv[1:] if argv is None else argv)
