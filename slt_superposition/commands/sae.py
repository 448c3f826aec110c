"""The `sae` subcommand: sparse autoencoders on a trained grid's hidden activations, matched against W."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import List, Optional

import typer

from slt_superposition.errors import require


def _sizes(values: list[str]) -> list[int]:
    from slt_superposition.commands.train import _ints

    return list(_ints(values, "--dict-sizes"))


def sae(
    path: Path = typer.Argument(..., help="A trained grid ('train' dataset, .nc) from `slt-superposition train`."),
    out: Path = typer.Option(..., "--out", "-o", help="Output SAE dataset (.nc); never the input file."),
    kind: str = typer.Option(
        "topk", "--kind",
        help="topk (Gao et al.), batch-topk (k codes per sample on average over the batch), multi-topk "
        "(loss L(k) + L(4k)/8), matryoshka (mean loss over every nested prefix of the dictionary)."),
    dict_sizes: Optional[List[str]] = typer.Option(
        None, "--dict-sizes",
        help="Dictionary sizes (repeat or comma list); default m .. n + 1 (n features, m hidden)."),
    k: Optional[float] = typer.Option(
        None, "--k",
        help="Codes per sample. Default: the expected number of active features n p of each instance (batch-topk: "
        "n_rep p, represented features only, not rounded), rounded to 1..m for the TopK kinds."),
    steps: int = typer.Option(3000, "--steps", help="Training steps of every SAE."),
    samples: int = typer.Option(8192, "--samples", help="Activations drawn per instance (fresh data)."),
    batch_size: int = typer.Option(256, "--batch-size", help="Activations per SAE training step."),
    lr: float = typer.Option(3e-3, "--lr", help="Adam learning rate."),
    schedule: str = typer.Option("decay", "--schedule", help="constant, or decay (linear to 0 over the last 20%)."),
    restarts: int = typer.Option(4, "--restarts", help="Initialisations per dictionary; the lowest FVU is kept."),
    train_b_pre: bool = typer.Option(
        False, "--train-b-pre/--fixed-b-pre",
        help="Train the pre-encoder bias b_pre (Gao et al.), or keep it at the activations' geometric median (0 on "
        "sparse TMS activations; the default: a trained b_pre can drift onto a feature and block recovery, "
        "docs/experiments/sae_recovery.md)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the activation draw and the SAE initialisation."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train SAEs of every dictionary size on every instance's hidden activations, in one program
    (one per distinct k for the TopK kinds), and match their decoders against W's columns
    (Hungarian-matched cosine, MMCS, recovery at n_rep latents).

    Example: slt-superposition sae pentagon.nc --out pentagon_sae.nc --kind batch-topk
    """
    import jax

    from analysis.sae import KINDS
    from analysis.sae_recovery import recovery_share
    from analysis.sae_summary import sae_dataset
    from slt_superposition.errors import check_batch_size, check_seed
    from slt_superposition.io import check_writable, open_result, output_lock, save_dataset
    from toy_models.train import require_trained

    require(kind in KINDS, f"unknown SAE kind '{kind}' (known: {', '.join(KINDS)})")
    for name, value in (("--steps", steps), ("--samples", samples), ("--batch-size", batch_size),
                        ("--restarts", restarts)):
        require(value >= 1, f"{name} must be a positive whole number, got {value}")
    check_batch_size(batch_size, samples, "--batch-size")  # one rule everywhere: at most the samples drawn
    require(lr > 0, f"--lr must be positive, got {lr}")
    check_seed(seed, "--seed")
    check_writable(out, inputs=[path], kind="sae", netcdf=True)
    train = open_result(path, "train")
    require_trained(train, path)
    n, m = train.sizes["feature"], train.sizes["hidden"]
    sizes = _sizes(dict_sizes) if dict_sizes else list(range(m, n + 2))
    require(len(sizes) == len(set(sizes)) and min(sizes) >= 1, f"--dict-sizes must be distinct and positive, got {sizes}")
    if k is not None:
        require(k > 0 and k <= min(sizes), f"--k must be in (0, {min(sizes)}] (the smallest dictionary), got {k:g}")
        require(kind == "batch-topk" or float(k).is_integer(), f"--k must be a whole number for kind {kind}, got {k:g}")
    log_every = 10 if steps % 10 == 0 else 1  # the loss curve in blocks of 10 steps where they divide evenly
    with output_lock(out):
        ds = sae_dataset(train, kind=kind, dict_sizes=sizes, k=k, steps=steps, n_samples=samples,
                         batch_size=batch_size, learning_rate=lr, schedule=schedule, restarts=restarts,
                         train_b_pre=train_b_pre, log_every=log_every,
                         key=jax.random.key(seed), progress=progress, source=str(path))
        saved = save_dataset(ds, out, inputs=[path])
    recovered, posed = recovery_share(ds["sae_recovered"], ds["well_posed"])
    unsized = int((ds["well_posed"] & ds["sae_recovered"].isnull()).sum())
    typer.echo(f"trained {kind} SAEs of sizes {sizes} on {ds['W'].isel(hidden=0, feature=0).size} instances; "
               f"recovered (matched cosine and MMCS >= 0.95 at n_rep latents) on {recovered} of the "
               f"{posed} instances where recovery is well posed and an SAE had n_rep latents"
               + (f" ({unsized} more well posed, with no SAE of their n_rep in --dict-sizes)" if unsized else ""))
    typer.echo(f"dataset: {saved}")
    typer.echo(f"figures: slt-superposition plot {shlex.quote(str(saved))}")


def register(app: typer.Typer) -> None:
    """Add the `sae` command to `app`."""
    app.command("sae")(sae)

