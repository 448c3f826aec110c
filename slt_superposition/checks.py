"""Bias checks stored with every LLC estimate, and the `trusted` flag.

For each instance of an estimate, short paired runs at the estimate's own settings, each pair
driven by common random numbers so that the difference is the setting's, not the noise's:

- **step-size check**: the chain at eps against the chain at eps / 3 for 3x the steps (equal
  sampler time), coupled: one Brownian path drives both, and they share each minibatch
  (`slt_superposition.coupled`). Their relative difference measures the discretisation bias at
  eps; a linear bias c eps gives llc(eps) - llc(eps/3) = (2/3) c eps. Sharing the minibatch
  isolates the Langevin discretisation; the batch check measures the minibatch part.
- **batch check**: the same run at eps with full batch against the minibatch, with the same
  injected noise (skipped, NaN, for full-batch estimates). SGLD's minibatch gradient noise adds
  to the injected noise and biases the estimate up at large n / batch. Where the first run
  leaves the check unresolved but consistent with no bias, both arms run again for as many
  steps as its standard error says resolve it (`resolving_steps`: at most `MAX_CHECK_EXTENSION`
  times longer, and at most the estimate's own length); `batch_check_steps` records the length.
- **curvature**: the top Hessian eigenvalue at w*, the quadratic-approximation LLC at the run's
  eps, localization and nbeta (`curvature.quadratic_llc`), and the curvature step-size bound.
- **predicted minibatch bias**: what the rows' gradient spread at w* adds to the estimate at the
  run's batch and sampling on the quadratic approximation, relative to full batch
  (`minibatch_noise`): no chain, no noise; stored beside the measured batch check, not part of
  `trusted`.
- **curvature where the chains ended**: the Hessian at each chain's final position and the
  discretisation bias the quadratic approximation predicts there at the run's eps
  (`curvature.curvature_at_positions`; the largest over chains). No chain is run: it sees the
  estimate's own chains, however long, e.g. chains that drifted along flat directions to where
  the curvature across them is larger than at w* and eps too large for it.

A Metropolis-adjusted estimate (`SGLDConfig(metropolis=True)`) has no discretisation bias: its
step-size check is not run (NaN, which passes), `llc_quadratic` is the quadratic approximation's
value of the exact posterior (eps -> 0) and `step_bias_end` is NaN (not applicable); the
curvature at w* and at the chains' ends is still recorded.

The standard error of each paired difference comes from batch means of the per-step difference
(`DIFF_BLOCKS` post-burn-in blocks per chain, pooled over chains), at least the spread of the
chains' own mean differences (`diagnostics.difference_se`: a pair whose chains parted keeps its
offset, which pooled batches count as independent noise). A check with fewer than
`MIN_CHECK_DRAWS` post-burn-in steps is not resolved (its chains have barely left w*).

`trusted` is true when no chain diverged, R-hat <= `max_rhat`, both checks passed (each
resolved its tolerance, `step_tol` 5%, `batch_tol` 2%: standard error at most the tolerance,
and agrees within it plus 2 standard errors), and the bias predicted at the chains' ends is at
most `step_tol`. An unresolved check is a failed one: it has not
shown that there is no bias. A disagreement between the estimate and `llc_quadratic` is
information about the model (singular or kinked directions), not a failed check. The checks
are short: they see the bias of the stiff (curved) directions, which settles within a few
relaxation times; drift along flat directions over a long chain is the calibration's long check,
and what that drift did to the curvature the check at the chains' ends.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
import xarray as xr

from slt_superposition.coupled import DIFF_BLOCKS
from slt_superposition.curvature import curvature_at_positions, curvature_batched, quadratic_llc, step_size_bound
from slt_superposition.diagnostics import difference_se
from slt_superposition.minibatch_noise import NoiseSpectrum, curvature_with_noise, predicted_batch_bias
from slt_superposition.nan_rows import nan_max, nan_mean

PyTree = Any
CHECK_STEPS = 500  # chain length of the short paired runs (at most the estimate's own)
MIN_CHECK_DRAWS = 100  # post-burn-in steps below which a check is not resolved (its SE is NaN)
STEP_TOL = 0.05
BATCH_TOL = 0.02
MAX_RHAT = 1.1
MAX_CHECK_EXTENSION = 8  # an unresolved batch check runs again at most this many times longer
EXTENSION_MARGIN = 1.3  # ... for (SE / tol)^2 x this of its first length (SE falls as 1 / sqrt(steps))


def resolving_steps(steps: np.ndarray, rel: np.ndarray, se: np.ndarray, tol: float, cap: np.ndarray) -> np.ndarray:
    """`(instance,)` chain lengths for a second run of a paired check: where the first run of
    `steps` was unresolved (SE > `tol`) yet agrees with no bias (|rel| <= tol + 2 SE), the length
    at which its SE is expected to be `tol` / sqrt(`EXTENSION_MARGIN`) (SE ~ 1 / sqrt(steps)), at
    most `cap`; elsewhere `steps` (a check that resolved, or that found a bias, is not rerun)."""
    steps, rel, se = np.asarray(steps, np.int64), np.asarray(rel, np.float64), np.asarray(se, np.float64)
    with np.errstate(invalid="ignore"):
        extend = np.isfinite(rel) & np.isfinite(se) & (se > tol) & (np.abs(rel) <= tol + 2 * se)
        want = np.ceil(steps * np.square(np.nan_to_num(se) / tol) * EXTENSION_MARGIN)
    return np.where(extend, np.clip(want, steps, np.maximum(cap, steps)), steps).astype(np.int64)


def relative_difference(a: np.ndarray, b: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean a - mean b) / |mean b| over healthy chains, and the means of a and b, `(instance,)`."""
    mean_a, mean_b = nan_mean(np.where(ok, a, np.nan)), nan_mean(np.where(ok, b, np.nan))
    with np.errstate(invalid="ignore", divide="ignore"):
        # mean b = 0 (e.g. an instance whose loss is constant near w*): inf, or NaN when both are 0
        return (mean_a - mean_b) / np.abs(mean_b), mean_a, mean_b


