"""The response matrix of a trained TMS grid: how each feature's weights and loss answer each
feature's probability being raised (issue 12, item 4; the flagship's susceptibility section).

For every instance of a training grid (`toy_models.train.train_grid`, uniform importance), the
perturbations "feature j's probability x `factor`" (paired samples, `analysis.tms_susceptibility`)
and the observables "feature i's reconstruction loss" and "||W_i||": chi(j, i) from
`estimate_susceptibilities`, all instances in one program. `response_section(ds)` writes the
report section: the own-feature responses (i = j) against the cross responses (i != j), per
feature probability.

The flagship's susceptibilities (`flagship_susceptibilities`) are read from the LLC's own chains:
the same refined w*, data, per-instance step size, chain length, localization, nbeta and key, so
the same noise and minibatches (the flagship samples them once, `flagship_susceptibility_chains`,
and passes them to `estimate_llc_batched(..., sampled=...)`), with the observables ||W_i|| and
D_i of every feature and the loss differences of "feature j's probability x factor" (factor <= 1, paired exactly with the
LLC's samples: `scaled_feature`) recorded at every step. `analysis.retrain_response` retrains at
q' for comparison, and `analysis.fragility_test` joins both with the flagship's regions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from analysis.measures import feature_dimensionality_array, feature_norms_array
from analysis.tms_susceptibility import (check_features, feature_loss, feature_norm, paired_data, probability_delta,
                                         require_sparse_uniform, tms_data_loss)
from slt_superposition import markdown
from slt_superposition.errors import InputError
from slt_superposition.susceptibility import estimate_susceptibilities
from toy_models.train import GRID_DIMS, config_from_dataset, instance_inputs_for, params_from_dataset


def response_matrix(train: xr.Dataset, *, config, key, n_samples: int = 512, factor: float = 1.5) -> xr.Dataset:
    """chi of `loss_{i}` and `norm_{i}` under `p{j}_up` for every instance of `train`.

    Returns the `estimate_susceptibilities` dataset with the grid dims leading (perturbation
    `p{j}_up`, observable `loss_{i}` / `norm_{i}`). Observables and loss differences are
    evaluated on all `n_samples` samples at every step: keep it small."""
    require_sparse_uniform(config_from_dataset(train), "the response matrix", plain_model=True)
    n_features = train.sizes["feature"]
    inputs = instance_inputs_for(train)
    data_key, chain_key = jax.random.split(key)
    features = tuple(range(n_features))

    @jax.jit
    def draw(seeds, fps):
        return jax.vmap(lambda s, p: paired_data(jax.random.fold_in(data_key, s), n_samples, n_features, p,
                                                 probability_features=features, factor=factor))(seeds, fps)

    data = draw(inputs["seed"], inputs["feature_probability"])
    params = params_from_dataset(train)
    grid = {d: train[d].values for d in GRID_DIMS}
    deltas = {f"p{j}_up": probability_delta(j) for j in features}
    observables = {**{f"loss_{i}": feature_loss(i) for i in features}, **{f"norm_{i}": feature_norm(i) for i in features}}
    return estimate_susceptibilities(tms_data_loss, params, data, delta_loss_fns=deltas, observables=observables,
                                     config=config, key=chain_key, instance_dims=grid)


def own_and_cross(ds: xr.Dataset, kind: str = "loss") -> tuple[xr.DataArray, xr.DataArray]:
    """The own-feature responses chi(p_i up, kind_i) `(*grid, feature)` and the mean |cross
    response| mean_{j != i} |chi(p_j up, kind_i)| `(*grid, feature)`."""
    n = ds.sizes["perturbation"]
    chi = ds["susceptibility"].sel(observable=[f"{kind}_{i}" for i in range(n)]).values  # (*grid, j, i)
    own = np.diagonal(chi, axis1=-2, axis2=-1)
    off = np.abs(chi) * (1 - np.eye(n))
    cross = off.sum(axis=-2) / (n - 1)
    dims = tuple(ds["llc_mean"].dims) + ("feature",)
    return xr.DataArray(own, dims=dims), xr.DataArray(cross, dims=dims)


def response_section(ds: xr.Dataset) -> str:
    """A markdown section: per feature probability, the median own response of each feature's
    loss and norm to its own probability being raised, and the median |cross response|."""
    own_loss, cross_loss = own_and_cross(ds, "loss")
    own_norm, cross_norm = own_and_cross(ds, "norm")
    rows = []
    for p in ds["feature_probability"].values:
        pick = lambda a: float(np.nanmedian(a.sel(feature_probability=p).values)) if "feature_probability" in a.dims \
            else float(np.nanmedian(a.values))
        for_p = lambda a: a.assign_coords({d: ds[d] for d in ds["llc_mean"].dims})
        rows.append((f"{p:g}", f"{pick(for_p(own_loss)):+.4f}", f"{pick(for_p(cross_loss)):.4f}",
                     f"{pick(for_p(own_norm)):+.4f}", f"{pick(for_p(cross_norm)):.4f}"))
    return ("## Susceptibilities: how each feature answers its own probability being raised\n\n"
            + markdown.table(("p", "median chi(p_i up, loss_i)", "median |chi(p_j up, loss_i)|, j != i",
                              "median chi(p_i up, ||W_i||)", "median |chi(p_j up, ||W_i||)|, j != i"), rows)
            + "\n")


def scaled_feature(x, feature: int, factor: float):
    """Sparse-uniform data `x (..., n, n_features)` (present iff u < p, value u / p) read under
    feature `feature`'s probability times `factor` <= 1: u < f p iff x < f, value u / (f p) = x / f.
    The same draws u, so q and q' are paired exactly, from x alone."""
    xj = x[..., feature]
    return x.at[..., feature].set(jnp.where(xj < factor, xj / factor, 0.0))


