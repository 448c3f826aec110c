"""Calibration: choose every instance's SGLD step size and chain length, all instances at once.

`calibrate_batched` runs the stages below for every instance of a grid in one compiled program
per stage (step size, localization, nbeta and chain length are runtime values of the chain
program, so instances at different points of a stage run side by side, each keeping its own
verdict). `calibrate` is its one-instance case. Every estimate of a stage uses the same keys,
so step sizes are compared on common random numbers.

0. **Curvature.** The Hessian spectrum at w* (`slt_superposition.curvature`) gives
   `step_size_bound`: the largest step size whose quadratic-approximation discretisation bias
   is at most `curvature_tol` (2%). Step sizes above it are not healthy.
1. **Step size.** Short chains (`sweep_steps`) at each step size of a log grid up to the
   instance's curvature bound (the two smallest always, for the plateau). A step size is
   *healthy* when no chain diverges, it is within the curvature bound, and its MALA acceptance
   is at least `min(target_acceptance, plateau - max_acceptance_drop)`, where the plateau is
   the acceptance at the two smallest step sizes (minibatch potentials saturate the proxy below
   1, so a fixed 0.9 cannot be the only rule). The walk starts at the largest healthy step size
   below which every step size is healthy.
1b. **Discretisation bias, short chains.** From that step size eps_hi downward, eps_hi and the
   next smaller eps_lo run for one common sampler time eps x steps (`bias_check_steps` at the
   largest healthy step size), so slower mixing does not confound the comparison; the line
   lambda(eps) = lambda0 + c eps through both gives the bias c eps_hi. The first eps_hi with
   |bias| <= max(`bias_tol` |lambda0|, 2 SE) is kept; the walk stops where eps_lo would need
   more than `max_steps` steps (`bias_consistent = 0` then).
2. **Chain length.** At that step size, chains of `min_steps`, 2 `min_steps`, ... (burn-in
   `burnin_fraction`) until, over the last doubling and over the last two, the change of the
   estimate is resolved (its standard error, batch means pooled over chains, at most `rel_tol`
   of the estimate) and at most `rel_tol` of it plus `noise_sd` (2) standard errors, with R-hat
   <= `max_rhat`: a change too noisy to show a drift of `rel_tol` does not count as settled; and
   not before the chain has run for a sampler time eps x steps of `min_relaxation` / gamma (0.5:
   half the time in which a direction held by the localization alone relaxes its variance; a
   narrow deep linear network reads 25% low at 0.0013 / gamma where the estimate has stopped
   moving over two doublings, and reaches lambda near 0.6 / gamma: docs/experiments/dln_validation.md).
   `localization` may be a sequence: instances whose estimate never settles move to the next
   (stronger) localization and start the length stage over, at their step size where it is
   within that localization's curvature bound (a stronger localization lowers it), else at the
   largest grid step size that is (stages 1 and 1b are not rerun; stage 3 then checks the bias
   at the localization kept).
3. **Discretisation bias at the chosen sampler time.** Along long chains the walkers drift
   into regions of higher curvature; the stage-2 estimate is compared with the next smaller
   step size at the same sampler time (at most `long_check_max_steps`), walking down while
   the linear-fit bias exceeds both `bias_tol` and `noise_sd` standard errors of the fit.
4. **Minibatch bias.** At the chosen step size, a short run (at most `batch_check_steps`) with
   the minibatch and the same run with full batch, paired (same keys): the minibatch estimate
   must be within `batch_tol` (2%) of the full-batch one, allowing 2 SE of the paired
   difference, and the check must resolve `batch_tol` (SE at most `batch_tol`): the rule of the
   stored batch check (`checks.within`), so that a batch the calibration keeps is not one whose
   stored check then fails as unresolved. A check left unresolved but consistent with no bias
   runs again for as long as its standard error says resolves the tolerance (at most
   `checks.MAX_CHECK_EXTENSION` times longer, and at most the instance's chain length). If some
   instance still fails, the next batch size (x4, up to full batch) is checked for every
   instance, and the first that passes everywhere is returned.

With `metropolis=True` the chains are Metropolis-adjusted (`slt_superposition.mala`, full batch):
exact at every step size, so stage 0's bound is recorded but not applied, stage 1's acceptance rule
reads the realised acceptance rate and alone limits the step size, and stages 1b and 3 (which
measure a discretisation bias) run nothing.

The returned dataset records every decision: per instance and step size the sweep estimate,
acceptance, divergence, health and the bias check; per chain length the estimate; the long
check; the batch check; the curvature; the chosen settings and a verdict.
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from slt_superposition.chain import ChainShape
from slt_superposition.checks import MAX_CHECK_EXTENSION, resolving_steps, within
from slt_superposition.curvature import curvature_batched, quadratic_llc, step_size_bound
from slt_superposition.minibatch_noise import NoiseSpectrum, curvature_with_noise, predicted_batch_bias
from slt_superposition.errors import check_batch_size, require
from slt_superposition.diagnostics import batch_means_se, difference_se, masked_rhat
from slt_superposition.nan_rows import nan_max, nan_mean, nan_std
from slt_superposition.instances import flatten_instances
from slt_superposition.llc import (SGLDConfig, _check_inputs, default_nbeta,
                                   sample_chains)
from slt_superposition.observers import ChainSettings
from slt_superposition.progress import progress_bar
from slt_superposition.provenance import provenance_attrs

PyTree = Any
DEFAULT_STEP_SIZES = tuple(float(10.0 ** (e / 2)) for e in range(-16, -7))  # 1e-8 .. 1e-4
TRACE_BLOCKS = 128  # loss-trace blocks per calibration chain (R-hat reads the post-burn-in ones)
BATCH_MEANS = 8  # batches per chain for the batch-means standard error (`diagnostics.batch_means_se`)
TARGET_ACCEPTANCE = 0.9  # the step-size sweep's default acceptance target (`target_acceptance`)


class Runs(NamedTuple):
    """One estimate per instance, arrays `(instance,)`. `llc_se` is the larger of the standard
    error over chains and the batch-means one (`batch_means_se`), so that 2 chains do not give
    a standard error from one degree of freedom."""

    llc: np.ndarray
    llc_se: np.ndarray
    acceptance: np.ndarray
    n_diverged: np.ndarray
    rhat: np.ndarray
    per_chain: np.ndarray  # (instance, chain)
    trace: np.ndarray | None = None  # (instance, chain, TRACE_BLOCKS) loss-trace block means
    post: np.ndarray | None = None  # (instance, TRACE_BLOCKS) post-burn-in blocks


class Sampler(NamedTuple):
    """`run(key, step_size, num_steps, localization, batch_size=...) -> Runs`, every instance
    at once (arguments `(instance,)` arrays or scalars), and the instance count."""

    run: Callable[..., Runs]
    n_instances: int


def _sampler(loss_fn, params, data, *, data_batched, n, d, nbeta, num_chains, burnin_fraction, mesh,
             metropolis=False) -> Sampler:
    """Runs the chains of the instances with `num_steps > 0` only (others get NaN). Every call
    passes all instances, the active ones first, sorted by chain length, then the inactive ones
    with no steps: the program runs in blocks of instances (`sharding.run_sharded`), a block as
    long as its longest chain, so blocks of inactive instances cost next to nothing and each block
    holds chains of similar length; and every call of a stage has the same shapes, so each batch
    size compiles one program for the whole calibration (gathering only the active instances
    compiled a program for every count of them). On a CPU a block is one instance: there a
    program over many instances runs no more chain-steps per second than one instance
    (`benchmarks/calibrate_batched.py` prints both), and a block of one never runs an inactive
    instance's lanes; elsewhere blocks of `sharding.balanced_block` instances run side by side."""
    n_inst = int(np.shape(jax.tree_util.tree_leaves(params)[0])[0])
    block_size = 1 if jax.default_backend() == "cpu" else None

    def run(key, step_size, num_steps, localization, batch_size) -> Runs:
        steps = np.broadcast_to(np.asarray(num_steps, np.int64), (n_inst,))
        active = np.flatnonzero(steps > 0)
        order = active[np.argsort(-steps[active], kind="stable")]
        pick = np.concatenate([order, np.flatnonzero(steps <= 0)])  # every instance, active ones first
        take = lambda tree: jax.tree_util.tree_map(lambda x: x[pick], tree)
        each = lambda value, dtype: np.broadcast_to(np.asarray(value, dtype), (n_inst,))[pick]
        burnin = (burnin_fraction * steps).astype(np.int64)
        every = np.maximum(1, -(-steps // TRACE_BLOCKS))  # inactive instances: 1, never used
        settings = ChainSettings(*(jnp.asarray(each(v, t)) for v, t in (
            (step_size, np.float32), (localization, np.float32), (nbeta, np.float32), (steps, np.int32),
            (burnin, np.int32), (every, np.int32))))
        shape = ChainShape(num_chains, TRACE_BLOCKS, batch_size, "replacement", n, d, metropolis=bool(metropolis))
        keys = jax.random.split(key, n_inst)[pick]
        out = sample_chains(loss_fn, take(params), take(data) if data_batched else data, keys, settings, shape,
                            data_batched=data_batched, mesh=mesh, block_size=block_size) if len(order) else None
        C = num_chains
        per_chain = np.full((n_inst, C), np.nan)
        diverged = np.zeros((n_inst, C), bool)
        accept = np.full((n_inst, C), np.nan)
        trace = np.full((n_inst, C, TRACE_BLOCKS), np.nan, np.float32)
        if out is not None:
            k = len(order)
            per_chain[order] = np.asarray(out["llc_per_chain"], np.float64)[:k]
            diverged[order] = np.asarray(out["diverged"], bool)[:k]
            accept[order] = np.asarray(out["mala_acceptance"], np.float64)[:k]
            trace[order] = np.asarray(out["loss_trace"], np.float32)[:k]
        healthy = ~diverged
        n_ok = healthy.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):  # instances whose chains all diverged, or not run
            masked = np.where(healthy, per_chain, np.nan)
            llc = np.where(n_ok > 0, nan_mean(masked), np.nan)
            se = np.where(n_ok > 1, nan_std(masked, ddof=1) / np.sqrt(n_ok), np.nan)
            acc = np.where(n_ok > 0, nan_mean(np.where(healthy, accept, np.nan)), np.nan)
        block_starts = np.arange(TRACE_BLOCKS)[None, :] * every[:, None]
        post = (block_starts >= burnin[:, None]) & np.isfinite(trace).all(axis=1, where=healthy[:, :, None])
        rhat = masked_rhat(trace, post, healthy & (steps > 0)[:, None])
        se = np.fmax(se, nbeta * batch_means_se(trace, post, healthy, BATCH_MEANS))
        return Runs(llc, se, acc, diverged.sum(axis=1), rhat, per_chain, trace, post)

    return Sampler(run, n_inst)


# ----------------------------------------------------------------------------- stages


class SweepStage(NamedTuple):
    """Stage 1, arrays `(instance, step_size)` unless noted."""

    llc: np.ndarray
    llc_se: np.ndarray
    acceptance: np.ndarray
    n_diverged: np.ndarray
    rhat: np.ndarray
    healthy: np.ndarray
    plateau: np.ndarray  # (instance,)
    threshold: np.ndarray  # (instance,)
    n_ok: np.ndarray  # (instance,) healthy step sizes from the smallest up, without a gap


def sweep_stage(sampler: Sampler, key, step_sizes, *, steps, localization, batch_size, bound, target_acceptance,
                max_acceptance_drop, progress) -> SweepStage:
    runs = []
    with progress_bar(len(step_sizes), "calibrate: step sizes", progress) as bar:
        for j, eps in enumerate(step_sizes):
            # above an instance's curvature bound a step size cannot be chosen: not run there
            # (the two smallest always run: they set the acceptance plateau)
            needed = (eps <= bound) | (j < 2)
            runs.append(sampler.run(key, eps, np.where(needed, steps, 0), localization, batch_size))
            bar.update()
    stack = lambda field: np.stack([getattr(r, field) for r in runs], axis=1)
    llc, se, acc, div, rhat = (stack(f) for f in ("llc", "llc_se", "acceptance", "n_diverged", "rhat"))
    diverged = (div > 0) | ~np.isfinite(llc)
    usable = np.where(~diverged & np.isfinite(acc), acc, np.nan)
    plateau = nan_max(usable[:, :2])  # NaN where both step sizes diverged
    threshold = np.minimum(target_acceptance, plateau - max_acceptance_drop)
    within = np.asarray(step_sizes)[None, :] <= bound[:, None]
    healthy = ~diverged & (np.nan_to_num(acc, nan=-1) >= threshold[:, None]) & within
    n_ok = np.where(healthy.all(axis=1), healthy.shape[1], np.argmin(healthy, axis=1))
    return SweepStage(llc, se, acc, div, rhat, healthy, plateau, threshold, n_ok)


class ShortBiasStage(NamedTuple):
    """Stage 1b, arrays `(instance, step_size)` unless noted."""

    index: np.ndarray  # (instance,) the step size the length stage uses
    llc: np.ndarray
    llc_se: np.ndarray
    bias: np.ndarray
    llc0: np.ndarray
    consistent: np.ndarray
    check_steps: np.ndarray  # (instance,)
    check_time: np.ndarray  # (instance,)


def comparisons_left(index: np.ndarray, active: np.ndarray, sampler_time: np.ndarray, step_sizes: np.ndarray,
                     max_steps: int) -> int:
    """The most comparisons a bias check's walk down the step-size grid can make (its progress bar's
    total): an active instance at grid index `index` (instance,) can move to each smaller step size
    whose chain of `sampler_time` (instance,) fits in `max_steps` (steps grow as the step size falls,
    so these are the ones just below it, and its walk stops at the first that does not fit)."""
    steps = np.maximum(2, np.round(sampler_time[None, :] / step_sizes[:, None]))  # (step size, instance)
    fits = (steps <= max_steps) & (np.arange(len(step_sizes))[:, None] < index[None, :])
    return int((fits.sum(axis=0) * active).max(initial=0))


def short_bias_stage(sampler: Sampler, key, step_sizes, n_ok, *, sweep_steps, bias_check_steps, max_steps,
                     localization, batch_size, bias_tol, progress) -> ShortBiasStage:
    eps_grid = np.asarray(step_sizes)
    n_inst, n_eps = sampler.n_instances, len(step_sizes)
    top = np.maximum(n_ok - 1, 0)
    ratio = np.where(top > 0, eps_grid[top] / eps_grid[np.maximum(top - 1, 0)], 1.0)
    check_steps = (np.full(n_inst, int(bias_check_steps)) if bias_check_steps else
                   np.maximum(1, np.minimum(4 * sweep_steps, (max_steps / ratio).astype(np.int64))))
    check_time = eps_grid[top] * check_steps
    shape = (n_inst, n_eps)
    llc, se, bias, llc0 = (np.full(shape, np.nan) for _ in range(4))
    consistent = np.zeros(shape, bool)
    index = top.copy()
    steps_at = lambda i: np.maximum(2, np.round(check_time / eps_grid[i]).astype(np.int64))
    active = (index > 0) & (n_ok > 0)
    active &= steps_at(np.maximum(index - 1, 0)) <= max_steps
    hi_result = None
    rows = np.arange(n_inst)
    bound = comparisons_left(index, active, check_time, eps_grid, max_steps)
    with progress_bar(bound, "calibrate: bias check", progress) as bar:
        while active.any():
            lo_index = np.maximum(index - 1, 0)
            if hi_result is None:
                hi_result = sampler.run(key, eps_grid[index], np.where(active, steps_at(index), 0), localization,
                                        batch_size)
            lo_result = sampler.run(key, eps_grid[lo_index], np.where(active, steps_at(lo_index), 0), localization,
                                    batch_size)
            bar.update()
            hi, lo = eps_grid[index], eps_grid[lo_index]
            factor = hi / np.where(active, hi - lo, 1.0)
            b = (hi_result.llc - lo_result.llc) * factor
            noise = 2 * factor * np.hypot(np.nan_to_num(hi_result.llc_se), np.nan_to_num(lo_result.llc_se))
            r, c = rows[active], index[active]
            llc[r, c], se[r, c] = hi_result.llc[active], hi_result.llc_se[active]
            bias[r, c], llc0[r, c] = b[active], (hi_result.llc - b)[active]
            ok = active & np.isfinite(b) & (np.abs(b) <= np.maximum(bias_tol * np.abs(hi_result.llc - b), noise))
            consistent[rows[ok], index[ok]] = True
            moving = active & ~ok
            index = np.where(moving, index - 1, index)
            # the smaller step size's estimate is the next comparison's larger one
            hi_result = lo_result
            active = moving & (index > 0) & (steps_at(np.maximum(index - 1, 0)) <= max_steps)
        bar.total = bar.n  # every instance settled before the bound: end the bar full
    return ShortBiasStage(index, llc, se, bias, llc0, consistent, check_steps, check_time)


class LengthStage(NamedTuple):
    """Stage 2: arrays `(instance, num_steps)` over the lengths `lengths (num_steps,)` at each
    instance's final localization (NaN where not run), `(instance, localization)` per gamma."""

    lengths: np.ndarray
    llc: np.ndarray
    llc_se: np.ndarray
    rhat: np.ndarray
    final_steps: np.ndarray  # (instance,)
    converged: np.ndarray  # (instance,)
    localization: np.ndarray  # (instance,) the localization kept
    tried_llc: np.ndarray  # (instance, localization)
    tried_converged: np.ndarray
    tried_steps: np.ndarray
    index: np.ndarray  # (instance,) the step size (index into the grid) at the localization kept


def _stable(before: np.ndarray, before_se: np.ndarray, now: Runs, rel_tol: float, max_rhat: float,
            noise_sd: float) -> np.ndarray:
    """The change of the estimate is resolved (its standard error at most `rel_tol` of the estimate:
    the post-burn-in windows of a chain and its doubling do not overlap, so their errors add in
    quadrature) and at most `rel_tol` of the estimate plus `noise_sd` standard errors, with R-hat
    <= `max_rhat` and no divergence. A change too noisy to show a drift of `rel_tol` has not shown
    that the estimate settled (the rule of the stored checks, `checks.within`, on the relative change)."""
    size = np.abs(now.llc)
    se = np.hypot(np.nan_to_num(before_se, nan=np.inf), np.nan_to_num(now.llc_se, nan=np.inf))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_change, rel_se = (now.llc - before) / size, se / size
    settled = np.isfinite(rel_change) & within(rel_change, rel_se, rel_tol, noise_sd)
    rhat_ok = ~(now.rhat > max_rhat)  # NaN does not block
    return settled & rhat_ok & (now.n_diverged == 0)


def length_stage(sampler: Sampler, key, eps_grid, index, localizations, *, bounds, min_steps, max_steps, rel_tol,
                 max_rhat, noise_sd, min_relaxation, batch_size, progress) -> LengthStage:
    """Stage 2 (see the module docstring): an instance settles at a length only where its chain has
    also run for at least `min_relaxation` / gamma of sampler time eps x steps. Each instance starts
    at step size `eps_grid[index]`; one that moves to a stronger localization keeps its step size
    only where it is within that localization's curvature bound (`bounds (instance, localization)`),
    else takes the largest grid step size that is (the smallest, if none is)."""
    n_inst = sampler.n_instances
    index = np.asarray(index).copy()
    eps = np.asarray(eps_grid)[index]
    lengths = [int(min_steps)]
    while lengths[-1] * 2 <= max_steps:
        lengths.append(lengths[-1] * 2)
    lengths = np.asarray(lengths)
    R, G = len(lengths), len(localizations)
    llc, se, rhat = (np.full((n_inst, R), np.nan) for _ in range(3))
    tried_llc, tried_steps = np.full((n_inst, G), np.nan), np.zeros((n_inst, G), np.int64)
    tried_converged = np.zeros((n_inst, G), bool)
    converged = np.zeros(n_inst, bool)
    gamma_index = np.zeros(n_inst, np.int64)
    final_steps = np.full(n_inst, lengths[-1])
    pending = np.ones(n_inst, bool)  # still in the length stage at its current localization
    total = R * G
    with progress_bar(total, "calibrate: chain length", progress) as bar:
        for g, gamma in enumerate(localizations):
            here = pending & (gamma_index == g)
            if not here.any():
                break
            llc_g, se_g, rhat_g = (np.full((n_inst, R), np.nan) for _ in range(3))
            running = here.copy()
            for r, steps in enumerate(lengths):
                if not running.any():
                    break
                res = sampler.run(key, eps, np.where(running, steps, 0), gamma, batch_size)
                bar.update()
                llc_g[running, r], se_g[running, r], rhat_g[running, r] = (res.llc[running], res.llc_se[running],
                                                                             res.rhat[running])
                done = np.zeros(n_inst, bool)
                if r >= 2:
                    long_enough = eps * steps >= min_relaxation / gamma
                    done = running & long_enough & \
                        _stable(llc_g[:, r - 2], se_g[:, r - 2], res, rel_tol, max_rhat, noise_sd) & \
                        _stable(llc_g[:, r - 1], se_g[:, r - 1], res, rel_tol, max_rhat, noise_sd)
                final_steps = np.where(running, steps, final_steps)
                tried_llc[running, g] = res.llc[running]
                tried_steps[running, g] = steps
                tried_converged[done, g] = True
                converged |= done
                running &= ~done
            # keep this gamma's rows for instances that settled here or have no stronger gamma left
            keep = here & (converged | (g == G - 1))
            llc[keep], se[keep], rhat[keep] = llc_g[keep], se_g[keep], rhat_g[keep]
            escalate = here & ~converged & (g < G - 1)
            gamma_index = np.where(escalate, g + 1, gamma_index)
            if escalate.any():  # a stronger localization lowers the curvature bound: stay within it
                within = np.asarray(eps_grid)[None, :] <= bounds[:, min(g + 1, G - 1), None]
                allowed = np.where(within.any(axis=1), len(eps_grid) - 1 - np.argmax(within[:, ::-1], axis=1), 0)
                index = np.where(escalate, np.minimum(index, allowed), index)
                eps = np.asarray(eps_grid)[index]
            pending = escalate
    gammas = np.asarray(localizations, np.float64)[gamma_index]
    return LengthStage(lengths, llc, se, rhat, final_steps, converged, gammas, tried_llc, tried_converged,
                       tried_steps, index)


class LongCheckStage(NamedTuple):
    """Stage 3, arrays `(instance, long_check)`: the step sizes walked down at one sampler time
    (NaN / 0 past each instance's last)."""

    final_index: np.ndarray  # (instance,)
    step_size: np.ndarray
    num_steps: np.ndarray
    llc: np.ndarray
    bias: np.ndarray


def long_check_stage(sampler: Sampler, key, step_sizes, start_index, final_steps, start_llc, start_se, localization, *,
                     long_check_max_steps, bias_tol, noise_sd, batch_size, progress) -> LongCheckStage:
    eps_grid = np.asarray(step_sizes)
    n_inst = sampler.n_instances
    K = int(start_index.max()) + 1
    eps_k, llc_k, bias_k = (np.full((n_inst, K), np.nan) for _ in range(3))
    steps_k = np.zeros((n_inst, K), np.int64)
    rows = np.arange(n_inst)
    eps_k[:, 0], steps_k[:, 0], llc_k[:, 0] = eps_grid[start_index], final_steps, start_llc
    long_time = eps_grid[start_index] * final_steps
    index, current, current_se, j = start_index.copy(), start_llc.copy(), start_se.copy(), np.zeros(n_inst, np.int64)
    steps_at = lambda i: np.maximum(2, np.round(long_time / eps_grid[i]).astype(np.int64))
    active = (index > 0) & (steps_at(np.maximum(index - 1, 0)) <= long_check_max_steps)
    bound = comparisons_left(index, active, long_time, eps_grid, long_check_max_steps)
    with progress_bar(bound, "calibrate: long-chain bias check", progress) as bar:
        while active.any():
            lo_index = np.maximum(index - 1, 0)
            lower = sampler.run(key, eps_grid[lo_index], np.where(active, steps_at(lo_index), 0), localization,
                                batch_size)
            bar.update()
            hi, lo = eps_grid[index], eps_grid[lo_index]
            factor = hi / np.where(active, hi - lo, 1.0)
            b = (current - lower.llc) * factor
            bias_k[rows[active], j[active]] = b[active]
            noise = noise_sd * factor * np.hypot(np.nan_to_num(current_se), np.nan_to_num(lower.llc_se))
            ok = np.isfinite(b) & (np.abs(b) <= np.maximum(bias_tol * np.abs(current - b), noise))
            move = active & ~ok
            j = np.where(move, j + 1, j)
            index = np.where(move, lo_index, index)
            current = np.where(move, lower.llc, current)
            current_se = np.where(move, lower.llc_se, current_se)
            eps_k[rows[move], j[move]] = lo[move]
            steps_k[rows[move], j[move]] = steps_at(lo_index)[move]
            llc_k[rows[move], j[move]] = lower.llc[move]
            active = move & (index > 0) & (steps_at(np.maximum(index - 1, 0)) <= long_check_max_steps)
        bar.total = bar.n
    return LongCheckStage(index, eps_k, steps_k, llc_k, bias_k)


class BatchCheckStage(NamedTuple):
    """Stage 4: per batch size tried `(instance, batch_check)`; the batch size kept."""

    batch_sizes: list
    llc_batch: np.ndarray
    llc_full: np.ndarray
    rel_diff: np.ndarray
    diff_se: np.ndarray
    passed: np.ndarray
    chosen: int | None
    check_steps: np.ndarray  # chain length of each paired check (after `checks.resolving_steps`)


def _paired_runs(sampler: Sampler, key, eps, steps, localization, b, nbeta, full=None):
    """The batch check's paired runs (same keys) at batch `b` and at full batch (`full`: that run
    if already done): (minibatch LLC, full-batch LLC, relative difference, its standard error)."""
    full = full if full is not None else sampler.run(key, eps, steps, localization, None)
    res = sampler.run(key, eps, steps, localization, b)
    paired = res.per_chain - full.per_chain  # (instance, chain), same keys
    healthy = np.isfinite(paired)
    with np.errstate(invalid="ignore", divide="ignore"):  # instances given no steps: NaN, not read
        diff = nan_mean(paired)
        # the paired per-block difference's standard error (as the stored batch check)
        diff_se = nbeta * difference_se(res.trace.astype(np.float64) - full.trace, res.post, healthy, BATCH_MEANS)
        return res.llc, full.llc, diff / np.abs(full.llc), diff_se / np.abs(full.llc)


def batch_check_stage(sampler: Sampler, key, eps, num_steps, localization, *, batch_size, n, nbeta, tol, check_steps,
                      progress) -> BatchCheckStage:
    """Paired short runs (same keys) with the minibatch and with full batch at each instance's
    step size; a check left unresolved but consistent with no bias runs again for as long as its
    standard error says resolves `tol` (`checks.resolving_steps`, at most `MAX_CHECK_EXTENSION` x
    and the instance's chain length); unless every instance then passes the stored check's rule
    (`checks.within`: the paired difference resolved to SE <= `tol` and within `tol` + 2 SE), the
    next batch size (x4) is tried, up to full batch."""
    n_inst = sampler.n_instances
    steps = np.minimum(num_steps, check_steps)
    cap = np.minimum(num_steps, MAX_CHECK_EXTENSION * steps)
    candidates = []
    b = batch_size
    while b is not None and b < n:
        candidates.append(int(b))
        b = b * 4
    if not candidates:
        empty = np.zeros((n_inst, 0))
        return BatchCheckStage([], empty, empty, empty, empty, np.zeros((n_inst, 0), bool), batch_size,
                               np.zeros((n_inst, 0), np.int64))
    with progress_bar(len(candidates) + 1, "calibrate: minibatch check", progress) as bar:
        full = sampler.run(key, eps, steps, localization, None)
        bar.update()
        rows = {k: [] for k in ("llc", "full", "rel", "se", "ok", "steps")}
        chosen = None
        for b in candidates:
            llc, llc_full, rel, se = _paired_runs(sampler, key, eps, steps, localization, b, nbeta, full)
            longer = resolving_steps(steps, rel, se, tol, cap)
            redo = longer > steps
            if redo.any():  # only the instances to resolve run again (0 steps elsewhere)
                again = _paired_runs(sampler, key, eps, np.where(redo, longer, 0), localization, b, nbeta)
                llc, llc_full, rel, se = (np.where(redo, new, old) for old, new in zip((llc, llc_full, rel, se), again))
            bar.update()
            # the stored check's rule (`checks.within`): resolved (SE <= tol) and within tol + 2 SE;
            # a check too short to resolve the tolerance has not shown that the batch is harmless
            ok = np.isfinite(rel) & within(rel, se, tol)
            for k, v in zip(rows, (llc, llc_full, rel, se * np.abs(llc_full), ok, longer)):
                rows[k].append(v)
            if ok.all():
                chosen = b
                break
    stack = lambda k: np.stack(rows[k], axis=1)
    tried = candidates[: len(rows["llc"])]
    return BatchCheckStage(tried, stack("llc"), stack("full"), stack("rel"), stack("se"), stack("ok"), chosen,
                           stack("steps"))


# ----------------------------------------------------------------------------- the whole calibration


def calibrate_batched(
    loss_fn: Callable,
    params: PyTree,
    data: PyTree,
    *,
    key,
    instance_dims: Sequence[str] | Mapping[str, Sequence] | None = None,
    data_batched: bool = True,
    localization: float | Sequence[float] = 1.0,
    nbeta: float | str | None = None,
    batch_size: int | None = 500,
    num_chains: int = 4,
    step_sizes: Sequence[float] = DEFAULT_STEP_SIZES,
    sweep_steps: int = 2000,
    target_acceptance: float = TARGET_ACCEPTANCE,
    max_acceptance_drop: float = 0.12,
    min_steps: int | None = None,
    max_steps: int = 320_000,
    burnin_fraction: float = 0.5,
    rel_tol: float = 0.05,
    min_relaxation: float = 0.5,
    max_rhat: float = 1.1,
    noise_sd: float = 2.0,
    bias_tol: float = 0.05,
    bias_check_steps: int | None = None,
    long_check_max_steps: int | None = None,
    curvature_tol: float = 0.02,
    batch_tol: float = 0.02,
    batch_check_steps: int = 2000,
    metropolis: bool = False,
    mesh=None,
    progress: bool = False,
) -> tuple[SGLDConfig, xr.Dataset]:
    """Calibrate every instance at once; see the module docstring for the stages.

    params, data, instance_dims, data_batched: as for `estimate_llc_batched`. `batch_size` None
    means full batch; a batch larger than n is an error (never clipped). Returns (config, calibration dataset): an `SGLDConfig`
    whose `step_size`, `localization`, `num_steps` and `num_burnin` are arrays with the instance
    shape (for `estimate_llc_batched`), `num_chains` chains, the batch size that passed the
    minibatch check and the nbeta every stage ran at (a number where `nbeta` named a convention,
    which the estimate would otherwise resolve again from the chosen batch); the dataset has the
    instance dims in front of every variable.
    `metropolis`: calibrate Metropolis-adjusted chains (`SGLDConfig.metropolis`; needs `batch_size`
    None): they have no discretisation bias, so the curvature bound does not limit the step size
    (it is still recorded), the sweep's acceptance rule, now on the realised acceptance rate, is
    what does, and the bias stages (1b, 3) run nothing; the chain-length stage is unchanged.
    `min_steps` None: `default_min_steps(max_steps)` (10,000, or max_steps / 4 if smaller: the
    length rule needs three lengths, min_steps, 2x and 4x; fewer is a RuntimeWarning and settles
    nothing). `bias_check_steps` None: from the sweep (see stage 1b); `long_check_max_steps` None:
    4 `max_steps`.
    """
    min_steps = default_min_steps(max_steps) if min_steps is None else min_steps
    _check_settings(sweep_steps=sweep_steps, min_steps=min_steps, max_steps=max_steps, batch_check_steps=batch_check_steps,
                    bias_check_steps=bias_check_steps, long_check_max_steps=long_check_max_steps,
                    target_acceptance=target_acceptance, max_acceptance_drop=max_acceptance_drop, rel_tol=rel_tol,
                    bias_tol=bias_tol, curvature_tol=curvature_tol, batch_tol=batch_tol, noise_sd=noise_sd,
                    max_rhat=max_rhat)
    step_sizes = sorted(float(e) for e in step_sizes)
    require(len(step_sizes) >= 2 and all(e > 0 and math.isfinite(e) for e in step_sizes),
            "step_sizes needs at least two positive finite values")
    require(0 < burnin_fraction < 1, f"burnin_fraction must be in (0, 1), got {burnin_fraction}")
    require(1 <= min_steps <= max_steps, f"need 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
    if max_steps < 4 * min_steps:
        warnings.warn(f"max_steps {max_steps} is below 4 x min_steps {min_steps}: the chain-length rule compares "
                      f"the estimate over the last doubling and the last two, which needs the lengths min_steps, 2x "
                      f"and 4x, so no instance can settle (nothing calibrated with it is trusted)", RuntimeWarning,
                      stacklevel=2)
    require(0 <= min_relaxation < math.inf, f"min_relaxation must be >= 0 and finite, got {min_relaxation}")
    localizations = sorted({float(g) for g in np.atleast_1d(localization)})
    require(localizations[0] > 0 and math.isfinite(localizations[-1]),
            f"localization must be positive and finite, got {localization}")
    instances = flatten_instances(params, data, instance_dims, data_batched=data_batched)
    dims, sizes, params, data = instances.dims, instances.sizes, instances.params, instances.data
    n = int(jax.tree_util.tree_leaves(data)[0].shape[1 if data_batched else 0])
    if batch_size is not None:
        batch_size = check_batch_size(batch_size, n)
    # validates every setting the chains will run with, `metropolis` with full batch included
    probe = SGLDConfig(step_size=step_sizes[0], localization=localizations[0], nbeta=nbeta, num_chains=num_chains,
                       num_steps=max(2, min_steps), num_burnin=1, batch_size=batch_size, metropolis=metropolis)
    n, d = _check_inputs(loss_fn, params, data, probe, instance_axes=1, data_axes=1 if data_batched else 0)
    nbeta_value = (default_nbeta(n, batch_size, nbeta) if isinstance(nbeta, str) else
                   default_nbeta(n) if nbeta is None else float(nbeta))
    long_check_max_steps = int(long_check_max_steps or 4 * max_steps)
    curv_key, sweep_key, length_key, batch_key = jax.random.split(key, 4)
    sampler = _sampler(loss_fn, params, data, data_batched=data_batched, n=n, d=d, nbeta=nbeta_value,
                       num_chains=num_chains, burnin_fraction=burnin_fraction, mesh=mesh, metropolis=metropolis)

    # minibatch chains also get the rows' gradient spread along the Hessian's eigenvectors (the same Hessian)
    minibatch = batch_size is not None and batch_size < n
    curvature = (curvature_with_noise if minibatch else curvature_batched)(loss_fn, params, data,
                                                                           data_batched=data_batched, key=curv_key)
    bounds = np.stack([step_size_bound(curvature["eigenvalues"], gamma, nbeta_value, tol=curvature_tol,
                                       top=curvature["top"]) for gamma in localizations], axis=1)  # (instance, gamma)
    # Metropolis-adjusted chains are exact at every step size: the bias bound does not limit them
    limits = np.full_like(bounds, np.inf) if metropolis else bounds
    limit = limits[:, 0]
    sweep = sweep_stage(sampler, sweep_key, step_sizes, steps=sweep_steps, localization=localizations[0],
                        batch_size=batch_size, bound=limit, target_acceptance=target_acceptance,
                        max_acceptance_drop=max_acceptance_drop, progress=progress)
    bad = np.flatnonzero(sweep.n_ok == 0)
    require(bad.size == 0, f"calibration failed at {bad.size} instance(s) (first: {_describe(dims, sizes, bad[0]) if bad.size else ''}): "
                           f"the smallest step size {step_sizes[0]:g} is already unhealthy; try smaller step_sizes")
    # the bias stages (1b, 3) measure a discretisation bias that Metropolis-adjusted chains do not
    # have: there they run nothing (no step size is affordable to them) and keep the sweep's step size
    short = short_bias_stage(sampler, jax.random.fold_in(sweep_key, 1), step_sizes, sweep.n_ok,
                             sweep_steps=sweep_steps, bias_check_steps=bias_check_steps,
                             max_steps=0 if metropolis else max_steps,
                             localization=localizations[0], batch_size=batch_size, bias_tol=bias_tol,
                             progress=progress)
    eps_grid = np.asarray(step_sizes)
    length = length_stage(sampler, length_key, eps_grid, short.index, localizations, bounds=limits,
                          min_steps=min_steps,
                          max_steps=max_steps, rel_tol=rel_tol, max_rhat=max_rhat, noise_sd=noise_sd,
                          min_relaxation=min_relaxation, batch_size=batch_size,
                          progress=progress)
    last_of = lambda rows: np.array([row[np.isfinite(row)][-1] if np.isfinite(row).any() else np.nan for row in rows])
    last, last_se = last_of(length.llc), last_of(length.llc_se)
    long = long_check_stage(sampler, length_key, step_sizes, length.index, length.final_steps, last, last_se,
                            length.localization, long_check_max_steps=0 if metropolis else long_check_max_steps,
                            bias_tol=bias_tol,
                            noise_sd=noise_sd,
                            batch_size=batch_size, progress=progress)
    final_eps = eps_grid[long.final_index]
    final_steps = np.array([row[row > 0][-1] for row in long.num_steps])
    batch = batch_check_stage(sampler, batch_key, final_eps, final_steps, length.localization,
                              batch_size=batch_size, n=n, nbeta=nbeta_value, tol=batch_tol,
                              check_steps=batch_check_steps,
                              progress=progress)

    predicted = _predicted_batch_biases(curvature, batch.batch_sizes, eps=final_eps, localization=length.localization,
                                        nbeta=nbeta_value)

    shape = lambda a: np.reshape(a, sizes + np.shape(a)[1:])
    # the nbeta every stage ran at: a convention ("batch") would be resolved again from the chosen batch
    config = SGLDConfig(step_size=shape(final_eps), localization=shape(length.localization),
                        nbeta=nbeta_value if isinstance(nbeta, str) else nbeta,
                        num_chains=num_chains, num_steps=shape(final_steps),
                        num_burnin=shape((burnin_fraction * final_steps).astype(np.int64)),
                        batch_size=batch.chosen, trace_every=max(1, int(final_steps.max()) // 200),
                        metropolis=bool(metropolis))
    settings = dict(localization=localizations, nbeta=nbeta, batch_size=batch_size, num_chains=num_chains,
                    metropolis=bool(metropolis),
                    step_sizes=step_sizes, sweep_steps=sweep_steps, target_acceptance=target_acceptance,
                    max_acceptance_drop=max_acceptance_drop, min_steps=min_steps, max_steps=max_steps,
                    burnin_fraction=burnin_fraction, rel_tol=rel_tol, min_relaxation=min_relaxation, max_rhat=max_rhat,
                    noise_sd=noise_sd,
                    bias_tol=bias_tol,
                    bias_check_steps=short.check_steps.tolist(), bias_check_sampler_time=short.check_time.tolist(),
                    long_check_max_steps=long_check_max_steps, curvature_tol=curvature_tol, batch_tol=batch_tol,
                    batch_check_steps=batch_check_steps,
                    key=[int(v) for v in np.asarray(jax.random.key_data(key)).ravel()])
    kept = np.searchsorted(np.asarray(localizations), length.localization)  # the bound where the chains ran
    bound = bounds[np.arange(len(kept)), kept]
    ds = calibration_dataset(dims, step_sizes, sweep, short, length, long, batch, curvature, bound,
                             final_eps=final_eps, final_steps=final_steps, nbeta=nbeta_value,
                             settings=settings, batch_bias_predicted=predicted)
    return config, ds


def default_min_steps(max_steps: int) -> int:
    """The chain-length stage's first length: 10,000, or `max_steps` // 4 where that is smaller
    (at least 1), so that the rule has its three lengths (min_steps, 2x, 4x) below the cap."""
    return max(1, min(10_000, int(max_steps) // 4))


def _check_settings(**settings) -> None:
    """`InputError` (one line) for a calibration setting out of its range, before anything runs."""
    import numbers

    whole = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)
    real = lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
    for name, least in (("sweep_steps", 2), ("min_steps", 1), ("max_steps", 1), ("batch_check_steps", 1)):
        require(whole(settings[name]) and settings[name] >= least,
                f"{name} must be a whole number >= {least}, got {settings[name]!r}")
    for name in ("bias_check_steps", "long_check_max_steps"):  # None: chosen by the calibration
        value = settings[name]
        require(value is None or (whole(value) and value >= 1), f"{name} must be None or a whole number >= 1, "
                                                                 f"got {value!r}")
    value = settings["target_acceptance"]
    require(real(value) and 0 < value <= 1, f"target_acceptance must be in (0, 1], got {value!r}")
    for name in ("bias_tol", "curvature_tol", "batch_tol"):
        require(real(settings[name]) and settings[name] > 0, f"{name} must be positive and finite, got {settings[name]!r}")
    for name in ("rel_tol", "noise_sd", "max_acceptance_drop"):  # rel_tol 0: no length settles
        require(real(settings[name]) and settings[name] >= 0, f"{name} must be >= 0 and finite, got {settings[name]!r}")
    value = settings["max_rhat"]  # inf: no limit
    require(isinstance(value, numbers.Real) and not isinstance(value, bool) and value >= 1,
            f"max_rhat must be >= 1 (R-hat is 1 for chains that agree; inf for no limit), got {value!r}")


def _predicted_batch_biases(curvature: dict, tried: list[int], *, eps, localization, nbeta) -> np.ndarray:
    """`(instance, batch tried)`: the minibatch's relative bias at each batch size the minibatch stage
    tried, predicted from the rows' gradient spread at w* (`minibatch_noise`; the calibration's chains
    draw i.i.d. minibatches); NaN throughout without it (full batch, or no dense Hessian)."""
    if not tried or curvature.get("gradient_variance") is None:
        return np.full((len(eps), len(tried)), np.nan)
    spectrum = NoiseSpectrum(curvature["eigenvalues"], curvature["gradient_variance"])
    return np.stack([predicted_batch_bias(spectrum, eps, localization, nbeta, b) for b in tried], axis=1)


def _describe(dims, sizes, i) -> str:
    index = np.unravel_index(int(i), sizes)
    return ", ".join(f"{name}={dims[name][j]}" for name, j in zip(dims, index))


def calibration_dataset(dims, step_sizes, sweep: SweepStage, short: ShortBiasStage, length: LengthStage,
                        long: LongCheckStage, batch: BatchCheckStage, curvature: dict, bound, *, final_eps,
                        final_steps, nbeta, settings: dict, batch_bias_predicted=None) -> xr.Dataset:
    """The calibration dataset: every stage's numbers per instance, and a verdict per instance."""
    inst = tuple(dims)
    sizes = tuple(len(v) for v in dims.values())
    shape = lambda a: np.reshape(np.asarray(a), sizes + np.shape(a)[1:])
    eps_grid = np.asarray(step_sizes)
    n_eps = len(step_sizes)
    S, L, K, G, B = (inst + (name,) for name in ("step_size", "num_steps", "long_check", "localization",
                                                  "batch_check"))
    idx = np.arange(n_eps)[None, :]
    chosen = idx == long.final_index[:, None]
    at_length = idx == length.index[:, None]
    # Metropolis-adjusted chains sample the exact posterior: its quadratic value is at eps 0 (as the stored checks')
    quad_eps = np.zeros_like(final_eps) if settings["metropolis"] else final_eps
    llc_quad = quadratic_llc(curvature["eigenvalues"], quad_eps, length.localization, nbeta) \
        if curvature["eigenvalues"] is not None else np.full(len(final_eps), np.nan)
    change = np.abs(np.diff(length.llc, axis=1, prepend=np.nan))
    sampler_time = eps_grid[length.index][:, None] * length.lengths[None, :] * np.where(np.isfinite(length.llc), 1,
                                                                                        np.nan)
    var = lambda d, v, long_name, units="1": xr.Variable(d, shape(v), {"long_name": long_name,
                                                                          **({"units": units} if units else {})})
    flag = lambda d, v, long_name: var(d, np.asarray(v, bool), long_name, None)
    data_vars = {
        "llc_sweep": var(S, sweep.llc, "LLC estimate of the short sweep chains"),
        "llc_se_sweep": var(S, sweep.llc_se, "standard error of llc_sweep over chains"),
        "acceptance": var(S, sweep.acceptance, "mean acceptance rate of the Metropolis-adjusted chains" if
                          settings["metropolis"] else "mean MALA acceptance proxy (non-divergent chains)"),
        "n_diverged": var(S, sweep.n_diverged, "divergent chains", "chains"),
        "rhat_sweep": var(S, sweep.rhat, "R-hat of the sweep loss traces"),
        "healthy": flag(S, sweep.healthy, "no divergence and acceptance >= acceptance_threshold" +
                        ("" if settings["metropolis"] else ", and step size within the curvature bound at the "
                                                            "first localization")),
        "chosen": flag(S, chosen, "the chosen step size (after the long-chain bias check)"),
        "length_stage": flag(S, at_length, "the step size of the chain-length stage (after the short bias check; "
                                           "within the curvature bound of the localization kept)"),
        "llc_bias_check": var(S, short.llc, "LLC estimate of the bias check (equal sampler time eps x steps as "
                                            "the next larger step size it was compared with)"),
        "llc_se_bias_check": var(S, short.llc_se, "standard error of llc_bias_check over chains"),
        "bias": var(S, short.bias, "estimated discretisation bias lambda(eps) - lambda0 of the linear fit through "
                                   "this and the next smaller step size at equal sampler time"),
        "llc_extrapolated": var(S, short.llc0, "lambda0: the linear eps -> 0 extrapolation of that fit"),
        "bias_consistent": flag(S, short.consistent, "|bias| <= max(bias_tol |lambda0|, 2 SE of the bias)"),
        "sampler_time": var(L, sampler_time, "sampler time eps x num_steps of the chain-length stage"),
        "llc_length": var(L, length.llc, "LLC estimate at the length-stage step size (NaN: not run)"),
        "llc_se_length": var(L, length.llc_se, "standard error of llc_length"),
        "change_length": var(L, change, "|change| of llc_length from the previous (half) length"),
        "rhat_length": var(L, length.rhat, "R-hat at each chain length"),
        "long_check_step_size": var(K, long.step_size, "step size of the long-chain bias check (NaN: not run)"),
        "long_check_num_steps": var(K, long.num_steps, "its chain length (same sampler time)", "steps"),
        "llc_long_check": var(K, long.llc, "LLC estimate at the chosen sampler time, from the length-stage step "
                                           "size down"),
        "bias_long_check": var(K, long.bias, "discretisation bias of that step size against the next smaller one at "
                                             "the same sampler time (linear fit); NaN where not compared"),
        "llc_localization": var(G, length.tried_llc, "LLC estimate at the longest chain tried with this localization"),
        "converged_localization": flag(G, length.tried_converged, "the chain-length rule converged with this "
                                                                  "localization"),
        "num_steps_localization": var(G, length.tried_steps, "longest chain tried with this localization (0: not "
                                                             "tried)", "steps"),
        "llc_batch_check": var(B, batch.llc_batch, "LLC of the short minibatch run of the batch check"),
        "llc_full_batch_check": var(B, batch.llc_full, "LLC of the same run (same keys) with full batch"),
        "batch_check_rel_diff": var(B, batch.rel_diff, "(minibatch - full batch) / |full batch| of the paired runs"),
        # relative, as the stored check's `batch_check_se` (slt_superposition.checks)
        "batch_check_se": var(B, batch.diff_se / np.abs(batch.llc_full), "standard error of batch_check_rel_diff "
                                                                           "(batch means of the paired difference)"),
        "batch_check_steps": var(B, batch.check_steps.astype(np.float64),
                                 "chain length of the paired runs (longer than batch_check_steps where the first "
                                 "run left the check unresolved)", "steps"),
        "batch_check_passed": flag(B, batch.passed, "batch_check_se <= batch_tol and |batch_check_rel_diff| <= "
                                                    "batch_tol + 2 batch_check_se (checks.within)"),
        "batch_bias_predicted": var(B, np.full(batch.passed.shape, np.nan) if batch_bias_predicted is None
                                    else batch_bias_predicted,
                                    "relative minibatch bias against full batch predicted on the quadratic "
                                    "approximation from the rows' gradient spread at w* (minibatch_noise; "
                                    "not a rule of the calibration)"),
        "hessian_top_eigenvalue": var(inst, curvature["top"], "largest eigenvalue of the Hessian of L_n at w*"),
        "step_size_bound": var(inst, bound, "largest step size whose quadratic-approximation discretisation bias is "
                                            "at most curvature_tol, at the localization kept"),
        "llc_quadratic": var(inst, llc_quad, "quadratic-approximation LLC at the chosen step size, localization and "
                                             "nbeta (curved directions only; Metropolis-adjusted chains: at step "
                                             "size 0, the exact posterior's)"),
        "acceptance_plateau": var(inst, sweep.plateau, "acceptance at the two smallest step sizes (max)"),
        "acceptance_threshold": var(inst, sweep.threshold, "min(target, plateau - max_acceptance_drop)"),
        "chosen_step_size": var(inst, final_eps, "the step size chosen"),
        "length_step_size": var(inst, eps_grid[length.index], "the step size of the chain-length stage (at the "
                                                              "localization kept)"),
        "chosen_localization": var(inst, length.localization, "the localization chosen"),
        "chosen_num_steps": var(inst, final_steps, "the chain length chosen (burn-in included)", "steps"),
        "converged": flag(inst, length.converged, "the chain-length rule settled"),
        "bias_consistent_short": flag(inst, short.consistent[np.arange(len(short.index)), short.index],
                                      "the short-chain bias check confirmed the length-stage step size"),
        "bias_check_sampler_time": var(inst, short.check_time, "sampler time of the short-chain bias check"),
    }
    if curvature["eigenvalues"] is not None:
        data_vars["hessian_eigenvalues"] = var(inst + ("eigenvalue",), curvature["eigenvalues"],
                                               "eigenvalues of the Hessian of L_n at w* (ascending)")
    coords = {name: values for name, values in dims.items()}
    coords.update(
        step_size=xr.Variable("step_size", eps_grid, {"long_name": "SGLD step size eps"}),
        num_steps=xr.Variable("num_steps", length.lengths, {"long_name": "chain length of the length stage "
                                                                         "(burn-in included)", "units": "steps"}),
        localization=xr.Variable("localization", settings["localization"], {"long_name": "localization gamma"}),
        batch_check=xr.Variable("batch_check", np.asarray(batch.batch_sizes, np.int64),
                                {"long_name": "minibatch size checked against full batch"}),
    )
    ds = xr.Dataset(data_vars, coords=coords)
    ds["verdict"] = xr.Variable(inst, shape(np.array(_verdicts(ds, settings, batch), dtype=object)),
                                {"long_name": "what was chosen and why"})
    ds.attrs.update(provenance_attrs("calibration", settings))
    ds.attrs.update(
        nbeta=nbeta,
        bias_tol=settings["bias_tol"],
        rel_tol=settings["rel_tol"],
        noise_sd=settings["noise_sd"],
        chosen_batch_size=-1 if batch.chosen is None else int(batch.chosen),
        step_size_rule=(
            f"largest step size such that it and every smaller one has no divergent chain, MALA acceptance >= "
            f"min(target {settings['target_acceptance']}, plateau - {settings['max_acceptance_drop']}) "
            f"({settings['sweep_steps']}-step chains) and " + (
                "(Metropolis-adjusted chains: realised acceptance; no curvature bound, the chains are exact)"
                if settings["metropolis"] else
                f"is within the curvature bound (quadratic-approximation bias <= {settings['curvature_tol']:.0%})") +
            f"; then walk down from it until its bias, from the linear fit "
            f"lambda(eps) = lambda0 + c eps through it and the next smaller step size at one sampler time, is <= "
            f"max({settings['bias_tol']:.0%} of lambda0, 2 SE); not below a step size needing more than "
            f"{settings['max_steps']} steps"),
        length_rule=(
            f"double the chain length from {settings['min_steps']} (at most {settings['max_steps']}) until the "
            f"change of the estimate over the last doubling and over the last two is resolved (SE <= "
            f"{settings['rel_tol']:.0%} of the estimate) and <= {settings['rel_tol']:.0%} of it + "
            f"{settings['noise_sd']:g} SE, with R-hat "
            f"<= {settings['max_rhat']} and no divergence, and not before a sampler time eps x steps of "
            f"{settings['min_relaxation']:g} / gamma; trying the localizations {settings['localization']} in "
            f"turn; then, at that sampler time, step down while the bias of the linear fit through it and the "
            f"next smaller step size (at most {settings['long_check_max_steps']} steps) exceeds both "
            f"{settings['bias_tol']:.0%} of lambda0 and {settings['noise_sd']:g} SE of the fit"),
        batch_rule=(
            f"paired short runs (at most {settings['batch_check_steps']} steps, same keys; up to "
            f"{MAX_CHECK_EXTENSION}x longer where that left the check unresolved) with the minibatch and "
            f"full batch: its SE at most {settings['batch_tol']:.0%} of the full-batch estimate and |difference| <= "
            f"{settings['batch_tol']:.0%} of it + 2 SE on every instance, else the next batch size (x4, up to full "
            f"batch)"),
    )
    return ds


def _verdicts(ds: xr.Dataset, settings: dict, batch: BatchCheckStage) -> list[str]:
    inst = [d for d in ds["chosen_step_size"].dims]
    ds = ds.drop_dims("batch_check")  # unused here, and of size 0 when no minibatch was checked (full batch)
    flat = ds.stack(_i=inst) if inst else ds.expand_dims(_i=[0])
    out = []
    batch_text = ("full batch" if batch.chosen is None else f"batch {batch.chosen}")
    for i in range(flat.sizes["_i"]):
        one = flat.isel(_i=i)
        eps, steps = float(one["chosen_step_size"]), int(one["chosen_num_steps"])
        gamma = float(one["chosen_localization"])
        text = (f"chose step_size {eps:g}, localization {gamma:g}, num_steps {steps} (sampler time {eps * steps:.3g}), "
                f"{batch_text}; " + (f"Metropolis-adjusted chains (no step-size bias; the curvature bound "
                                     f"{float(one['step_size_bound']):.3g} is SGLD's, not applied); "
                                     if settings.get("metropolis") else
                                     f"step-size bound from the curvature {float(one['step_size_bound']):.3g}; "))
        tried = one["num_steps_localization"].values > 0
        unsettled = [f"{g:g}" for g, t, c in zip(one["localization"].values, tried, one["converged_localization"].values)
                     if t and not c and g < gamma]
        if unsettled:
            text += f"the estimate did not settle at localization {', '.join(unsettled)} (chains drifting); "
        if settings.get("metropolis"):
            text += "bias checks not run (no discretisation bias to measure); "
        elif not bool(one["bias_consistent_short"]):
            text += "short-chain discretisation bias NOT confirmed small (no smaller step size affordable); "
        long_eps = one["long_check_step_size"].values
        if np.isfinite(long_eps).sum() > 1:
            text += "the long-chain check moved to smaller step sizes (bias along long chains); "
        floor = settings["min_relaxation"] / gamma
        short_of_floor = (f" (sampler time {eps * steps:.3g}, short of the {floor:.3g} the rule needs)"
                          if eps * steps < floor else "")
        too_few = settings["max_steps"] < 4 * settings["min_steps"]
        text += ("the estimate stopped rising with chain length" if bool(one["converged"]) else
                 f"NOT converged: the chain-length rule needs the lengths min_steps, 2x and 4x, and max_steps="
                 f"{settings['max_steps']} is below 4 x min_steps={settings['min_steps']}" if too_few else
                 f"NOT converged by max_steps={settings['max_steps']}{short_of_floor}; the estimate may still "
                 f"be moving")
        out.append(text)
    return out


# ----------------------------------------------------------------------------- one instance


def require_settled(llc: xr.Dataset, calibration: xr.Dataset) -> xr.Dataset:
    """`llc` (estimated with a calibrated config) with `calibration_converged`, whether each
    instance's chain-length rule settled in `calibration`, and `trusted` requiring it: an estimate
    whose calibration never saw it stop moving with chain length is not trusted either. `calibration`
    from `calibrate_batched` (a `converged` variable) or `calibrate` (a `converged` attr)."""
    dims = llc["trusted"].dims
    out = llc.copy()
    converged = (calibration["converged"] if "converged" in calibration.data_vars
                 else xr.DataArray(bool(calibration.attrs["converged"])))
    out["calibration_converged"] = xr.Variable(dims, converged.transpose(*dims).values.astype(bool), {
        "long_name": "calibration's chain-length rule settled for this instance", "units": "1"})
    out["trusted"] = (out["trusted"] & out["calibration_converged"]).assign_attrs(
        long_name=out["trusted"].attrs["long_name"] + ", and the calibration's chain-length rule settled")
    return out


def calibrate(loss_fn: Callable, params: PyTree, data: PyTree, *, key, **options) -> tuple[SGLDConfig, xr.Dataset]:
    """Choose an `SGLDConfig` for `estimate_llc(loss_fn, params, data, ...)`: `calibrate_batched`
    on this one instance (same options, see there and the module docstring). Returns (config
    with scalar settings, calibration dataset without instance dims; per-instance scalars such
    as the verdict and the chosen settings in attrs)."""
    require("instance_dims" not in options and "data_batched" not in options,
            "calibrate takes one instance; use calibrate_batched for grids")
    one = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], params)
    config, ds = calibrate_batched(loss_fn, one, data, key=key, data_batched=False, **options)
    scalar = {name: np.asarray(getattr(config, name)).reshape(-1)[0].item()
              for name in ("step_size", "localization", "num_steps", "num_burnin")}
    config = SGLDConfig(**{**config.to_dict(), **scalar})
    return config, _single(ds.isel(instance=0))


def _single(ds: xr.Dataset) -> xr.Dataset:
    """A one-instance calibration dataset: trailing not-run rounds dropped, scalars as attrs."""
    def trim(ds, dim, var):
        used = np.flatnonzero(np.isfinite(ds[var].values) if ds[var].dtype.kind == "f" else ds[var].values > 0)
        return ds.isel({dim: slice(0, int(used[-1]) + 1 if used.size else 0)})

    ds = trim(ds, "num_steps", "llc_length")
    ds = trim(ds, "long_check", "long_check_num_steps")
    ds = trim(ds, "localization", "num_steps_localization")
    ds = ds.assign_coords(long_check_step_size=ds["long_check_step_size"],
                          long_check_num_steps=ds["long_check_num_steps"])
    scalars = [name for name, v in ds.data_vars.items() if v.ndim == 0]
    for name in scalars:
        value = ds[name].values.item()
        ds.attrs[name] = int(value) if isinstance(value, (bool, np.bool_)) else value
    config = json.loads(ds.attrs["config"])
    for name in ("bias_check_steps", "bias_check_sampler_time"):
        config[name] = config[name][0]
    ds.attrs["config"] = json.dumps(config)
    ds.attrs["bias_consistent"] = ds.attrs.pop("bias_consistent_short")
    return ds.drop_vars(scalars + ["instance"], errors="ignore")
