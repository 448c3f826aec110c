"""The `llc` subcommand: the LLC of every instance of a trained grid, in one compiled call."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Optional

import typer

from slt_superposition.commands import distributed_options as dist
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
    localization: float = typer.Option(
        1.0, "--localization",
        help="Localization strength gamma (pull towards w*); 1, as calibrate and the flagship use. Larger gamma "
             "shrinks every curved direction's count by nbeta h / (nbeta h + gamma) (docs/experiments/"
             "llc_localization.md)."),
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
    metropolis: bool = typer.Option(
        False, "--metropolis",
        help="Accept or reject every step (MALA): exact at any step size, no discretisation bias; needs full batch "
             "(--batch-size 0). With --calibrate the step size is then limited by the acceptance rate, not by the "
             "curvature bound."),
    trace_every: int = typer.Option(1, "--trace-every", help="Store the loss trace as means of blocks of this many steps."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data draw and of the chains."),
    all_devices: bool = typer.Option(
        False, "--all-devices",
        help="Split the instances over every device (jax.devices()), accelerators included; the numbers are the "
        "same bit for bit as on one device. On a CPU every core is already a device (SLT_SPLIT_CPU=0: one; "
        "JAX_NUM_CPU_DEVICES=N: N)."),
    calibrate: bool = typer.Option(
        False, "--calibrate",
        help="Calibrate every instance (`calibrate_batched`, at the given --localization, --nbeta, --batch-size, "
        "--chains): each gets its own step size and chain length (overrides --step-size/--steps/--burnin), and the "
        "batch size may grow if the minibatch check fails; the calibration is saved next to --out as "
        "*.calibration.nc."),
    max_steps: int = typer.Option(
        320_000, "--max-steps",
        help="With --calibrate: the longest chain the length stage may choose (it starts at 10,000 or a quarter "
        "of this, whichever is smaller; the long-chain bias check may run up to 4x this). Lower it for a quick look: "
        "the calibration then says where the estimate had not stopped moving."),
    target_acceptance: Optional[float] = typer.Option(
        None, "--target-acceptance",
        help="With --calibrate: the acceptance rate the step-size sweep keeps at least, in (0, 1] (default 0.9). "
             "With --metropolis the chains are exact at any rate, and a rate near 0.5-0.7 needed 2x to 30x fewer "
             "steps for the same error (docs/calibration.md); for plain SGLD the rate is a proxy of the step-size "
             "bias: keep it high."),
    min_relaxation: float = typer.Option(
        0.5, "--min-relaxation",
        help="With --calibrate: the chain-length rule does not settle before a sampler time eps x steps of this / "
             "gamma (the flat directions held only by the localization relax on a time scale 1 / gamma); 0 turns the "
             "floor off."),
    progress: bool = typer.Option(
        True, "--progress/--no-progress",
        help="Progress bars on stderr, with a line saying what is about to be sampled."),
    coordinator: Optional[str] = dist.COORDINATOR,
    num_processes: Optional[int] = dist.NUM_PROCESSES,
    process_id: Optional[int] = dist.PROCESS_ID,
    context: typer.Context = None,
) -> None:
    """Estimate the local learning coefficient of every instance in a trained dataset.

    All instances and chains run in one compiled program. The output carries the grid coordinates (feature_probability, importance_decay, seed) on every variable.

    Example: slt-superposition llc grid.nc --chains 8 --steps 2000 --burnin 500 --out llc.nc
    """
    dist.initialize(coordinator, num_processes, process_id)
    import jax
    import numpy as np

    from slt_superposition.io import check_writable, open_result, output_lock, save_dataset
    from slt_superposition.llc import SGLDConfig, estimate_llc_batched, validate_config
    from slt_superposition.sharding import instance_mesh
    from slt_superposition.grid import complete, grid_coords, grid_shape
    from toy_models.train import llc_inputs, require_trained

    side_file = out.with_suffix(".calibration.nc")
    check_writable(out, inputs=[path], kind="llc", netcdf=True)
    if calibrate:
        check_writable(side_file, inputs=[path], kind="calibration")
    _check_options(chains=chains, steps=steps, burnin=burnin, trace_every=trace_every, seed=seed,
                   batch_size=batch_size, n_samples=n_samples, max_steps=max_steps, calibrate=calibrate)
    if metropolis and batch_size:
        raise InputError(f"--metropolis needs full batch (--batch-size 0): the accept/reject step needs the exact "
                         f"loss, and --batch-size {batch_size} gives a noisy one")
    if not (0 <= min_relaxation < math.inf):
        raise InputError(f"--min-relaxation must be >= 0 and finite, got {min_relaxation}")
    if target_acceptance is not None and not calibrate:
        raise InputError("--target-acceptance is a calibration setting: give --calibrate too")
    if target_acceptance is not None and not (0 < target_acceptance <= 1):
        raise InputError(f"--target-acceptance must be in (0, 1], got {target_acceptance}")
    ds = complete(open_result(path, kind="train"))
    require_trained(ds, path)
    _check_memory(ds, n_samples=n_samples, chains=chains, steps=steps, trace_every=trace_every,
                  batch_size=batch_size or n_samples)
    data_key, chain_key, calibration_key = jax.random.split(jax.random.key(seed), 3)
    loss_fn, params, data = llc_inputs(ds, n_samples=n_samples, key=data_key)
    config = SGLDConfig(
        step_size=step_size, localization=localization, nbeta=_nbeta(nbeta), num_chains=chains,
        # with --calibrate the calibration chooses every instance's chain length and burn-in (and the trace
        # blocks): a placeholder chain here, so --steps/--burnin/--trace-every cannot refuse a calibrated run
        num_steps=2 if calibrate else steps, num_burnin=1 if calibrate else burnin,
        batch_size=batch_size or None, trace_every=1 if calibrate else trace_every,
        sampling=sampling, metropolis=metropolis,
    )
    validate_config(config, n_samples)  # before any calibration or sampling work
    # held until the command returns: a second run into --out is refused at once
    if context is not None:
        context.with_resource(output_lock(out))
    if calibrate:
        from slt_superposition.calibration import TARGET_ACCEPTANCE, calibrate_batched

        n_inst = int(np.prod(grid_shape(ds)))
        print(f"calibrating every instance ({n_inst}) ...", file=sys.stderr)
        found, sweep = calibrate_batched(loss_fn, params, data, key=calibration_key, localization=localization,
                                         nbeta=config.nbeta, batch_size=config.batch_size, num_chains=chains,
                                         instance_dims=grid_coords(ds), progress=progress,
                                         max_steps=max_steps,  # min_steps: calibration.default_min_steps
                                         min_relaxation=min_relaxation, metropolis=metropolis,
                                         target_acceptance=(TARGET_ACCEPTANCE if target_acceptance is None
                                                            else target_acceptance))
        every = max(trace_every, int(np.max(found.num_steps)) // 1000)  # at most ~1000 trace blocks per chain
        config = SGLDConfig(**{**found.to_dict(), "trace_every": every, "sampling": sampling})
        print(f"calibrated: step sizes {np.min(config.step_size):.3g} .. {np.max(config.step_size):.3g}, "
              f"steps {np.min(config.num_steps)} .. {np.max(config.num_steps)}, "
              f"{'full batch' if config.batch_size is None else f'batch {config.batch_size}'}; "
              f"converged on {int(sweep['converged'].sum())} of {n_inst} instances", file=sys.stderr)
        print(save_dataset(sweep, side_file, inputs=[path]), file=sys.stderr)
    dims = grid_coords(ds)
    mesh = instance_mesh() if all_devices else None
    # validates before it announces the sampling, so a bad input prints only its error line
    result = estimate_llc_batched(loss_fn, params, data, config=config, key=chain_key, instance_dims=dims,
                                  mesh=mesh, verbose=progress, calibration=sweep if calibrate else None)
    result.attrs["source"] = str(path)
    result.attrs["data_seed"] = seed
    print(save_dataset(result, out, inputs=[path]))
    print(summary(result), file=sys.stderr)


def _check_options(*, chains: int, steps: int, burnin: int, trace_every: int, seed: int, batch_size: int | None,
                   n_samples: int, max_steps: int = 320_000, calibrate: bool = False) -> None:
    """The CLI's rules, checked before any file is read or any compute starts (with `calibrate`,
    --steps and --burnin are the calibration's to choose, and not checked)."""
    from slt_superposition.errors import check_batch_size, check_seed

    check_seed(seed, "--seed")
    if chains < 2:
        raise InputError(f"--chains must be at least 2 (R-hat and the spread of the estimate compare chains), got {chains}")
    if max_steps < 2:
        raise InputError(f"--max-steps must be at least 2 (a chain needs burn-in and samples), got {max_steps}")
    if n_samples < 1:
        raise InputError(f"--n-samples must be a positive integer, got {n_samples}")
    if batch_size:
        check_batch_size(batch_size, n_samples, "--batch-size")
    if calibrate:
        return
    if steps < 2 or not 0 <= burnin < steps:
        raise InputError(f"--burnin must be in [0, --steps) and --steps at least 2, got --burnin {burnin} --steps {steps}")
    if trace_every > steps - burnin:
        raise InputError(f"--trace-every {trace_every} is longer than the {steps - burnin} steps after burn-in: "
                         "no trace block would be left to estimate from")


