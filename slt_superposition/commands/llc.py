"""The `llc` subcommand: the LLC of every instance of a trained grid, in one compiled call."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from slt_superposition.errors import InputError


def _nbeta(value: str):
    if value in ("n", "batch"):
        return None if value == "n" else "batch"
    try:
        number = float(value)
    except ValueError:
        raise InputError(f"--nbeta must be 'n', 'batch' or a positive number, got '{value}'") from None
    return number


def llc(
    path: Path = typer.Argument(..., help="A trained grid ('train' dataset, .nc) from `slt-superposition train`."),
    out: Path = typer.Option(..., "--out", "-o", help="Output LLC dataset (.nc)."),
    step_size: float = typer.Option(1e-3, "--step-size", help="SGLD step size eps."),
    localization: float = typer.Option(100.0, "--localization", help="Localization strength gamma (pull towards w*)."),
    nbeta: str = typer.Option(
        "n", "--nbeta",
        help="Inverse temperature: 'n' = n/log n (the papers), 'batch' = batch/log batch (devinterp 1.3's default), "
        "or a number."),
    chains: int = typer.Option(8, "--chains", help="SGLD chains per instance."),
    steps: int = typer.Option(2000, "--steps", help="SGLD steps per chain, burn-in included."),
    burnin: int = typer.Option(500, "--burnin", help="Burn-in steps left out of the estimate."),
    batch_size: Optional[int] = typer.Option(
        500, "--batch-size", help="SGLD minibatch size (0 = full batch). Must not exceed --n-samples."),
    n_samples: int = typer.Option(1000, "--n-samples", help="Data set size n drawn from each instance's data distribution."),
    sampling: str = typer.Option(
        "replacement", "--sampling",
        help="Minibatches: 'replacement' (i.i.d. indices, fastest) or 'epoch' (without replacement, reshuffled "
        "every epoch, as devinterp's shuffled DataLoader)."),
    trace_every: int = typer.Option(1, "--trace-every", help="Store the loss trace as means of blocks of this many steps."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data draw and of the chains."),
    all_devices: bool = typer.Option(
        False, "--all-devices",
        help="Split the instances over every local device (jax.devices()); the numbers are the same bit for bit "
        "as on one device."),
    calibrate: bool = typer.Option(
        False, "--calibrate",
        help="Choose step size and chain length with `calibrate` on the first instance (at the given "
        "--localization, --nbeta, --batch-size, --chains) and use them for every instance (overrides "
        "--step-size/--steps/--burnin); the sweep is saved next to --out as *.calibration.nc."),
) -> None:
    """Estimate the local learning coefficient of every instance in a trained dataset.

    All instances and chains run in one compiled program. The output carries the grid coordinates (feature_probability, importance_decay, seed) on every variable.

    Example: slt-superposition llc grid.nc --chains 8 --steps 2000 --burnin 500 --out llc.nc
    """
    import jax

    from slt_superposition.io import check_writable, open_result, save_dataset
    from slt_superposition.llc import SGLDConfig, estimate_llc_batched, validate_config
    from slt_superposition.sharding import instance_mesh
    from toy_models.train import GRID_DIMS, llc_inputs

    check_writable(out)
    ds = open_result(path, kind="train")
    for dim in GRID_DIMS:
        if dim not in ds.dims:
            ds = ds.expand_dims(dim)
    ds = ds.transpose(*GRID_DIMS, ...)
    if n_samples < 1:
        raise InputError(f"--n-samples must be a positive integer, got {n_samples}")
    data_key, chain_key, calibration_key = jax.random.split(jax.random.key(seed), 3)
    loss_fn, params, data = llc_inputs(ds, n_samples=n_samples, key=data_key)
    config = SGLDConfig(
        step_size=step_size, localization=localization, nbeta=_nbeta(nbeta), num_chains=chains,
        num_steps=steps, num_burnin=burnin, batch_size=batch_size or None, trace_every=trace_every,
        sampling=sampling,
    )
    validate_config(config, n_samples)  # before any calibration or sampling work
    if calibrate:
        try:
            from slt_superposition.calibration import calibrate as run_calibration
        except ImportError:
            raise InputError("--calibrate needs slt_superposition.calibration, which is not installed") from None
        first = jax.tree_util.tree_map(lambda x: x[0], (params, data))
        print("calibrating on the first instance ...", file=sys.stderr)
        found, sweep = run_calibration(loss_fn, first[0], first[1], key=calibration_key, localization=localization,
                                       nbeta=config.nbeta, batch_size=config.batch_size, num_chains=chains,
                                       progress=True)
        config = SGLDConfig(**{**found.to_dict(), "trace_every": trace_every, "sampling": sampling})
        print(f"calibrated: step_size {config.step_size:g}, localization {config.localization:g}, "
              f"steps {config.num_steps} (burn-in {config.num_burnin})", file=sys.stderr)
        print(save_dataset(sweep, out.with_suffix(".calibration.nc")), file=sys.stderr)
    dims = {dim: ds[dim].values for dim in GRID_DIMS}
    mesh = instance_mesh() if all_devices else None
    # validates before it announces the sampling, so a bad input prints only its error line
    result = estimate_llc_batched(loss_fn, params, data, config=config, key=chain_key, instance_dims=dims,
                                  mesh=mesh, verbose=True)
    result.attrs["source"] = str(path)
    result.attrs["data_seed"] = seed
    print(save_dataset(result, out))
    mean = result["llc_mean"].values.ravel()
    print(f"llc_mean over instances: min {mean.min():.3f}, max {mean.max():.3f}; "
          f"diverged chains: {int(result['n_diverged'].sum())}", file=sys.stderr)


def register(app: typer.Typer) -> None:
    """Add the `llc` command to `app`."""
    app.command("llc")(llc)