def _like(values: np.ndarray, setting) -> Any:
    """`(instance,)` integer values in the shape of `SGLDConfig` setting `setting`: a scalar where
    the setting is one and the values are all equal, else its instance shape (or one flat axis)."""
    values = np.asarray(values, np.int64)
    if np.ndim(setting) == 0 and np.all(values == values[0]):
        return int(values[0])
    return values.reshape(np.shape(setting)) if np.size(setting) == values.size else values


def _paired_batch_check(sample: Callable, config, steps: np.ndarray, burnin_fraction: np.ndarray, nbeta: np.ndarray,
                        key) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The batch check's paired runs (same keys) of `steps` `(instance,)` with the minibatch and with
    full batch, burn-in `burnin_fraction` of them: (full-batch LLC, relative difference, its
    standard error), `(instance,)`. Each instance's trace holds 50 blocks of its own length (as its
    own call would: with one block length for all, a short check beside a long one had too few
    blocks for batch means, and its standard error depended on its neighbours)."""
    steps = np.asarray(steps, np.int64)
    burnin = (steps * burnin_fraction).astype(np.int64)
    every = np.maximum(1, steps // 50)
    short = dataclasses.replace(config, num_steps=_like(steps, config.num_steps),
                                num_burnin=_like(burnin, config.num_burnin), trace_every=_like(every, config.num_steps))
    base = sample(short, key)
    full = sample(dataclasses.replace(short, batch_size=None), key)
    ok = ~(np.asarray(base["diverged"], bool) | np.asarray(full["diverged"], bool))
    rel, _, full_mean = relative_difference(np.asarray(base["llc_per_chain"], np.float64),
                                            np.asarray(full["llc_per_chain"], np.float64), ok)
    diff = np.asarray(base["loss_trace"], np.float64) - np.asarray(full["loss_trace"], np.float64)
    starts = np.arange(diff.shape[-1])[None, :] * every.reshape(-1, 1)
    post = np.broadcast_to((starts >= burnin.reshape(-1, 1)) & (starts < steps.reshape(-1, 1)),
                           diff.shape[::2])  # (instance, block)
    se = nbeta * difference_se(diff, post, ok, DIFF_BLOCKS) / np.abs(full_mean)
    se = np.where((steps - burnin) < MIN_CHECK_DRAWS, np.nan, se)
    return full_mean, rel, np.where(ok.any(axis=-1), se, np.inf)  # no healthy pair: ran, showed nothing


def run_checks(sample: Callable, sample_pair: Callable, config, nbeta, *, n: int, curvature_inputs: tuple,
               data_batched: bool, key, final_positions: np.ndarray, check_steps: int = CHECK_STEPS,
               batch_tol: float = BATCH_TOL) -> dict[str, np.ndarray]:
    """The checks for every instance. `sample(config, key) -> program outputs (instance-leading)`
    runs chains for a (per-instance) `SGLDConfig`; `sample_pair(config, key)` the coupled eps /
    eps/3 pairs (`slt_superposition.coupled`); `final_positions (instance, chain, d)`: where the
    estimate's chains ended (NaN for a divergent chain). Returns `(instance,)` arrays."""
    steps = np.minimum(np.asarray(config.num_steps), check_steps)
    burnin_fraction = np.asarray(config.num_burnin) / np.asarray(config.num_steps)
    burnin = (steps * burnin_fraction).astype(np.int64)
    every = max(1, int(steps.max()) // 50)
    short = dataclasses.replace(config, num_steps=steps, num_burnin=burnin, trace_every=every)
    n_inst = final_positions.shape[0]
    # settings are scalars or per-instance arrays, each on its own: every one as `(instance,)`
    per_instance = lambda value: np.broadcast_to(np.asarray(value, np.float64).reshape(-1), (n_inst,))
    steps, burnin = per_instance(steps).astype(np.int64), per_instance(burnin).astype(np.int64)
    nb = per_instance(nbeta)
    if config.metropolis:  # exact at every step size: nothing for a step-size check to measure
        nan = np.full(n_inst, np.nan)
        out = {"llc_check": nan, "llc_step_check": nan, "step_check_rel_diff": nan, "step_check_se": nan}
    else:
        out = _step_size_check(sample_pair(short, key), steps - burnin)
    if config.batch_size is not None and config.batch_size < n:
        fraction = per_instance(burnin_fraction)
        full_mean, rel, se = _paired_batch_check(sample, config, steps, fraction, nb, key)
        cap = np.minimum(per_instance(config.num_steps), MAX_CHECK_EXTENSION * steps)
        longer = resolving_steps(steps, rel, se, batch_tol, cap)
        redo = longer > steps
        if redo.any():  # the others run one step (a config needs >= 1) and are not read
            again = _paired_batch_check(sample, config, np.where(redo, longer, 1), fraction, nb, key)
            full_mean, rel, se = (np.where(redo, b, a) for a, b in zip((full_mean, rel, se), again))
        out.update(llc_full_batch_check=full_mean, batch_check_rel_diff=rel,
                   batch_check_se=se, batch_check_steps=longer.astype(np.float64))
    else:
        nan = np.full(n_inst, np.nan)
        out.update(llc_full_batch_check=nan, batch_check_rel_diff=nan, batch_check_se=nan, batch_check_steps=nan)
    loss_fn, params, data = curvature_inputs
    minibatch = config.batch_size is not None and config.batch_size < n
    curvature = (curvature_with_noise if minibatch else curvature_batched)(
        loss_fn, params, data, data_batched=data_batched, key=jax.random.fold_in(key, 7))
    gamma, eps = per_instance(config.localization), per_instance(config.step_size)
    out["batch_bias_predicted"] = (
        predicted_batch_bias(NoiseSpectrum(curvature["eigenvalues"], curvature["gradient_variance"]), eps, gamma, nb,
                             config.batch_size, sampling=config.sampling, n=n)
        if curvature.get("gradient_variance") is not None else np.full(n_inst, np.nan))
    if config.metropolis:  # the exact posterior's quadratic approximation; no Euler bias anywhere
        eps = np.zeros_like(eps)
    out["hessian_top_eigenvalue"] = curvature["top"]
    out["step_size_bound"] = step_size_bound(curvature["eigenvalues"], gamma, nb, top=curvature["top"])
    out["llc_quadratic"] = (quadratic_llc(curvature["eigenvalues"], eps, gamma, nb)
                            if curvature["eigenvalues"] is not None else np.full(gamma.shape, np.nan))
    end = curvature_at_positions(loss_fn, params, data, final_positions, data_batched=data_batched, step_size=eps,
                                 localization=gamma, nbeta=nb, key=jax.random.fold_in(key, 8))
    out["hessian_top_eigenvalue_end"] = nan_max(end["top"])  # NaN where every chain diverged
    out["step_bias_end"] = np.full(n_inst, np.nan) if config.metropolis else nan_max(end["bias"])
    return out


def _step_size_check(pair: dict, draws: np.ndarray) -> dict[str, np.ndarray]:
    """The step-size check's values from the coupled eps / (eps / 3) runs `pair` (`coupled`), `(instance,)`;
    `draws`: each instance's post-burn-in steps."""
    too_short = draws < MIN_CHECK_DRAWS
    pair_ok = ~np.asarray(pair["diverged"], bool)
    step_rel, coarse, fine = relative_difference(np.asarray(pair["llc_coarse"], np.float64),
                                                 np.asarray(pair["llc_fine"], np.float64), pair_ok)
    blocks = np.asarray(pair["diff_blocks"], np.float64)  # already one value per batch
    step_se = np.where(too_short, np.nan, difference_se(blocks, np.ones(blocks.shape[::2], bool), pair_ok,
                                                        DIFF_BLOCKS) / np.abs(fine))
    step_se = np.where(pair_ok.any(axis=-1), step_se, np.inf)  # every pair diverged: ran, showed nothing
    return {"llc_check": coarse, "llc_step_check": fine, "step_check_rel_diff": step_rel, "step_check_se": step_se}


def within(rel: np.ndarray, se: np.ndarray, tol: float, noise_sd: float = 2.0) -> np.ndarray:
    """The check passed: it resolved the tolerance (se <= tol, so a bias of a few tol would
    show) and |rel| <= tol + `noise_sd` se. A check not run (NaN rel and NaN se) passes; an
    unresolved one fails: a short check run that cannot see a bias has not shown there is none.
    A check that ran with every pair divergent stores NaN rel and an infinite se: it fails. (The
    calibration's chain-length rule is this rule on the change between two lengths.)"""
    rel, se = np.asarray(rel), np.asarray(se)
    resolved = np.isfinite(se) & (se <= tol)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN rel or an infinite se: not resolved anyway
        passed = resolved & (np.abs(rel) <= tol + noise_sd * np.where(resolved, se, 0.0))
    return np.where(np.isnan(rel) & np.isnan(se), True, passed)


def attach(ds: xr.Dataset, checks: dict[str, np.ndarray], *, step_tol: float = STEP_TOL,
           batch_tol: float = BATCH_TOL, max_rhat: float = MAX_RHAT) -> xr.Dataset:
    """`ds` (an `llc` dataset) with the checks as variables and the `trusted` flag."""
    inst = ds["llc_mean"].dims
    shape = ds["llc_mean"].shape
    described = {
        "llc_check": "LLC of the short coupled check run at the estimate's step size",
        "llc_step_check": "LLC of the coupled run at step size / 3 for 3x the steps (equal sampler time)",
        "step_check_rel_diff": "(llc_check - llc_step_check) / |llc_step_check|: discretisation bias check",
        "step_check_se": "standard error of step_check_rel_diff (batch means of the coupled difference, at least "
                         "the spread of the pairs' means; inf: every pair diverged)",
        "llc_full_batch_check": "LLC of the paired full-batch run at the estimate's step size (NaN: full batch)",
        "batch_check_rel_diff": "(llc_check - llc_full_batch_check) / |llc_full_batch_check|: minibatch bias check",
        "batch_check_se": "standard error of batch_check_rel_diff (batch means of the paired difference, at least "
                          "the spread of the pairs' means; inf: every pair diverged)",
        "batch_check_steps": "chain length of the batch check's paired runs (NaN: full batch)",
        "batch_bias_predicted": "relative minibatch bias against full batch that the quadratic approximation predicts "
                                "at the run's settings from the rows' gradient spread at w* (not part of trusted; "
                                "NaN: full batch or no dense Hessian)",
        "hessian_top_eigenvalue": "largest eigenvalue of the Hessian of L_n at w*",
        "step_size_bound": "largest step size whose quadratic-approximation bias is at most 2%",
        "llc_quadratic": "quadratic-approximation LLC at the run's step size, localization and nbeta (curved "
                         "directions only; NaN: Hessian too large for a dense spectrum)",
        "hessian_top_eigenvalue_end": "largest eigenvalue of the Hessian of L_n where the estimate's chains ended "
                                      "(the largest over non-divergent chains)",
        "step_bias_end": "relative discretisation bias the quadratic approximation predicts at the run's step size "
                         "where the chains ended (the largest over non-divergent chains; inf: unstable there)",
    }
    out = ds.copy()
    for name, long_name in described.items():
        out[name] = xr.Variable(inst, np.reshape(checks[name], shape), {"long_name": long_name, "units": "1"})
    step_ok = within(out["step_check_rel_diff"].values, out["step_check_se"].values, step_tol)
    batch_ok = within(out["batch_check_rel_diff"].values, out["batch_check_se"].values, batch_tol)
    rhat_ok = ~(out["rhat"].values > max_rhat)
    end_ok = ~(out["step_bias_end"].values > step_tol)
    finite = np.isfinite(out["llc_mean"].values)
    trusted = step_ok & batch_ok & rhat_ok & end_ok & (out["n_diverged"].values == 0) & finite
    out["trusted"] = xr.Variable(inst, trusted, {
        "long_name": f"no divergent chain, R-hat <= {max_rhat}, step-size check within {step_tol:.0%} and batch check "
                     f"within {batch_tol:.0%} (each resolved: SE <= tolerance; + 2 SE), predicted bias at the chains' "
                     f"ends at most {step_tol:.0%}"})
    out.attrs.update(step_check_tol=step_tol, batch_check_tol=batch_tol, trusted_max_rhat=max_rhat)
    return out