def _check_memory(ds, *, n_samples: int, chains: int, steps: int, trace_every: int, batch_size: int) -> None:
    """`InputError` before the data are drawn if the estimate cannot fit in memory."""
    from slt_superposition.memory import llc_bytes, require_memory
    from slt_superposition.grid import grid_shape

    n_instances = math.prod(grid_shape(ds))
    n_features = ds.sizes["feature"]
    n_parameters = ds.sizes["hidden"] * n_features + n_features
    needed = llc_bytes(n_instances, n_parameters, n_samples=n_samples, n_features=n_features, chains=chains,
                       steps=max(steps, 1), trace_every=max(trace_every, 1), batch_size=batch_size)
    require_memory(needed, f"the LLC of {n_instances} instances ({chains} chains x {steps} steps, n={n_samples})",
                   "fewer --chains, a larger --trace-every, a smaller --n-samples or --batch-size")


def summary(result) -> str:
    """One line on the estimates that counts what failed instead of hiding it: min, median and
    max of llc_mean over the instances that have one, and how many have none (every chain diverged)."""
    import numpy as np

    mean = result["llc_mean"].values.ravel()
    ok = np.isfinite(mean)
    chains = int(result["n_diverged"].sum()), int(result.sizes["chain"]) * mean.size
    line = (f"llc_mean over {int(ok.sum())} of {mean.size} instances: min {mean[ok].min():.3f}, "
            f"median {np.median(mean[ok]):.3f}, max {mean[ok].max():.3f}" if ok.any()
            else f"llc_mean: no estimate for any of the {mean.size} instances (all chains diverged)")
    if ok.any() and not ok.all():
        line += f"; {int((~ok).sum())} instance(s) without an estimate (all chains diverged)"
    if "trusted" in result:
        line += f"; trusted (bias checks passed): {int(result['trusted'].sum())} of {mean.size}"
    if "batch_bias_predicted" in result and np.isfinite(result["batch_bias_predicted"].values).any():
        predicted = result["batch_bias_predicted"].values
        line += (f"; minibatch bias predicted (batch_bias_predicted) median {np.nanmedian(predicted):+.1%}, "
                 f"largest {np.nanmax(predicted):+.1%}")
    return line + f"; diverged chains: {chains[0]} of {chains[1]}"


def register(app: typer.Typer) -> None:
    """Add the `llc` command to `app`."""
    app.command("llc")(llc)
