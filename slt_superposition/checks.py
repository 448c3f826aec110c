"""Bias checks stored with every LLC estimate, and the `trusted` flag.

For each instance of an estimate, short paired runs (the same chain keys, so the difference is
the setting's, not the noise's) at the estimate's own settings:

- **step-size check**: the estimate at eps / 3 for 3x the steps (equal sampler time) against
  the estimate at eps. Their relative difference measures the discretisation bias at eps; a
  linear bias c eps gives (llc(eps) - llc(eps/3)) = (2/3) c eps.
- **batch check**: the same run at eps with full batch against the minibatch (skipped, NaN,
  for full-batch estimates). SGLD's minibatch gradient noise adds to the injected noise and
  biases the estimate up at large n / batch.
- **curvature**: the top Hessian eigenvalue at w*, the quadratic-approximation LLC at the run's
  eps, localization and nbeta (`curvature.quadratic_llc`), and the curvature step-size bound.

`trusted` is true when no chain diverged, R-hat <= `max_rhat`, and both checks passed: each
resolved its tolerance (`step_tol` 5%, `batch_tol` 2%; standard error of the paired per-chain
difference at most the tolerance) and agrees within it plus 2 standard errors. Short check
runs on slowly mixing (singular) directions often cannot resolve 5%: such estimates are not
trusted, which says the check could not vouch for them, not that they are wrong. A disagreement between the estimate and
`llc_quadratic` is information about the model (singular or kinked directions), not a failed
check.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
import xarray as xr

from slt_superposition.curvature import curvature_batched, quadratic_llc, step_size_bound

PyTree = Any
CHECK_STEPS = 500  # chain length of the short paired runs (at most the estimate's own)
STEP_TOL = 0.05
BATCH_TOL = 0.02
MAX_RHAT = 1.1


def _paired(a: dict, b: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Relative difference (a - b) / |b| of the instance means and the SE of the paired
    per-chain difference, arrays `(instance,)`; and b's mean."""
    pa, pb = np.asarray(a["llc_per_chain"], np.float64), np.asarray(b["llc_per_chain"], np.float64)
    ok = ~(np.asarray(a["diverged"], bool) | np.asarray(b["diverged"], bool))
    diff = np.where(ok, pa - pb, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        count = ok.sum(axis=1)
        mean_b = np.where(count > 0, np.nansum(np.where(ok, pb, 0), axis=1) / np.maximum(count, 1), np.nan)
        mean_d = np.where(count > 0, np.nansum(np.nan_to_num(diff), axis=1) / np.maximum(count, 1), np.nan)
        centred = np.where(ok, diff - mean_d[:, None], 0.0)
        se = np.where(count > 1, np.sqrt((centred ** 2).sum(axis=1) / np.maximum(count - 1, 1) / count), np.nan)
    return mean_d / np.abs(mean_b), se / np.abs(mean_b), mean_b


def run_checks(sample: Callable, config, nbeta, *, n: int, curvature_inputs: tuple, data_batched: bool, key,
               check_steps: int = CHECK_STEPS) -> dict[str, np.ndarray]:
    """The checks for every instance; `sample(config, key) -> program outputs (instance-leading)`
    runs chains for a (per-instance) `SGLDConfig`. Returns `(instance,)` arrays."""
    steps = np.minimum(np.asarray(config.num_steps), check_steps)
    burnin = (steps * (np.asarray(config.num_burnin) / np.asarray(config.num_steps))).astype(np.int64)
    short = dataclasses.replace(config, num_steps=steps, num_burnin=burnin, trace_every=max(1, int(steps.max()) // 50))
    base = sample(short, key)
    finer = sample(dataclasses.replace(short, step_size=np.asarray(config.step_size) / 3, num_steps=3 * steps,
                                       num_burnin=3 * burnin, trace_every=3 * short.trace_every), key)
    step_rel, step_se, _ = _paired(base, finer)
    out = {"llc_check": np.nanmean(np.where(base["diverged"], np.nan, base["llc_per_chain"]), axis=1),
           "llc_step_check": np.nanmean(np.where(finer["diverged"], np.nan, finer["llc_per_chain"]), axis=1),
           "step_check_rel_diff": step_rel, "step_check_se": step_se}
    if config.batch_size is not None and config.batch_size < n:
        full = sample(dataclasses.replace(short, batch_size=None), key)
        batch_rel, batch_se, full_mean = _paired(base, full)
        out.update(llc_full_batch_check=full_mean, batch_check_rel_diff=batch_rel, batch_check_se=batch_se)
    else:
        nan = np.full_like(step_rel, np.nan)
        out.update(llc_full_batch_check=nan, batch_check_rel_diff=nan, batch_check_se=nan)
    loss_fn, params, data = curvature_inputs
    curvature = curvature_batched(loss_fn, params, data, data_batched=data_batched, key=jax.random.fold_in(key, 7))
    gamma = np.broadcast_to(np.asarray(config.localization, np.float64).reshape(-1) if np.ndim(config.localization)
                            else config.localization, steps.reshape(-1).shape)
    nb = np.broadcast_to(np.asarray(nbeta, np.float64).reshape(-1) if np.ndim(nbeta) else nbeta, gamma.shape)
    eps = np.broadcast_to(np.asarray(config.step_size, np.float64).reshape(-1) if np.ndim(config.step_size)
                          else config.step_size, gamma.shape)
    out["hessian_top_eigenvalue"] = curvature["top"]
    out["step_size_bound"] = step_size_bound(curvature["eigenvalues"], gamma, nb, top=curvature["top"])
    out["llc_quadratic"] = (quadratic_llc(curvature["eigenvalues"], eps, gamma, nb)
                            if curvature["eigenvalues"] is not None else np.full(gamma.shape, np.nan))
    return out


def within(rel: np.ndarray, se: np.ndarray, tol: float) -> np.ndarray:
    """The check passed: it resolved the tolerance (se <= tol, so a bias of a few tol would
    show) and |rel| <= tol + 2 se. A check not run (NaN rel) passes; an unresolved one fails:
    a short check run that cannot see a bias has not shown there is none."""
    rel, se = np.asarray(rel), np.asarray(se)
    resolved = np.isfinite(se) & (se <= tol)
    return np.where(np.isnan(rel), True, resolved & (np.abs(rel) <= tol + 2 * np.nan_to_num(se)))


def attach(ds: xr.Dataset, checks: dict[str, np.ndarray], *, step_tol: float = STEP_TOL,
           batch_tol: float = BATCH_TOL, max_rhat: float = MAX_RHAT) -> xr.Dataset:
    """`ds` (an `llc` dataset) with the checks as variables and the `trusted` flag."""
    inst = ds["llc_mean"].dims
    shape = ds["llc_mean"].shape
    described = {
        "llc_check": "LLC of the short check run at the estimate's step size", 
        "llc_step_check": "LLC of the paired run at step size / 3 for 3x the steps (equal sampler time)",
        "step_check_rel_diff": "(llc_check - llc_step_check) / |llc_step_check|: discretisation bias check",
        "step_check_se": "standard error of step_check_rel_diff (paired per-chain differences)",
        "llc_full_batch_check": "LLC of the paired full-batch run at the estimate's step size (NaN: full batch)",
        "batch_check_rel_diff": "(llc_check - llc_full_batch_check) / |llc_full_batch_check|: minibatch bias check",
        "batch_check_se": "standard error of batch_check_rel_diff (paired per-chain differences)",
        "hessian_top_eigenvalue": "largest eigenvalue of the Hessian of L_n at w*",
        "step_size_bound": "largest step size whose quadratic-approximation bias is at most 2%",
        "llc_quadratic": "quadratic-approximation LLC at the run's step size, localization and nbeta (curved "
                         "directions only; NaN: Hessian too large for a dense spectrum)",
    }
    out = ds.copy()
    for name, long_name in described.items():
        out[name] = xr.Variable(inst, np.reshape(checks[name], shape), {"long_name": long_name, "units": "1"})
    step_ok = within(out["step_check_rel_diff"].values, out["step_check_se"].values, step_tol)
    batch_ok = within(out["batch_check_rel_diff"].values, out["batch_check_se"].values, batch_tol)
    rhat_ok = ~(out["rhat"].values > max_rhat)
    finite = np.isfinite(out["llc_mean"].values)
    trusted = step_ok & batch_ok & rhat_ok & (out["n_diverged"].values == 0) & finite
    out["trusted"] = xr.Variable(inst, trusted, {
        "long_name": f"no divergent chain, R-hat <= {max_rhat}, step-size check within {step_tol:.0%} and batch check "
                     f"within {batch_tol:.0%} (each resolved: SE <= tolerance; + 2 SE)"})
    out.attrs.update(step_check_tol=step_tol, batch_check_tol=batch_tol, trusted_max_rhat=max_rhat)
    return out
