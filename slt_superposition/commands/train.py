"""The `train` subcommand: train a grid of toy models of superposition, save the dataset."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import List, Optional

import typer

from slt_superposition.commands import distributed_options as dist
from slt_superposition.commands.plot import default_figure_folder
from slt_superposition.errors import InputError


def _floats(values: list[str], name: str) -> tuple[float, ...]:
    """Accept repeated options and comma lists: `--x 0.1 --x 0.2` or `--x 0.1,0.2`."""
    out = []
    for value in values:
        for part in str(value).split(","):
            if part.strip():
                try:
                    out.append(float(part))
                except ValueError:
                    raise InputError(f"{name} must be numbers, got '{part}'") from None
    return tuple(out)


def _ints(values: list[str], name: str) -> tuple[int, ...]:
    out = []
    for value in _floats(values, name):
        if value != int(value):
            raise InputError(f"{name} must be whole numbers, got {value}")
        out.append(int(value))
    return tuple(out)


def train(
    n_features: int = typer.Option(..., "--n-features", "-n", help="Number of features n (input dimension)."),
    n_hidden: int = typer.Option(..., "--n-hidden", "-m", help="Number of hidden dimensions m."),
    feature_probability: List[str] = typer.Option(
        ..., "--feature-probability", "-p",
        help="Feature probability 1 - S in (0, 1]; repeat the option or give a comma list to sweep."),
    importance_decay: List[str] = typer.Option(
        ["1.0"], "--importance-decay", "-r",
        help="Importance I_i = r**i; repeat or comma list to sweep. 1.0 = all features equally important."),
    seeds: Optional[int] = typer.Option(
        None, "--seeds", "-k", help="Train seeds 0..K-1 for every grid point (default 1: seed 0 only).",
        show_default=False),
    seed_list: Optional[List[str]] = typer.Option(
        None, "--seed", help="Explicit seeds instead of --seeds (repeat or comma list)."),
    steps: int = typer.Option(10_000, "--steps", "-t", help="Training steps."),
    batch_size: int = typer.Option(1024, "--batch-size", help="Samples per training step."),
    lr: float = typer.Option(1e-3, "--lr", help="Learning rate."),
    weight_decay: float = typer.Option(
        0.0, "--weight-decay", help="Weight decay: AdamW's decoupled one (the Anthropic notebook's torch default is "
                                    "0.01), or L2 for SGD."),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw, or sgd (plain, as Chen et al.'s k-gon runs)."),
    init_scale: Optional[float] = typer.Option(
        None, "--init-scale", help="Standard deviation of the normal initial W (default: Xavier). Small values (e.g. "
                                   "0.01) start near the origin saddle, so training steps through k-gons."),
    schedule: str = typer.Option("constant", "--schedule", help="Learning-rate schedule: constant, linear or cosine (decay to 0)."),
    model: str = typer.Option("tms", "--model", help="tms (h = Wx) or tms_relu_hidden (h = ReLU(Wx))."),
    data: str = typer.Option(
        "sparse_uniform", "--data",
        help="Data generator: sparse_uniform, high_sparsity_limit, correlated_pairs, anticorrelated_pairs."),
    snapshot_steps: Optional[List[str]] = typer.Option(
        None, "--snapshot-steps", help="Keep W and b at these step counts (0 = initial); repeat or comma list."),
    loss_curve_points: int = typer.Option(100, "--loss-curve-points", help="Points in the saved loss curve."),
    out: Path = typer.Option(..., "--out", "-o", help="Output dataset (.nc)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    all_devices: bool = typer.Option(
        False, "--all-devices",
        help="Split the instances over every device (jax.devices(), all processes), accelerators included; the "
        "weights are the same bit for bit as on one device. On a CPU every core is already a device "
        "(SLT_SPLIT_CPU=0: one; JAX_NUM_CPU_DEVICES=N: N)."),
    coordinator: Optional[str] = dist.COORDINATOR,
    num_processes: Optional[int] = dist.NUM_PROCESSES,
    process_id: Optional[int] = dist.PROCESS_ID,
) -> None:
    """Train a grid (feature probability x importance decay x seed) of toy models of
    superposition in one compiled program and save it as a netCDF dataset.

    Example: slt-superposition train -n 5 -m 2 -p 0.05 --seeds 4 --steps 10000 --out pentagon.nc
    """
    from toy_models.train import TrainConfig

    if seed_list and seeds is not None:
        raise InputError(f"--seeds {seeds} and --seed give the seeds twice: --seeds K trains seeds 0..K-1, --seed "
                         f"lists them")
    config = TrainConfig(
        n_features=n_features, n_hidden=n_hidden,
        feature_probabilities=_floats(feature_probability, "--feature-probability"),
        importance_decays=_floats(importance_decay, "--importance-decay"),
        seeds=_ints(seed_list, "--seed") if seed_list else (1 if seeds is None else seeds),
        steps=steps, batch_size=batch_size, learning_rate=lr, weight_decay=weight_decay,
        schedule=schedule, optimizer=optimizer, init_scale=init_scale, model=model, data=data,
        snapshot_steps=_ints(snapshot_steps or [], "--snapshot-steps"),
        loss_curve_points=min(loss_curve_points, steps) if steps > 0 else loss_curve_points,
    )
    dist.initialize(coordinator, num_processes, process_id)

    import warnings

    from slt_superposition.grid import GRID_DIMS
    from slt_superposition.io import check_writable, output_lock, save_dataset
    from slt_superposition.sharding import instance_mesh
    from toy_models.train import diverged_message, finite_instances, nonfinite_instances, train_grid

    check_writable(out, kind="train", netcdf=True)
    config.check_memory()
    with output_lock(out):
        with warnings.catch_warnings():  # a diverged grid is reported below as the error it is
            warnings.simplefilter("ignore", RuntimeWarning)
            ds = train_grid(config, progress=progress, mesh=instance_mesh() if all_devices else None)
        path = save_dataset(ds, out)
    diverged = nonfinite_instances(ds, loss=True)
    finite = finite_instances(ds, loss=True).values.ravel()
    loss = ds["loss"].transpose(*GRID_DIMS).values.ravel()
    summary = (f"final loss min {loss[finite].min():.6g}, max {loss[finite].max():.6g}" if finite.any()
               else "no instance has finite weights and loss")
    if finite.any() and not finite.all():
        summary += f" over the {int(finite.sum())} instances with finite weights"
    typer.echo(f"trained {config.n_instances} instances ({n_features} features, {n_hidden} hidden, {steps} steps); "
               + summary)
    typer.echo(f"dataset: {path}")
    if diverged:
        raise InputError(diverged_message(diverged, config.n_instances) + f" (dataset kept for inspection: {path})")
    typer.echo(f"figures: slt-superposition plot {shlex.quote(str(path))}   (into {default_figure_folder(path)})")


def register(app: typer.Typer) -> None:
    """Add the `train` command to `app`."""
    app.command("train")(train)
