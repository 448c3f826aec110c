"""The response matrix of a trained TMS grid: how each feature's weights and loss answer each
feature's probability being raised (issue 12, item 4; the flagship's susceptibility section).

For every instance of a training grid (`toy_models.train.train_grid`, uniform importance), the
perturbations "feature j's probability x `factor`" (paired samples, `analysis.tms_susceptibility`)
and the observables "feature i's reconstruction loss" and "||W_i||": chi(j, i) from
`estimate_susceptibilities`, all instances in one program. `response_section(ds)` writes the
report section: the own-feature responses (i = j) against the cross responses (i != j), per
feature probability.

Not done here (the rest of item 4): retraining at q' from the same initialisation and comparing
the change in W, D_i and k with the prediction, and the test of the seed's conjecture against
the flagship's excess degeneracy.
"""

from __future__ import annotations

import jax
import numpy as np
import xarray as xr

from analysis.tms_susceptibility import feature_loss, feature_norm, paired_data, probability_delta, tms_data_loss
from slt_superposition import markdown
from slt_superposition.susceptibility import estimate_susceptibilities
from toy_models.train import GRID_DIMS, instance_inputs_for, params_from_dataset


def response_matrix(train: xr.Dataset, *, config, key, n_samples: int = 512, factor: float = 1.5) -> xr.Dataset:
    """chi of `loss_{i}` and `norm_{i}` under `p{j}_up` for every instance of `train`.

    Returns the `estimate_susceptibilities` dataset with the grid dims leading (perturbation
    `p{j}_up`, observable `loss_{i}` / `norm_{i}`). Observables and loss differences are
    evaluated on all `n_samples` samples at every step: keep it small."""
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