def _scaled_delta(loss_fn, feature: int, factor: float, eval_samples: int):
    def delta(params, data):
        head = {k: v[:eval_samples] for k, v in data.items()}
        return loss_fn(params, {**head, "x": scaled_feature(head["x"], feature, factor)}) - loss_fn(params, head)

    return delta


def flagship_susceptibilities(loss_fn, params, data, *, config, key, instance_dims: dict, features, factor: float,
                              eval_samples: int) -> xr.Dataset:
    """chi of ||W_i|| and D_i (every feature i) under "feature j's probability x `factor`" (j in
    `features`) for every instance, from chains with the LLC's inputs and settings (pass the
    LLC's `loss_fn`, refined params, data {"x", "importance"} with instance dims leading, its
    SGLDConfig and key: the chains are then the LLC's chains). Delta L is evaluated on each
    instance's first `eval_samples` samples (paired, `scaled_feature`).

    Returns `flagship_susceptibility_summary` of `flagship_susceptibility_chains`."""
    chains = flagship_susceptibility_chains(loss_fn, params, data, config=config, key=key,
                                            instance_dims=instance_dims, features=features, factor=factor,
                                            eval_samples=eval_samples)
    return flagship_susceptibility_summary(chains, instance_dims=instance_dims, features=features, factor=factor,
                                           eval_samples=eval_samples)


def flagship_susceptibility_chains(loss_fn, params, data, *, config, key, instance_dims: dict, features,
                                   factor: float, eval_samples: int) -> xr.Dataset:
    """The chains of `flagship_susceptibilities` with the observables ||W_i||, D_i and the loss
    differences recorded: the `estimate_susceptibilities` dataset (an `llc` dataset plus
    `susceptibility (grid..., perturbation, observable)` ...). With the LLC's inputs, config and
    key these are the LLC's own chains, so `estimate_llc_batched(..., sampled=this)` gives the
    LLC and its checks without sampling them again."""
    if not 0.0 < float(factor) <= 1.0:
        raise InputError(f"factor must be in (0, 1] (a lowered probability), got {factor}")
    n_features = int(np.shape(data["x"])[-1])
    features = check_features(features, n_features)
    observables = {**{f"norm_{i}": (lambda p, d, i=i: feature_norms_array(p["W"])[i]) for i in range(n_features)},
                   **{f"dim_{i}": (lambda p, d, i=i: feature_dimensionality_array(p["W"])[i])
                      for i in range(n_features)}}
    deltas = {f"p{int(j)}": _scaled_delta(loss_fn, int(j), factor, eval_samples) for j in features}
    return estimate_susceptibilities(loss_fn, params, data, delta_loss_fns=deltas, observables=observables,
                                     config=config, key=key, instance_dims=instance_dims)


def flagship_susceptibility_summary(ds: xr.Dataset, *, instance_dims: dict, features, factor: float,
                                    eval_samples: int) -> xr.Dataset:
    """`susceptibility_norm`, `susceptibility_dimensionality` and their `_se`, `(grid...,
    perturbed_feature, feature)`, `delta_loss_mean (grid..., perturbed_feature)`, and `replay_llc
    (grid...)` (the LLC estimate of the chains they were read from) of the
    `flagship_susceptibility_chains` dataset `ds`."""
    n_features = sum(1 for name in ds["observable"].values if str(name).startswith("norm_"))
    features = tuple(int(j) for j in features)
    grid = tuple(instance_dims)
    coords = {**{d: np.asarray(v) for d, v in instance_dims.items()}, "perturbed_feature": np.asarray(features),
              "feature": np.arange(n_features)}
    dims = grid + ("perturbed_feature", "feature")
    out = xr.Dataset(coords=coords)
    for kind, name in (("norm", "norm"), ("dim", "dimensionality")):
        pick = lambda var: ds[var].sel(observable=[f"{kind}_{i}" for i in range(n_features)]).values
        what = "||W_i||" if kind == "norm" else "D_i"
        out[f"susceptibility_{name}"] = (dims, pick("susceptibility"), {
            "long_name": f"chi = dE[{what}]/dh for the tilt by Delta L of the perturbed feature's probability "
                         f"x {factor:g}: the predicted change of {what} (first order)", "units": "1"})
        out[f"susceptibility_{name}_se"] = (dims, pick("susceptibility_se"), {
            "long_name": f"standard error of susceptibility_{name} over chains", "units": "1"})
    out["delta_loss_mean"] = (grid + ("perturbed_feature",), ds["delta_loss_mean"].values, {
        "long_name": "posterior mean of Delta L = L_q' - L_q (the perturbation's size)", "units": "1"})
    out["replay_llc"] = (grid, ds["llc_mean"].values, {
        "long_name": "LLC estimate of the chains the susceptibilities were read from (the LLC's own chains)",
        "units": "1"})
    out.attrs.update(factor=float(factor), eval_samples=int(eval_samples))
    return out
