"""The weight basis against the activation basis, on the same trained models.

One `compare` dataset per training grid, with the grid dims of the `train` dataset
(`feature_probability`, `importance_decay`, `seed`) and both sides per instance:

    weight side      llc_mean, llc_std, n_parameters d, d_eff = 2 llc, d_eff_fraction = 2 llc / d,
                     hessian_rank d1, gn_rank, the bound d1/2 <= llc <= d1/2 + (d - d1)/4
    activation side  n_represented k, overcompleteness k/m, features_per_dimension 1/D*,
                     mean D_i and interference over represented features, (SAE) recovered
                     overcompleteness
    budget           n_parameters d = orbit_dimension + dead_flat_parameters + 2 llc
                     + excess_degeneracy (with its standard error): the degeneracy that the
                     rotation symmetry and the dead features' flat regions do not explain
    relations        weights_undercomplete (excess_degeneracy above two of its standard
                     errors), activations_overcomplete (k > m), both at once
    fragility        finite-difference sensitivity of llc and k/m to log feature probability,
                     and whether the geometry changes between neighbouring grid points

Fragility is measured between neighbouring feature probabilities with the same seed and
importance: `train_grid` gives those instances the same initial weights and the same uniform
draws (common random numbers), so the difference isolates the change of the data distribution.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import xarray as xr

from analysis.measures import (
    REPRESENTED_THRESHOLD,
    dimensions_per_feature,
    feature_dimensionality,
    interference,
    n_represented,
    overcompleteness,
    represented_features,
)
from analysis.weight_basis import llc_bound_check
from slt_superposition.checks import BATCH_TOL, MAX_RHAT, STEP_TOL, within

GEOMETRY_TOLERANCE = 0.05
"""Two instances have the same geometry when they represent the same number of features and
their sorted feature dimensionalities D_i differ by at most this much everywhere."""


def _attrs(long_name: str, units: str = "1") -> dict[str, str]:
    return {"long_name": long_name, "units": units}


def activation_side(train: xr.Dataset, threshold: float = REPRESENTED_THRESHOLD) -> xr.Dataset:
    """Activation-basis measures per instance of a `train` dataset (grid dims only)."""
    W = train["W"]
    represented = represented_features(W, threshold)
    k = n_represented(W, threshold)
    D_i = feature_dimensionality(W)
    mean_over_represented = lambda x: x.where(represented).mean("feature")
    return xr.Dataset(
        {
            "n_represented": k.assign_attrs(_attrs(f"represented features k (||W_i|| > {threshold})")),
            "overcompleteness": overcompleteness(W, threshold).assign_attrs(
                _attrs("represented features per hidden dimension k/m")),
            "features_per_dimension": (1 / dimensions_per_feature(W)).assign_attrs(
                _attrs("features per dimension 1/D* = ||W||_F^2 / m")
            ),
            "mean_feature_dimensionality": mean_over_represented(D_i).assign_attrs(
                _attrs("mean D_i over represented features")
            ),
            "mean_interference": mean_over_represented(interference(W)).assign_attrs(
                _attrs("mean interference sum_{j!=i} (W_i_hat . W_j)^2 over represented features")
            ),
            "sorted_feature_dimensionality": xr.apply_ufunc(
                lambda x: -np.sort(-x, axis=-1), D_i, input_core_dims=[["feature"]],
                output_core_dims=[["rank_of_feature"]],
            ).assign_attrs(_attrs("D_i sorted in decreasing order (the geometry's signature)")),
        }
    ).assign_coords(rank_of_feature=np.arange(W.sizes["feature"]))


def weight_side(llc: xr.Dataset, n_parameters: int, basis: xr.Dataset | None = None) -> xr.Dataset:
    """Weight-basis measures per instance from an `llc` dataset and (optionally) the
    `weight_basis_measures` dataset of the same instances (grid dims, no `eigen`)."""
    se = llc["llc_se"]
    out = xr.Dataset(
        {
            "llc_mean": llc["llc_mean"],
            "llc_std": llc["llc_std"],
            "llc_standard_error": se.assign_attrs(_attrs("standard error of llc_mean (std over chains / sqrt(chains))")),
            "n_parameters": xr.DataArray(n_parameters, attrs=_attrs("parameter count d")),
            "d_eff": (2 * llc["llc_mean"]).assign_attrs(_attrs("effective parameter count 2 llc")),
            "d_eff_fraction": (2 * llc["llc_mean"] / n_parameters).assign_attrs(
                _attrs("effective fraction of the weight basis 2 llc / d")
            ),
            "mala_acceptance": llc["mala_acceptance"].mean("chain").assign_attrs(
                _attrs("MALA acceptance proxy, mean over chains")
            ),
            "llc_n_diverged": llc["n_diverged"],
        }
    )
    if basis is not None:
        out["hessian_rank"] = basis["hessian_rank"]
        out["gn_rank"] = basis["gn_rank"]
        out["grad_norm"] = basis["grad_norm"]
        bound = llc_bound_check(llc["llc_mean"], basis["hessian_rank"], n_parameters, llc_std=se)
        out = out.merge(bound)
    return out


def orbit_dimension(W: xr.DataArray, model: str = "tms", tol: float = 1e-6) -> xr.DataArray:
    """Dimension of the exactly flat symmetry orbit through W: (..., hidden, feature) -> (...).

    The TMS loss depends on W only through W^T W, so W -> R W (R in O(m)) is a symmetry; its
    orbit through a W of rank r has dimension m(m-1)/2 - (m-r)(m-r-1)/2 (the stabiliser is
    O(m - r)). The hidden-ReLU model has no continuous symmetry (0)."""
    m = W.sizes["hidden"]
    if model == "tms_relu_hidden":
        return xr.zeros_like(W.isel(hidden=0, feature=0), dtype=int).assign_attrs(_attrs("symmetry orbit dimension"))
    sv = np.linalg.svd(W.transpose(..., "hidden", "feature").values, compute_uv=False)
    rank = (sv > tol * np.maximum(sv[..., :1], 1e-30)).sum(-1)
    free = m - rank
    orbit = m * (m - 1) // 2 - free * (free - 1) // 2
    return xr.DataArray(orbit, dims=[d for d in W.dims if d not in ("hidden", "feature")],
                        coords={d: W[d] for d in W.dims if d not in ("hidden", "feature") and d in W.coords},
                        attrs=_attrs("dimension of the rotation orbit m(m-1)/2 - (m-r)(m-r-1)/2, r = rank W"))


ONE_FEATURE_AT_A_TIME = ("high_sparsity_limit",)  # data kinds (`toy_models.data.GENERATORS`) without co-active features


def dead_flat_parameters(W: xr.DataArray, b: xr.DataArray, data: str | None = None) -> xr.DataArray:
    """Parameters of dead features in a flat region, (..., hidden, feature), (..., feature) -> (...).

    `data`: the training data's kind (a train dataset's `data` attr). With one feature active at a
    time (`ONE_FEATURE_AT_A_TIME`: inputs x = u e_k, u in [0, 1]), a column's bias is flat when its
    output stays off on every input, max(0, max_k W_i . W_k) + b_i <= 0; its m weights too when
    they reach no other output: on input e_i every other output j is off (max(0, W_j . W_i) + b_j
    <= 0) or has W_j = 0. A live output with a positive bias (on, on input e_i) makes the weights of
    every dead column curved (its value moves with W_j . W_i). With features active together
    (every other kind, and None), a dead column's weights enter the other features' outputs
    whenever feature i is active beside them (x_i W_j . W_i), so they are curved, however weakly;
    only the bias is flat: 1 per column whose output stays off for every x in [0, 1]^n,
    sum_j max(0, W_i . W_j) + b_i <= 0."""
    m = W.sizes["hidden"]
    gram = xr.dot(W, W.rename(feature="other"), dim="hidden")  # (..., feature, other)
    if data in ONE_FEATURE_AT_A_TIME:
        off = gram.clip(min=0).max("other") + b <= 0  # output i off on every input u e_k
        others = (gram.clip(min=0) + b.rename(feature="other") <= 0) | ((W**2).sum("hidden") == 0).rename(
            feature="other")  # output j off on input e_i, or W_j = 0
        itself = xr.DataArray(np.eye(W.sizes["feature"], dtype=bool), dims=("feature", "other"))
        quiet = off & (others | itself).all("other")
        return (off.sum("feature") + m * quiet.sum("feature")).assign_attrs(
            _attrs("parameters of dead features in a flat region (one feature active at a time: the bias of each "
                   "column whose output stays off on every input, and its m weights where every other output is "
                   "off on its input or has zero weights)"))
    flat = gram.clip(min=0).sum("other") + b <= 0
    return flat.sum("feature").assign_attrs(
        _attrs("parameters of dead features in a flat region (the bias of each column with sum_j max(0, W_i . W_j) "
               "+ b_i <= 0; features active together make its weights curved)"))


def degeneracy_budget(train: xr.Dataset, weights: xr.Dataset) -> xr.Dataset:
    """d = orbit_dimension + dead_flat_parameters + 2 llc + excess_degeneracy, per instance.

    `train`: W and b; `weights`: `weight_side` output (llc_mean, llc_standard_error,
    n_parameters). `excess_degeneracy` is the degeneracy beyond the symmetry orbit and the dead
    features' flat regions (0 for a regular minimum modulo both; negative where 2 llc exceeds
    the symmetry bound d - orbit - dead_flat); its standard error is 2 SE(llc).
    `out_of_range`: 2 llc above that bound, or below 0, by more than 2 SE."""
    orbit = orbit_dimension(train["W"], train.attrs.get("model", "tms"))
    dead = dead_flat_parameters(train["W"], train["b"], train.attrs.get("data"))
    two_llc = 2 * weights["llc_mean"]
    excess = weights["n_parameters"] - orbit - dead - two_llc
    se = 2 * weights["llc_standard_error"]
    out_of_range = (excess < -2 * se) | (two_llc < -2 * se)
    return xr.Dataset({
        "orbit_dimension": orbit,
        "dead_flat_parameters": dead,
        "symmetry_bound": (weights["n_parameters"] - orbit - dead).assign_attrs(
            _attrs("bound on 2 llc where the loss is C^2: d - orbit_dimension - dead_flat_parameters")),
        "excess_degeneracy": excess.assign_attrs(
            _attrs("d - orbit_dimension - dead_flat_parameters - 2 llc: degeneracy beyond symmetry and dead features")),
        "excess_degeneracy_se": se.assign_attrs(_attrs("standard error of excess_degeneracy (2 SE of llc)")),
        "budget_out_of_range": out_of_range.assign_attrs(
            _attrs("2 llc above the symmetry bound, or below 0, by more than 2 SE")),
    })


def above_symmetry_bound(ds: xr.Dataset) -> xr.DataArray:
    """2 llc above the symmetry bound by more than 2 SE (`excess_degeneracy` below -2 of its SEs):
    the upper half of `budget_out_of_range`."""
    return ds["excess_degeneracy"] < -2 * ds["excess_degeneracy_se"]


OUT_OF_RANGE_CAUSES = ("step size", "batch", "not a minimum", "unsettled", "finite n", "lower loss found")
MINIMUM_GRAD_TOL = 1e-3  # ||grad L_n|| above this at the LLC's w*: not a critical point
NEGATIVE_CURVATURE_RTOL = 1e-3  # a Hessian eigenvalue below -rtol x the largest: a saddle


def out_of_range_cause(ds: xr.Dataset) -> xr.DataArray:
    """Why an out-of-range estimate (`budget_out_of_range`) is out of range, the first that
    applies of `OUT_OF_RANGE_CAUSES`: its stored step-size check failed, or the bias predicted
    where its chains ended is above the tolerance (`llc_step_bias_end`, where stored): "step size"; its batch
    check failed ("batch"); w* is not a minimum of L_n (||grad L_n|| above `MINIMUM_GRAD_TOL`
    or a Hessian eigenvalue below -`NEGATIVE_CURVATURE_RTOL` x the largest); above the symmetry
    bound with all of those passed but a calibration whose chain-length rule did not settle
    (`llc_calibration_converged`, where the dataset has it): "unsettled", since chains too short
    for the sampler-time floor can read above their settled value (the development part at
    n = 16,384: 9.58-10.42 at 4000 steps against 8.61-9.44 settled, docs/experiments/
    weights_vs_activations.md); above with all of those passed and settled: "finite n", the excess
    of trained TMS at finite n that `reproduce tms-llc-vs-n` measures shrinking with n
    (docs/experiments/tms_llc_vs_n.md), here by elimination; below 0 with all of those passed
    (settled or not): "lower loss found", the chains' own
    evidence that w* is not a minimum at the posterior's scale (their mean loss is below L_n(w*)
    by more than 2 SE although the gradient is small and the Hessian has no negative curvature: a
    degenerate saddle, e.g. a partly represented feature the chains grow). "" for instances in
    range. Needs the flagship's check variables (`llc_step_check_rel_diff`, `llc_step_check_se`,
    `llc_batch_check_*`), `grad_norm_refined`, `hessian_eigenvalues` and the budget
    (`excess_degeneracy`, `excess_degeneracy_se`); returns an object array with the instance dims."""
    inst = ds["llc_mean"].dims
    ds = ds.transpose(*inst, ...)  # every variable's instance dims in llc_mean's order before reading .values
    step_ok = within(ds["llc_step_check_rel_diff"].values, ds["llc_step_check_se"].values, STEP_TOL) & ~_end_biased(ds)
    batch_ok = within(ds["llc_batch_check_rel_diff"].values, ds["llc_batch_check_se"].values, BATCH_TOL)
    eig = ds["hessian_eigenvalues"]
    eig_dim = [d for d in eig.dims if d not in inst]
    top = eig.max(eig_dim)
    saddle = (eig.min(eig_dim) < -NEGATIVE_CURVATURE_RTOL * top).transpose(*inst).values
    minimum = ~saddle & ~(ds["grad_norm_refined"].values > MINIMUM_GRAD_TOL)
    above = above_symmetry_bound(ds).transpose(*inst).values
    settled = (ds["llc_calibration_converged"].values.astype(bool) if "llc_calibration_converged" in ds
               else np.ones(above.shape, bool))
    cause = np.select([~step_ok, ~batch_ok, ~minimum, above & ~settled, above], list(OUT_OF_RANGE_CAUSES[:5]),
                      OUT_OF_RANGE_CAUSES[5])
    cause = np.where(ds["budget_out_of_range"].values.astype(bool), cause, "").astype(object)
    return xr.DataArray(cause, dims=ds["llc_mean"].dims, coords=ds["llc_mean"].coords,
                        attrs={"long_name": "why the estimate is out of range: " + ", ".join(OUT_OF_RANGE_CAUSES)
                               + " (first that applies; '' in range)"})


def _end_biased(ds: xr.Dataset) -> np.ndarray:
    """The bias predicted at the chains' ends is above `STEP_TOL` (`llc_step_bias_end`; False for
    datasets written before it was stored)."""
    if "llc_step_bias_end" not in ds:
        return np.zeros(ds["llc_mean"].shape, bool)
    return ds["llc_step_bias_end"].values > STEP_TOL


UNTRUSTED_REASONS = ("R-hat", "step size", "curvature at the chains' ends", "batch", "divergence",
                     "calibration unsettled")


def untrusted_reasons(ds: xr.Dataset) -> dict[str, int]:
    """How many estimates fail each part of `llc_trusted` (`UNTRUSTED_REASONS`; an estimate may
    fail several, so the counts can add up to more than the untrusted ones): R-hat above
    `MAX_RHAT`, the step-size or batch check not passed (`checks.within`: unresolved counts as
    failed), a discretisation bias above `STEP_TOL` predicted where the chains ended, a divergent
    chain, the calibration's chain-length rule never settled. Needs the flagship's `llc_rhat`,
    `llc_step_check_*`, `llc_batch_check_*`, `llc_n_diverged` and `llc_calibration_converged`
    (and `llc_step_bias_end` where stored)."""
    fails = {
        "R-hat": ds["llc_rhat"].values > MAX_RHAT,
        "step size": ~within(ds["llc_step_check_rel_diff"].values, ds["llc_step_check_se"].values, STEP_TOL),
        "curvature at the chains' ends": _end_biased(ds),
        "batch": ~within(ds["llc_batch_check_rel_diff"].values, ds["llc_batch_check_se"].values, BATCH_TOL),
        "divergence": ds["llc_n_diverged"].values > 0,
        "calibration unsettled": ~ds["llc_calibration_converged"].values.astype(bool),
    }
    return {reason: int(np.sum(fails[reason])) for reason in UNTRUSTED_REASONS}


def relations(ds: xr.Dataset) -> xr.Dataset:
    """The region where the weights are undercomplete and the activations overcomplete.

    Undercomplete weights: `excess_degeneracy` above two of its standard errors, i.e. more
    degeneracy than the rotation orbit and the dead features' flat regions account for (2 llc
    < d holds for every TMS because of those two alone). Datasets without the budget fall back
    to d_eff = 2 llc below d by more than two of its standard errors."""
    m = ds.attrs["n_hidden"]
    if "excess_degeneracy" in ds:
        under = ds["excess_degeneracy"] > 2 * ds["excess_degeneracy_se"]
        meaning = "excess_degeneracy above two of its standard errors (degeneracy beyond symmetry and dead features)"
    else:
        under = (ds["d_eff"] + 4 * ds["llc_standard_error"]) < ds["n_parameters"]
        meaning = "d_eff = 2 llc below the parameter count d by more than two of its standard errors"
    over = ds["n_represented"] > m
    return xr.Dataset(
        {
            "weights_undercomplete": under.assign_attrs(_attrs(meaning)),
            "activations_overcomplete": over.assign_attrs(_attrs("more represented features than neurons (k > m)")),
            "undercomplete_weights_overcomplete_activations": (under & over).assign_attrs(
                _attrs("both at once: an undercomplete weight basis and an overcomplete activation basis")
            ),
        }
    )


def _log_gradient(da: xr.DataArray, dim: str) -> xr.DataArray:
    """d da / d log(dim) by centred differences (one-sided at the ends), along `dim`."""
    log_x = np.log(da[dim].values.astype(float))
    axis = da.get_axis_num(dim)
    values = np.gradient(da.values.astype(float), log_x, axis=axis) if da.sizes[dim] > 1 else np.zeros(da.shape)
    return da.copy(data=values)


def fragility(ds: xr.Dataset, dim: str = "feature_probability", tolerance: float = GEOMETRY_TOLERANCE) -> xr.Dataset:
    """Finite-difference sensitivity of llc and k/m to log(feature probability), per instance.

    `geometry_changes` is True where an instance's geometry (k and the sorted D_i, within
    `tolerance`) differs from that of its neighbour at the next feature probability (same seed
    and importance). `dim` must be sorted; differences are taken in log(dim).
    """
    order = ds[dim]
    ds = ds.sortby(dim)
    signature = ds["sorted_feature_dimensionality"]
    nxt = signature.shift({dim: -1})
    differs = (np.abs(signature - nxt) > tolerance).any("rank_of_feature") | (
        ds["n_represented"] != ds["n_represented"].shift({dim: -1})
    )
    differs = differs.where(nxt.notnull().all("rank_of_feature"), False)
    out = xr.Dataset(
        {
            "dllc_dlogp": _log_gradient(ds["llc_mean"], dim).assign_attrs(
                _attrs("sensitivity of llc to log feature probability d llc / d log p")
            ),
            "dovercompleteness_dlogp": _log_gradient(ds["overcompleteness"], dim).assign_attrs(
                _attrs("sensitivity of k/m to log feature probability d(k/m) / d log p")
            ),
            "geometry_changes": differs.astype(bool).assign_attrs(
                _attrs(f"geometry (k, sorted D_i within {tolerance}) differs at the next feature probability")
            ),
        }
    )
    return out.reindex({dim: order})


def compare(train: xr.Dataset, llc: xr.Dataset, basis: xr.Dataset | None = None,
            sae: xr.Dataset | None = None) -> xr.Dataset:
    """Join both sides of one training grid into one dataset with relations and fragility.

    `train`: a `train` dataset; `llc`: its `llc` dataset (same grid dims); `basis`: the
    `weight_basis_measures` of the same instances; `sae`: per-instance SAE results with a
    `recovered_overcompleteness` variable (grid dims, possibly a subset of seeds).
    """
    n, m = train.sizes["feature"], train.sizes["hidden"]
    n_parameters = m * n + n
    act = activation_side(train)
    weights = weight_side(llc, n_parameters, basis)
    parts = [act, weights, train[["loss"]]]
    if "b" in train:
        parts.append(degeneracy_budget(train, weights))
    ds = xr.merge(parts, compat="override", join="outer", combine_attrs="override")
    ds.attrs = {}
    ds.attrs.update({"n_features": n, "n_hidden": m, "model": train.attrs.get("model", "tms")})
    ds = ds.merge(relations(ds))
    ds = ds.merge(fragility(ds))
    if sae is not None:
        ds = ds.merge(sae, compat="override", join="left", combine_attrs="drop_conflicts")
    return ds


FLAGSHIP_DATASET = "weights_vs_activations.nc"  # the joined dataset a finished flagship run writes in its folder


def flagship_dataset_path(path: str | os.PathLike) -> Path:
    """`path` itself if it is a file, else the flagship dataset in the run's folder `path`;
    `SystemExit` with one line ("no dataset at ...") when neither exists (command-line readers)."""
    path = Path(path)
    path = path / FLAGSHIP_DATASET if path.is_dir() else path
    if not path.is_file():
        raise SystemExit(f"no dataset at {path}")
    return path


def join_models(parts: list[xr.Dataset]) -> xr.Dataset:
    """Stack the flagship's per-model datasets along `model` (per-model attrs go into a JSON attr)."""
    per_model = {str(p["model"].values[0]): {k: v for k, v in p.attrs.items() if k in ("calibration",)} for p in parts}
    # model labels as Python strings: concat kept the first part's fixed width ('<U5') and cut "n20_m5" to "n20_m"
    parts = [p.assign_coords(model=p["model"].values.astype(object)) for p in parts]
    stacked = xr.concat([p.drop_attrs(deep=False) for p in parts], "model", join="outer", fill_value=np.nan,
                        coords="different", compat="equals")
    stacked.attrs["per_model"] = json.dumps(per_model)
    return stacked
