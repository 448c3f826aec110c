"""Both bases along a training run: the LLC and k/m of every weight snapshot.

Chen et al. (2023) train the TMS with 6 features and 2 hidden neurons on x = mu e_i and see
the loss plateau near regular k-gons and then jump to a (k+1)-gon. `development` trains a
grid with weight snapshots, then estimates the LLC of every snapshot of every instance in one
compiled program (snapshots are one more batched axis), and measures k/m per snapshot.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from analysis.measures import n_represented
from slt_superposition.llc import SGLDConfig, estimate_llc_batched
from toy_models.train import GRID_DIMS, TrainConfig, llc_inputs, train_grid


def snapshot_params(train: xr.Dataset) -> dict[str, jax.Array]:
    """{"W": (grid..., snapshot, m, n), "b": (grid..., snapshot, n)} from a `train` dataset."""
    W = train["W_snapshot"].transpose(*GRID_DIMS, "snapshot", "hidden", "feature").values
    b = train["b_snapshot"].transpose(*GRID_DIMS, "snapshot", "feature").values
    return {"W": jnp.asarray(W, jnp.float32), "b": jnp.asarray(b, jnp.float32)}


def snapshot_llc(train: xr.Dataset, *, sgld: SGLDConfig, n_samples: int, key) -> xr.Dataset:
    """The LLC of every snapshot of every instance of `train`, in one program.

    Each snapshot is sampled against its own instance's data (n_samples draws). Returns an
    `llc` dataset with dims (feature_probability, importance_decay, seed, snapshot, chain, ...).
    """
    data_key, chain_key = jax.random.split(key)
    loss_fn, _, data = llc_inputs(train, n_samples=n_samples, key=data_key)
    params = snapshot_params(train)
    n_snap = train.sizes["snapshot"]
    grid_shape = tuple(train.sizes[d] for d in GRID_DIMS)
    # the same data for every snapshot of an instance: repeat along a new snapshot axis
    data = jax.tree_util.tree_map(
        lambda x: jnp.repeat(x.reshape(grid_shape + x.shape[1:])[..., None, :, :], n_snap, axis=len(grid_shape)),
        data,
    )
    dims = {d: train[d].values for d in GRID_DIMS} | {"snapshot": train["snapshot"].values}
    return estimate_llc_batched(loss_fn, params, data, config=sgld, key=chain_key, instance_dims=dims)


def development(config: TrainConfig, *, sgld: SGLDConfig, n_samples: int, key, progress: bool = True) -> xr.Dataset:
    """Train `config` (which must ask for `snapshot_steps`) and measure every snapshot.

    Returns a dataset over (grid..., snapshot) with `llc_mean`, `llc_std`, `n_represented`,
    `overcompleteness`, `snapshot_loss` (the LLC's init loss: the loss at the snapshot on the
    LLC data), `mala_acceptance`, plus the final training `loss_curve`.
    """
    if not config.snapshot_steps:
        config = dataclasses.replace(config, snapshot_steps=tuple(np.unique(np.geomspace(1, config.steps, 30).astype(int))))
    train = train_grid(config, progress=progress)
    llc = snapshot_llc(train, sgld=sgld, n_samples=n_samples, key=key)
    W = train["W_snapshot"]
    k = n_represented(W)
    m = W.sizes["hidden"]
    out = xr.Dataset(
        {
            "llc_mean": llc["llc_mean"],
            "llc_std": llc["llc_std"],
            "mala_acceptance": llc["mala_acceptance"].mean("chain").assign_attrs(
                long_name="MALA acceptance proxy, mean over chains", units="1"),
            "snapshot_loss": llc["init_loss"].assign_attrs(long_name="loss at the snapshot (LLC data)", units="loss"),
            "n_represented": k,
            "overcompleteness": (k / m).assign_attrs(long_name="represented features per hidden dimension k/m",
                                                      units="1"),
            "loss_curve": train["loss_curve"],
            "W_snapshot": W,
        },
        attrs={"n_features": config.n_features, "n_hidden": config.n_hidden, "data": config.data},
    )
    return out
