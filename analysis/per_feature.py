"""The per-feature comparison: each feature's weight-basis numbers next to its activation-basis numbers.

For every instance of a trained TMS grid and every feature i, one dataset with dims
(feature_probability, importance_decay, seed, feature):

    llc_weight        weight-refined LLC of feature i's column (W_:,i, b_i), the rest held at w*
    llc_weight_se     its standard error over chains
    llc_weight_quadratic, block_hessian_rank   the block's quadratic prediction and Hessian rank
    llc_weight_rhat, llc_weight_n_diverged, llc_weight_checked   the checks a masked estimate
                      carries (R-hat, divergences; its step size is the block's curvature bound by
                      construction); not the paired step-size and batch checks of full LLCs
    llc_data          data-refined LLC: the LLC at the same w* of the loss on data where feature i
                      is always active (`conditional_feature_data`); w* need not be a
                      critical point of that loss, so it can be negative
    llc_data_se
    feature_norm, feature_dimensionality (D_i), interference, represented   (analysis.measures)
    llc, llc_se       the whole model's LLC (an all-True mask in the same program; context: the
                      column LLCs do not add up to it)
    data_gradient_norm  |grad L_i(w*)| of the data-refined loss: w* is not its critical point
    step_size, num_steps (per block), localization, nbeta

A column has m + 1 parameters; at a regular minimum where all of them are curved its
weight-refined LLC is (m + 1) / 2 (3/2 for m = 2, 3 for m = 5). The figure plots
2 llc_weight / (m + 1) against D_i, the fraction of the column's parameters that count.

Settings (`PerFeatureSettings`): SGLD at localization `localization`, nbeta = n / log n; each
block's step size is the largest whose quadratic-approximation bias is at most 2% for that block
(`curvature.step_size_bound` on the Hessian restricted to it, capped at `max_step_size`), its chain
length `sampler_time / step_size` clipped to [`min_steps`, `max_steps`] (a measured choice, not
`calibrate`: calibrating every block of every instance would cost more than the estimates).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax.flatten_util import ravel_pytree

from analysis.measures import feature_dimensionality, feature_norms, interference, represented_features
from analysis.tms_susceptibility import require_sparse_uniform
from slt_superposition.checks import MAX_RHAT
from slt_superposition.curvature import MAX_DENSE_PARAMETERS, quadratic_llc, step_size_bound
from slt_superposition.errors import require
from slt_superposition.llc import SGLDConfig, default_nbeta, estimate_llc_batched
from slt_superposition.refined import RANK_RTOL, block_spectra, estimate_refined_llc_batched, feature_masks
from toy_models.data import sparse_uniform
from toy_models.train import GRID_DIMS, config_from_dataset, instance_inputs_for, llc_inputs


@dataclasses.dataclass(frozen=True)
class PerFeatureSettings:
    """SGLD settings of the per-feature estimates (see the module doc)."""

    n_samples: int = 4096
    num_chains: int = 4
    localization: float = 1.0
    sampler_time: float = 2.0  # step size x steps aimed for (post burn-in 3/4 of it)
    min_steps: int = 1000
    max_steps: int = 8000
    max_step_size: float = 1e-3
    burnin_fraction: float = 0.25
    batch_size: int | None = 256  # None: full batch
    # data-refined chains (w* is not a critical point of their loss, so their number is a
    # transient, not an LLC: docs/experiments/per_feature_basis.md); None: as the weight-refined
    data_num_chains: int | None = None
    data_max_steps: int | None = None


def conditional_feature_data(key, n_samples: int, n_features: int, feature_probability, feature: int) -> jax.Array:
    """TMS data conditioned on feature `feature` being active: `toy_models.data.sparse_uniform` with
    that feature's probability set to 1 (the others keep `feature_probability`, a scalar or
    `(n_features,)`). The data set of the data-refined LLC "samples where feature i is active".
    Returns `(n_samples, n_features)`."""
    p = jnp.broadcast_to(jnp.asarray(feature_probability, jnp.float32), (n_features,)).at[feature].set(1.0)
    return sparse_uniform(key, n_samples, n_features, p)


def _steps(eps: np.ndarray, s: PerFeatureSettings) -> tuple[np.ndarray, np.ndarray]:
    steps = np.clip(np.ceil(s.sampler_time / eps), s.min_steps, s.max_steps).astype(np.int64)
    return steps, (steps * s.burnin_fraction).astype(np.int64)


def _flat_masks(masks: dict) -> np.ndarray:
    n = masks["b"].shape[0]
    return np.stack([np.concatenate([masks["W"][j].ravel(), masks["b"][j]]) for j in range(n)])


def per_feature_dataset(train: xr.Dataset, settings: PerFeatureSettings = PerFeatureSettings(), *, key) -> xr.Dataset:
    """The per-feature dataset of a trained grid `train` (`toy_models.train.train_grid`)."""
    s = settings
    # the data-refined chains condition `sparse_uniform` on each feature (`conditional_feature_data`)
    require_sparse_uniform(config_from_dataset(train), "the per-feature dataset's data-refined LLC")
    data_key, weight_key, data_refined_key, llc_key = jax.random.split(key, 4)
    loss_fn, params, data = llc_inputs(train, n_samples=s.n_samples, key=data_key)
    grid = {d: train[d].values for d in GRID_DIMS}
    sizes = tuple(len(v) for v in grid.values())
    n_inst = int(np.prod(sizes))
    n_features = train.sizes["feature"]
    n_hidden = train.sizes["hidden"]
    nbeta = default_nbeta(s.n_samples)
    masks = feature_masks(jax.tree_util.tree_map(lambda a: a[0], params))
    # one more mask, every parameter: the whole model's LLC in the same program
    masks = {k: np.concatenate([v, np.ones((1,) + v.shape[1:], bool)]) for k, v in masks.items()}
    flat = _flat_masks(masks)

    # each block's own step size and chain length, from its restricted Hessian (computed once per instance)
    spectra, top = block_spectra(loss_fn, params, data, flat, data_batched=True)  # (instance, mask, d)
    eps = np.minimum(step_size_bound(spectra, s.localization, nbeta), s.max_step_size)
    require(np.isfinite(eps).all(), f"per-feature step sizes come from each block's dense Hessian, which a model of "
                                    f"more than {MAX_DENSE_PARAMETERS} parameters (or a non-finite Hessian) does not "
                                    f"give")
    steps, burn = _steps(eps, s)
    shape = sizes + (n_features + 1,)
    block_config = SGLDConfig(step_size=eps.reshape(shape), localization=s.localization, nbeta=nbeta,
                              num_chains=s.num_chains, num_steps=steps.reshape(shape), num_burnin=burn.reshape(shape),
                              batch_size=s.batch_size, trace_every=max(1, s.max_steps // 100))
    blocks = estimate_refined_llc_batched(loss_fn, params, data, masks=masks, config=block_config, key=weight_key,
                                          instance_dims=grid, mask_coords=np.arange(n_features + 1),
                                          mask_dim="feature", curvature=False)
    quadratic = quadratic_llc(spectra, eps, s.localization, nbeta).reshape(shape)
    rank = (spectra > RANK_RTOL * np.abs(top)[:, None, None]).sum(axis=-1).reshape(shape)
    blocks["llc_quadratic"] = (blocks["llc_mean"].dims, quadratic)
    blocks["block_hessian_rank"] = (blocks["llc_mean"].dims, rank)
    blocks["checks_passed"] = (blocks["n_diverged"] == 0) & ~(blocks["rhat"] > MAX_RHAT) & np.isfinite(blocks["llc_mean"])
    weight = blocks.isel(feature=slice(0, n_features))
    whole = blocks.isel(feature=n_features)
    eps_full, steps_full, burn_full = (a.reshape(shape)[..., n_features] for a in (eps, steps, burn))

    # data-refined: instance x feature, each with data where that feature is always active
    inputs = instance_inputs_for(train)
    @jax.jit
    def conditional(seeds, fps, importance):
        def one(seed, fp, imp, i):
            x = conditional_feature_data(jax.random.fold_in(jax.random.fold_in(data_refined_key, seed), i),
                                         s.n_samples, n_features, fp, i)
            return {"x": x, "importance": jnp.broadcast_to(imp, x.shape)}

        per_feature = jax.vmap(one, in_axes=(None, None, None, 0))
        return jax.vmap(per_feature, in_axes=(0, 0, 0, None))(seeds, fps, importance, jnp.arange(n_features))

    flatten = lambda tree: jax.tree_util.tree_map(lambda a: a.reshape((n_inst * n_features,) + a.shape[2:]), tree)
    cond = flatten(conditional(inputs["seed"], inputs["feature_probability"], inputs["importance"]))
    repeated = flatten(jax.tree_util.tree_map(lambda a: jnp.repeat(a[:, None], n_features, axis=1), params))
    per_feature = lambda a: np.broadcast_to(a[..., None], sizes + (n_features,))
    data_max = s.max_steps if s.data_max_steps is None else s.data_max_steps
    data_steps = np.minimum(steps_full, data_max)
    data_burn = np.minimum(burn_full, (data_steps * s.burnin_fraction).astype(np.int64))
    data_config = SGLDConfig(step_size=per_feature(eps_full), localization=s.localization, nbeta=nbeta,
                             num_chains=s.num_chains if s.data_num_chains is None else s.data_num_chains,
                             num_steps=per_feature(data_steps), num_burnin=per_feature(data_burn),
                             batch_size=s.batch_size, trace_every=max(1, data_max // 100))
    data_refined = estimate_llc_batched(loss_fn, repeated, cond, config=data_config, key=data_refined_key,
                                        instance_dims={**grid, "feature": np.arange(n_features)}, checks=False)
    grad = jax.jit(jax.vmap(lambda p, x: ravel_pytree(jax.grad(loss_fn)(p, x))[0]))(repeated, cond)
    data_gradient = np.linalg.norm(np.asarray(grad, np.float64), axis=-1).reshape(sizes + (n_features,))

    W = train["W"]
    out = xr.Dataset(coords={**{d: train[d] for d in GRID_DIMS}, "feature": np.arange(n_features)})
    described = {
        "llc_weight": (weight["llc_mean"], "weight-refined LLC of the feature's column (W_:,i, b_i)"),
        "llc_weight_se": (weight["llc_se"], "standard error of llc_weight over chains"),
        "llc_weight_quadratic": (weight["llc_quadratic"], "quadratic prediction of the column block's LLC"),
        "block_hessian_rank": (weight["block_hessian_rank"], "rank of the Hessian restricted to the column block"),
        "step_size": (weight["step_size"], "step size of the column block's chains"),
        "num_steps": (weight["num_steps"], "chain length of the column block's chains"),
        "llc_weight_rhat": (weight["rhat"], "R-hat of the column block's chains"),
        "llc_weight_n_diverged": (weight["n_diverged"], "divergent chains of the column block"),
        "llc_weight_checked": (weight["checks_passed"], "the checks a masked estimate carries passed: no divergent "
                               f"chain and R-hat <= {MAX_RHAT} (its step size is its block's curvature bound by "
                               "construction; no paired step-size or batch check: docs/experiments/"
                               "per_feature_basis.md)"),
        "llc_data": (data_refined["llc_mean"], "data-refined LLC: the loss on data where the feature is always "
                                               "active, at the same w*"),
        "llc_data_se": (data_refined["llc_se"], "standard error of llc_data over chains"),
        "data_gradient_norm": (xr.DataArray(data_gradient, dims=(*GRID_DIMS, "feature")),
                               "|grad L_i(w*)|, the gradient of the data-refined loss at w* (0 at a critical point)"),
        "feature_norm": (feature_norms(W), "||W_i||"),
        "feature_dimensionality": (feature_dimensionality(W), "D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2"),
        "interference": (interference(W), "sum_{j != i} (W_i_hat . W_j)^2"),
        "represented": (represented_features(W), "||W_i|| above the represented threshold"),
        "llc": (whole["llc_mean"], "LLC of the whole model at the same settings"),
        "llc_se": (whole["llc_se"], "standard error of llc"),
    }
    for name, (value, long_name) in described.items():
        value = value.transpose(*[d for d in (*GRID_DIMS, "feature") if d in value.dims])
        out[name] = xr.Variable(value.dims, value.values, {"long_name": long_name})
    out["column_parameters"] = xr.Variable((), n_hidden + 1, {"long_name": "parameters per column block (m + 1)"})
    out.attrs.update(localization=s.localization, nbeta=nbeta, n_samples=s.n_samples, num_chains=s.num_chains,
                     data_num_chains=int(data_config.num_chains), data_max_steps=int(data_max),
                     sampler_time=s.sampler_time, n_instances=n_inst, n_features=n_features, n_hidden=n_hidden)
    return out
