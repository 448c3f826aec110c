"""Calibration: choose SGLD step size and chain length for a model and its data.

The devinterp calibration notebook, automated, in two stages (every estimate is a call to
`estimate_llc`, which compiles once per chain length and reuses the program across step
sizes, so the sweep costs one compilation per stage-2 length):

1. **Step size.** Short chains at each step size of a log grid (`step_sizes`, default
   1e-8 .. 1e-4 in half decades). A step size is *healthy* when no chain diverges and its
   MALA acceptance is at least `min(target_acceptance, plateau - max_acceptance_drop)`,
   where the plateau is the acceptance at the smallest step sizes. (With minibatch
   potentials the acceptance proxy saturates below 1, e.g. about 0.85 for a DLN with
   lambda = 16.5, so a fixed 0.9 cannot be the only rule.) The chosen step size is the
   largest healthy one below which every step size is also healthy (the start of stage 1b).
1b. **Discretisation bias.** From that step size eps_hi downward: eps_hi and the next smaller
   eps_lo are run for one common sampler time eps x steps (`bias_check_steps` at the largest
   healthy step size, default 4 `sweep_steps` or fewer if the next smaller step size would
   otherwise need more than `max_steps`), so slower mixing of small steps does not
   confound the comparison, and walking down does not shorten the chains in sampler time
   (which would make every estimate small and the check pass trivially); the line
   lambda(eps) = lambda0 + c eps through the two estimates extrapolates to eps -> 0 and
   estimates the bias c eps_hi. The first eps_hi with |bias| <= max(`bias_tol` |lambda0|,
   2 SE) is chosen. The walk stops where eps_lo would need more than `max_steps` steps; the
   step size reached is then kept with `bias_consistent = 0`. Large steps blow up or
   overshoot, tiny ones mix too slowly.
2. **Chain length.** At the chosen step size, chains of `min_steps`, 2 `min_steps`, ...
   (burn-in `burnin_fraction` of each) until the estimate moved by at most `rel_tol`
   (relative, no noise allowance) over the last doubling and over the last two, with R-hat
   below `max_rhat`. At singular points the estimate creeps up with the sampler time (the
   flat directions mix slowly), so short chains underestimate; a noise allowance would call
   such a slowly rising estimate converged. `localization` may be a sequence (e.g. half
   decades 1, 3.16, 10, ...): the length stage runs at the weakest one and moves to the next
   only if the estimate never settles, i.e. the chains keep drifting along flat directions
   of w* (non-compact symmetry orbits, as in deep linear networks) into regions where the
   estimate is higher; a stronger pull also truncates the slowly growing (quartic)
   directions and biases the estimate down, so the weakest localization that settles is
   kept (on the deep linear networks the rising estimates were discretisation bias, which
   stage 3 removes, and the ladder read 25% low at gamma 100: the DLN panel uses gamma 1).
   If none settles by `max_steps` the dataset says `converged = False` and the
   verdict says the estimate may still be moving.
3. **Discretisation bias at the chosen sampler time.** Stage 1b compares step sizes on
   short chains near w*; along long chains the walkers drift along flat directions into
   regions of higher curvature, where the same step size overshoots much more (a deep linear
   network read 11.6 at eps 3.16e-7 and 7.8 at 1e-7 for the same sampler time 0.1, with
   lambda = 8: docs/experiments/dln_validation.md). So the stage-2 estimate is compared
   with the next smaller step size at the same sampler time (at most
   `long_check_max_steps`, default 4 `max_steps`), walking down while the linear-fit bias
   exceeds `bias_tol` of the extrapolation, with no allowance for noise: at equal sampler
   time the smaller step is never worse (less bias, the same mixing), and drifting chains
   have a large standard error that would otherwise excuse the bias. The config returned is
   the last step size reached, with the same sampler time.

The returned `calibration` dataset records why: per step size the estimate, acceptance,
divergence and the health verdict with a `chosen` flag; per chain length the estimate and
its change; the rules in attrs.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Sequence

import jax
import numpy as np
import xarray as xr

from slt_superposition.errors import require
from slt_superposition.llc import SGLDConfig, estimate_llc, resolve_nbeta
from slt_superposition.provenance import provenance_attrs

PyTree = Any
DEFAULT_STEP_SIZES = tuple(float(10.0 ** (e / 2)) for e in range(-16, -7))  # 1e-8 .. 1e-4


def _estimate(loss_fn, params, data, config, key) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # divergence is recorded, not warned here
        ds = estimate_llc(loss_fn, params, data, config=config, key=key)
    healthy = ~ds["diverged"].values
    acc = ds["mala_acceptance"].values[healthy]
    n_ok = int(healthy.sum())
    return {
        "llc": float(ds["llc_mean"]),
        "llc_se": float(ds["llc_std"]) / math.sqrt(n_ok) if n_ok > 1 else math.nan,
        "acceptance": float(acc.mean()) if n_ok else math.nan,
        "n_diverged": int(ds["n_diverged"]),
        "rhat": float(ds["rhat"]),
    }


def calibrate(
    loss_fn: Callable,
    params: PyTree,
    data: PyTree,
    *,
    key,
    localization: float | Sequence[float] = 1.0,
    nbeta: float | str | None = None,
    batch_size: int | None = 500,
    num_chains: int = 4,
    step_sizes: Sequence[float] = DEFAULT_STEP_SIZES,
    sweep_steps: int = 2000,
    target_acceptance: float = 0.9,
    max_acceptance_drop: float = 0.12,
    min_steps: int = 10_000,
    max_steps: int = 320_000,
    burnin_fraction: float = 0.5,
    rel_tol: float = 0.05,
    max_rhat: float = 1.1,
    bias_tol: float = 0.05,
    bias_check_steps: int | None = None,
    long_check_max_steps: int | None = None,
    progress: bool = False,
) -> tuple[SGLDConfig, xr.Dataset]:
    """Choose an `SGLDConfig` for `estimate_llc(loss_fn, params, data, ...)` by a short sweep.

    loss_fn, params, data: as for `estimate_llc`. `batch_size` None means full batch (it is
    clipped to n). Returns (config, calibration dataset); see the module docstring for the
    rules. The returned config has `num_chains` chains, the chosen step size and the chain
    length at which the estimate stopped moving (burn-in `burnin_fraction` of it).
    """
    step_sizes = sorted(float(e) for e in step_sizes)
    require(len(step_sizes) >= 2 and all(e > 0 and math.isfinite(e) for e in step_sizes),
            "step_sizes needs at least two positive finite values")
    require(0 < burnin_fraction < 1, f"burnin_fraction must be in (0, 1), got {burnin_fraction}")
    require(1 <= min_steps <= max_steps, f"need 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
    n = int(jax.tree_util.tree_leaves(data)[0].shape[0])
    if batch_size is not None:
        batch_size = min(int(batch_size), n)
    localizations = sorted({float(g) for g in np.atleast_1d(localization)})
    require(localizations[0] > 0 and math.isfinite(localizations[-1]), f"localization must be positive and finite, "
                                                                         f"got {localization}")
    long_check_max_steps = int(long_check_max_steps or 4 * max_steps)
    sweep_key, length_key = jax.random.split(key)

    def config(eps, steps, gamma=localizations[0]):
        return SGLDConfig(step_size=float(eps), localization=gamma, nbeta=nbeta, num_chains=num_chains,
                          num_steps=int(steps), num_burnin=int(burnin_fraction * steps), batch_size=batch_size,
                          trace_every=max(1, int(steps) // 200))

    bar = _progress(len(step_sizes), "calibrate: step sizes", progress)
    sweep = []
    for eps in step_sizes:
        sweep.append(_estimate(loss_fn, params, data, config(eps, sweep_steps), sweep_key))
        bar.update()
    bar.close()
    acc = np.array([s["acceptance"] for s in sweep])
    diverged = np.array([s["n_diverged"] > 0 or not math.isfinite(s["llc"]) for s in sweep])
    ok_acc = acc[~diverged & np.isfinite(acc)]
    require(ok_acc.size > 0, "calibration failed: every step size diverged; try smaller step_sizes")
    plateau = float(np.max(ok_acc[: 2])) if ok_acc.size >= 2 else float(ok_acc[0])
    threshold = min(target_acceptance, plateau - max_acceptance_drop)
    healthy = ~diverged & (acc >= threshold)
    # the largest step size below which every step size is healthy
    n_ok = int(np.argmin(healthy)) if not healthy.all() else len(step_sizes)
    require(n_ok > 0, f"calibration failed: the smallest step size {step_sizes[0]:g} is already unhealthy "
                      f"(acceptance {acc[0]:.3f}, diverged {bool(diverged[0])}); try smaller step_sizes")
    # stage 1b: discretisation bias. Walk down from the largest healthy step size eps_hi until
    # the bias of its estimate is small: with the next smaller step size eps_lo, both run for
    # the same sampler time eps x steps (so the comparison is not confounded by the slower
    # mixing of small steps), the linear fit lambda(eps) = lambda0 + c eps through the two
    # estimates gives lambda0 (the eps -> 0 extrapolation) and the bias c eps_hi.
    # one sampler time for every comparison; by default short enough that the first comparison
    # (the next smaller step size) fits in max_steps
    ratio = step_sizes[n_ok - 1] / step_sizes[n_ok - 2] if n_ok > 1 else 1.0
    check_steps = int(bias_check_steps or max(1, min(4 * sweep_steps, int(max_steps / ratio))))
    check_time = step_sizes[n_ok - 1] * check_steps
    bias_key = jax.random.fold_in(sweep_key, 1)
    bias_llc = np.full(len(step_sizes), np.nan)
    bias_se = np.full(len(step_sizes), np.nan)
    bias_hat = np.full(len(step_sizes), np.nan)
    llc0 = np.full(len(step_sizes), np.nan)
    bias_ok = np.zeros(len(step_sizes), bool)
    chosen_index = n_ok - 1
    at_time = lambda i: _estimate(loss_fn, params, data, config(step_sizes[i], round(check_time / step_sizes[i])),
                                  bias_key)
    bar = _progress(n_ok, "calibrate: bias check", progress)
    r_hi = None
    while chosen_index > 0 and round(check_time / step_sizes[chosen_index - 1]) <= max_steps:
        hi, lo = step_sizes[chosen_index], step_sizes[chosen_index - 1]
        r_hi = r_hi or at_time(chosen_index)
        r_lo = at_time(chosen_index - 1)
        bar.update()
        bias_llc[chosen_index], bias_se[chosen_index] = r_hi["llc"], r_hi["llc_se"]
        slope_factor = hi / (hi - lo)  # bias at hi = (llc_hi - llc_lo) hi / (hi - lo)
        bias = (r_hi["llc"] - r_lo["llc"]) * slope_factor
        noise = 2 * slope_factor * math.hypot(np.nan_to_num(r_hi["llc_se"]), np.nan_to_num(r_lo["llc_se"]))
        bias_hat[chosen_index], llc0[chosen_index] = bias, r_hi["llc"] - bias
        if math.isfinite(bias) and abs(bias) <= max(bias_tol * abs(llc0[chosen_index]), noise):
            bias_ok[chosen_index] = True
            break
        chosen_index -= 1
        r_hi = r_lo
    bar.close()
    eps = step_sizes[chosen_index]

    # stage 2: double the chain length (so the sampler time eps x steps) until the estimate
    # stops rising. At singular points the estimate creeps up slowly with sampler time (the
    # flat directions mix slowly), so no allowance for noise: the change must be small itself.
    # If it never settles, the chains are drifting along flat directions away from w*: the
    # next (stronger) localization is tried.
    tried = []
    for gamma in localizations:
        lengths, runs, converged = _length_stage(
            lambda steps: _estimate(loss_fn, params, data, config(eps, steps, gamma), length_key),
            min_steps, max_steps, rel_tol, max_rhat, progress)
        tried.append(dict(localization=gamma, llc=runs[-1]["llc"], rhat=runs[-1]["rhat"], num_steps=lengths[-1],
                          converged=converged))
        if converged:
            break
    # stage 3: the discretisation bias again, now at the chosen sampler time. Along a long chain
    # the walkers drift along flat directions into regions of higher curvature, where the same
    # step size is biased more than at w* (stage 1b); compare with the next smaller step size at
    # the same sampler time and walk down while they disagree (and the smaller one is affordable).
    long_time = eps * lengths[-1]
    long_steps, long_llc, long_bias = [lengths[-1]], [runs[-1]["llc"]], [math.nan]
    final_index, current = chosen_index, runs[-1]
    while final_index > 0 and round(long_time / step_sizes[final_index - 1]) <= long_check_max_steps:
        hi, lo = step_sizes[final_index], step_sizes[final_index - 1]
        lower = _estimate(loss_fn, params, data, config(lo, round(long_time / lo), gamma), length_key)
        bias = (current["llc"] - lower["llc"]) * hi / (hi - lo)
        long_bias[-1] = bias
        # no allowance for noise here: at equal sampler time the smaller step is never worse
        # (less bias, the same mixing), and long drifting chains have a large SE
        if math.isfinite(bias) and abs(bias) <= bias_tol * abs(current["llc"] - bias):
            break
        final_index, current = final_index - 1, lower
        long_steps.append(round(long_time / lo))
        long_llc.append(lower["llc"])
        long_bias.append(math.nan)
    final_eps, final_steps = step_sizes[final_index], long_steps[-1]
    chosen_config = config(final_eps, final_steps, gamma)

    change = [math.nan] + [abs(b["llc"] - a["llc"]) for a, b in zip(runs[:-1], runs[1:])]
    nbeta_value = resolve_nbeta(chosen_config, n)
    unsettled = ", ".join(f"{t['localization']:g}" for t in tried[:-1])  # escalated past these
    ds = xr.Dataset(
        {
            "llc_sweep": _var("step_size", [s["llc"] for s in sweep], "LLC estimate of the short sweep chains"),
            "llc_se_sweep": _var("step_size", [s["llc_se"] for s in sweep], "standard error of llc_sweep over chains"),
            "acceptance": _var("step_size", acc, "mean MALA acceptance proxy (non-divergent chains)"),
            "n_diverged": _var("step_size", [s["n_diverged"] for s in sweep], "divergent chains", "chains"),
            "rhat_sweep": _var("step_size", [s["rhat"] for s in sweep], "R-hat of the sweep loss traces"),
            "healthy": _var("step_size", healthy, "no divergence and acceptance >= acceptance_threshold", None),
            "chosen": _var("step_size", np.arange(len(step_sizes)) == final_index, "the chosen step size (after the "
                           "long-chain bias check)", None),
            "length_stage": _var("step_size", np.arange(len(step_sizes)) == chosen_index, "the step size of the "
                                 "chain-length stage (after the short bias check)", None),
            "llc_bias_check": _var("step_size", bias_llc, "LLC estimate of the bias check (equal sampler time "
                                   "eps x steps as the next larger step size it was compared with)"),
            "llc_se_bias_check": _var("step_size", bias_se, "standard error of llc_bias_check over chains"),
            "bias": _var("step_size", bias_hat, "estimated discretisation bias lambda(eps) - lambda0 of the linear "
                         "fit through this and the next smaller step size at equal sampler time"),
            "llc_extrapolated": _var("step_size", llc0, "lambda0: the linear eps -> 0 extrapolation of that fit"),
            "bias_consistent": _var("step_size", bias_ok, "|bias| <= max(bias_tol |lambda0|, 2 SE of the bias)", None),
            "sampler_time": _var("num_steps", [eps * s for s in lengths], "sampler time eps x num_steps"),
            "llc_length": _var("num_steps", [r["llc"] for r in runs], "LLC estimate at the chosen step size"),
            "llc_se_length": _var("num_steps", [r["llc_se"] for r in runs], "standard error of llc_length"),
            "change_length": _var("num_steps", change, "|change| of llc_length from the previous (half) length"),
            "rhat_length": _var("num_steps", [r["rhat"] for r in runs], "R-hat at each chain length"),
            "llc_long_check": _var("long_check", long_llc, "LLC estimate at the chosen sampler time, from the chosen "
                                   "(stage 2) step size down"),
            "bias_long_check": _var("long_check", long_bias, "discretisation bias of that step size against the next "
                                    "smaller one at the same sampler time (linear fit); NaN where not compared"),
            "llc_localization": _var("localization", [t["llc"] for t in tried],
                                     "LLC estimate at the longest chain tried with this localization"),
            "converged_localization": _var("localization", [t["converged"] for t in tried],
                                           "the chain-length rule converged with this localization", None),
            "num_steps_localization": _var("localization", [t["num_steps"] for t in tried],
                                           "longest chain tried with this localization", "steps"),
        },
        coords={
            "step_size": xr.Variable("step_size", step_sizes, {"long_name": "SGLD step size eps"}),
            "num_steps": xr.Variable("num_steps", lengths, {"long_name": "chain length (burn-in included), at the "
                                                                         "chosen localization", "units": "steps"}),
            "long_check_step_size": xr.Variable("long_check", step_sizes[final_index:chosen_index + 1][::-1],
                                                {"long_name": "step size of the long-chain bias check"}),
            "long_check_num_steps": xr.Variable("long_check", long_steps, {"long_name": "its chain length (same "
                                                "sampler time)", "units": "steps"}),
            "localization": xr.Variable("localization", [t["localization"] for t in tried],
                                        {"long_name": "localization gamma tried in the chain-length stage"}),
        },
    )
    settings = dict(localization=localizations, nbeta=nbeta, batch_size=batch_size, num_chains=num_chains,
                    step_sizes=step_sizes, sweep_steps=sweep_steps, target_acceptance=target_acceptance,
                    max_acceptance_drop=max_acceptance_drop, min_steps=min_steps, max_steps=max_steps,
                    burnin_fraction=burnin_fraction, rel_tol=rel_tol, max_rhat=max_rhat, bias_tol=bias_tol,
                    bias_check_steps=check_steps, bias_check_sampler_time=check_time,
                    long_check_max_steps=long_check_max_steps,
                    key=[int(v) for v in np.asarray(jax.random.key_data(key)).ravel()])
    ds.attrs.update(provenance_attrs("calibration", settings))
    ds.attrs.update(
        acceptance_plateau=plateau,
        acceptance_threshold=threshold,
        chosen_step_size=final_eps,
        length_step_size=eps,
        chosen_localization=gamma,
        bias_check_sampler_time=check_time,
        chosen_num_steps=final_steps,
        converged=int(converged),
        nbeta=nbeta_value,
        step_size_rule=(
            f"largest step size such that it and every smaller one has no divergent chain and MALA acceptance "
            f">= min(target {target_acceptance}, plateau {plateau:.3f} - {max_acceptance_drop}) = {threshold:.3f} "
            f"({sweep_steps}-step chains), then walk down from it until its bias, from the linear fit "
            f"lambda(eps) = lambda0 + c eps through it and the next smaller step size (both run for the sampler time "
            f"{check_time:.3g}, {check_steps} steps at the largest healthy step size; not below a step size that "
            f"would need more than {max_steps} steps), is <= max({bias_tol:.0%} of lambda0, 2 SE); larger steps "
            f"diverge or overshoot (discretisation bias)"),
        length_rule=(
            f"double the chain length from {min_steps} (at most {max_steps}) until the estimate moved by <= "
            f"{rel_tol:.0%} over the last doubling and over the last two (4x the sampler time), with R-hat <= "
            f"{max_rhat} and no divergence, trying the localizations {localizations} in turn until it does; then, "
            f"at that sampler time, step down while the next smaller step size (at most {long_check_max_steps} "
            f"steps) differs by more than {bias_tol:.0%} (no noise allowance); "
            f"short chains "
            f"underestimate at singular points (the estimate rises slowly with the sampler time eps x steps)"),
        bias_consistent=int(bias_ok[chosen_index]),
        bias_tol=bias_tol,
        rel_tol=rel_tol,
        verdict=(
            f"chose step_size {final_eps:g}, localization {gamma:g} and num_steps {final_steps} (sampler time "
            f"{long_time:.3g}): "
            + (f"the estimate did not settle at localization {unsettled} (chains drifting along flat directions); "
               if unsettled else "")
            + (f"short chains: step size {eps:g} has estimated discretisation bias {bias_hat[chosen_index]:+.3g} "
               f"(eps -> 0 extrapolation "
               f"{llc0[chosen_index]:.4g} at short chains); " if bias_ok[chosen_index]
               else "discretisation bias NOT confirmed small (no smaller step size to compare with within "
                    f"max_steps={max_steps}); ")
            + (f"at sampler time {long_time:.3g}, step size {eps:g} read {long_llc[0]:.4g} and the next smaller one "
               f"{long_llc[1]:.4g}, so the smaller was taken (discretisation bias along the long chains); "
               if len(long_llc) > 1 else "")
            + ("the estimate stopped rising with chain length" if converged else
               f"NOT converged by max_steps={max_steps}; the estimate may still be moving")),
    )
    return chosen_config, ds


def _length_stage(estimate, min_steps, max_steps, rel_tol, max_rhat, progress):
    """Double the chain length from min_steps until `_stable` over the last doubling and the
    last two, or max_steps; returns (lengths, estimates, converged)."""
    lengths, runs = [], []
    steps = int(min_steps)
    bar = _progress(int(math.log2(max_steps / min_steps)) + 1, "calibrate: chain length", progress)
    converged = False
    while True:
        lengths.append(steps)
        runs.append(estimate(steps))
        bar.update()
        if len(runs) >= 3 and _stable(runs[-3], runs[-1], rel_tol, max_rhat) \
                and _stable(runs[-2], runs[-1], rel_tol, max_rhat):
            converged = True
            break
        if steps * 2 > max_steps:
            break
        steps *= 2
    bar.close()
    return lengths, runs, converged


def _stable(before: dict, now: dict, rel_tol: float, max_rhat: float) -> bool:
    """The estimate moved by at most rel_tol (relative), the chains agree and none diverged."""
    change = abs(now["llc"] - before["llc"])
    rhat_ok = not (now["rhat"] > max_rhat)  # NaN (a single chain) does not block
    return change <= rel_tol * abs(now["llc"]) and rhat_ok and now["n_diverged"] == 0


def _var(dim, values, long_name, units: str | None = "1") -> xr.Variable:
    attrs = {"long_name": long_name}
    if units:
        attrs["units"] = units
    return xr.Variable(dim, np.asarray(values), attrs)


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)
