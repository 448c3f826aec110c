"""Study: the chain-length rule's standard error of a change, added over the two estimates or paired per chain.

The calibration's length rule (`calibration.length_stage`, stage 2 of docs/calibration.md) settles
an instance when the change of the estimate between chains of L and 2L steps (and 4L) is resolved:
its standard error at most 5% of the estimate, taken as the two estimates' standard errors added
in quadrature ("the post-burn-in windows of a chain and its doubling do not overlap"). Each of
those standard errors is the larger of the spread over chains and the pooled batch means. But the
two estimates come from the *same* chains: a chain of 2L steps with the same key continues the
chain of L steps (`slt_superposition.chain`), so chain c's estimate at L (steps L/2..L) and at 2L
(steps L..2L) share whatever that chain holds for longer than L/2 steps: a level it has settled
at, a slow direction it has not left. That part of the spread over chains cancels in the
per-chain difference d_c = e_c(2L) - e_c(L), whose spread over chains gives the paired standard
error std(d) / sqrt(C) (C - 1 degrees of freedom; the batch means of the difference, pooled over
chains, are its floor, as the batch means of each estimate are the rule's).

This trains and refines the quick flagship grid's models (as `experiments.weights_vs_activations`
does), calibrates them on the quick budget for each instance's step size and localization, then
runs `estimate_llc_batched` with `--chains` chains at each of `--lengths` (half of each chain as
burn-in, the rule's), the same key at every length, and prints per model and doubling: the
median over instances of the paired SE over the added one, and the share of instances whose
change is resolved (SE <= 5% of the estimate) and within 5% + 2 SE under each.

    python -m experiments.length_rule_pairing [--models 6,2 5,2] [--chains 8] [--lengths 2560 5120 10240 20480]
    python -m experiments.length_rule_pairing --details          # every instance's numbers

The rule's standard error is the same formula as `calibration._stable`'s; the paired one is what
a rule reading per-chain differences would use. Which to use is the question the printout
answers (docs/calibration.md, "The length rule's standard error").
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import numpy as np

from experiments.weights_vs_activations import QUICK, _calibrate, _refined_inputs, model_key, model_train_config
from slt_superposition import estimate_llc_batched, grid
from slt_superposition.calibration import BATCH_MEANS, TRACE_BLOCKS
from slt_superposition.checks import within
from slt_superposition.diagnostics import batch_means_se
from toy_models.train import train_grid

REL_TOL = 0.05  # the rule's tolerance (`calibrate(rel_tol=...)`; its 2 SE allowance is `checks.within`'s)


def chains_at_lengths(n: int, m: int, lengths, chains: int, config=QUICK) -> dict:
    """Model (n, m) of the quick grid trained, refined and calibrated as the flagship does; then
    `chains` chains of every length in `lengths` at each instance's calibrated step size and
    localization, half of each as burn-in, one key for every length (so the chains continue each
    other). Returns per length the per-chain estimates `(instance, chain)` and the batch-means
    standard error of the estimate and of the per-chain difference from the previous length."""
    key = model_key(n, m, config)
    train = train_grid(model_train_config(n, m, config), progress=False)
    loss_fn, params, data, _ = _refined_inputs(train, config, jax.random.fold_in(key, 2))
    sgld, _ = _calibrate(loss_fn, params, data, jax.random.fold_in(key, 1), config,
                         instance_dims=grid.grid_coords(train))
    chain_key = jax.random.fold_in(key, 7)
    out = {"step_size": np.asarray(sgld.step_size, np.float64).ravel(), "per_chain": [], "bm_se": [], "bm_diff_se": []}
    previous = None
    for length in lengths:
        cfg = dataclasses.replace(sgld, num_chains=chains, num_steps=int(length), num_burnin=int(length) // 2,
                                  trace_every=int(length) // TRACE_BLOCKS)
        ds = estimate_llc_batched(loss_fn, params, data, config=cfg, key=chain_key,
                                  instance_dims=grid.grid_coords(train), checks=False)
        per_chain = ds["llc_per_chain"].values.reshape(-1, chains)
        trace = ds["loss_trace"].values.reshape(per_chain.shape + (-1,)).astype(np.float64)
        nbeta = ds["nbeta"].values.ravel()
        healthy = ~ds["diverged"].values.reshape(per_chain.shape)
        post = np.broadcast_to(ds["step"].values >= int(length) // 2, (per_chain.shape[0], trace.shape[-1]))
        out["per_chain"].append(per_chain)
        out["bm_se"].append(nbeta * batch_means_se(trace, post, healthy, BATCH_MEANS))
        if previous is not None:
            # both post-burn-in windows are the second half of their trace (steps L/2..L of the
            # previous length, L..2L of this one), 64 blocks each: block j of one against block j of
            # the other, so batches of the difference pair the same relative stretch of each window
            paired = trace[..., TRACE_BLOCKS // 2:] - previous[..., TRACE_BLOCKS // 2:]
            # the premise: this chain continues the previous one (its steps L/2..L, blocks 32..63 of
            # L/64 steps, are the previous chain's blocks 64..127 of L/128 steps, two by two)
            again = 0.5 * (previous[..., TRACE_BLOCKS // 2::2] + previous[..., TRACE_BLOCKS // 2 + 1::2])
            shared = trace[..., TRACE_BLOCKS // 4: TRACE_BLOCKS // 2]
            both = healthy & was_healthy
            if not np.allclose(shared[both], again[both], rtol=1e-4, atol=0):
                raise AssertionError(f"chains of {length} steps do not continue those of {length // 2}")
            every = np.ones(paired.shape[::2], bool)
            out["bm_diff_se"].append(nbeta * batch_means_se(paired, every, both, BATCH_MEANS))
        else:
            out["bm_diff_se"].append(np.full(per_chain.shape[0], np.nan))
        previous, was_healthy = trace, healthy
    return out


def change_errors(before: np.ndarray, now: np.ndarray, floor_before, floor_now, floor_diff):
    """Two standard errors of the change of the mean over chains between per-chain estimates
    `before` and `now` `(instance, chain)` of the same chains: added (each estimate's, the spread
    over chains floored by its batch means `floor_*`, in quadrature: the rule's) and paired (the
    spread over chains of each chain's own change, floored by `floor_diff`). Returns `(instance,)` each."""
    C = now.shape[1]
    spread = lambda x: x.std(axis=1, ddof=1) / np.sqrt(C)
    added = np.hypot(np.fmax(spread(before), floor_before), np.fmax(spread(now), floor_now))
    return added, np.fmax(spread(now - before), floor_diff)


def compare(out: dict, lengths, details: bool = False) -> list[str]:
    """Per doubling: the added and the paired SE of the change, and the rule's verdicts under each."""
    lines = []
    for r in range(1, len(lengths)):
        before, now = out["per_chain"][r - 1], out["per_chain"][r]
        est_before, est_now = before.mean(axis=1), now.mean(axis=1)
        added, paired = change_errors(before, now, out["bm_se"][r - 1], out["bm_se"][r], out["bm_diff_se"][r])
        change = np.abs(est_now - est_before)
        scale = REL_TOL * np.abs(est_now)
        verdict = lambda se: within(change / np.abs(est_now), se / np.abs(est_now), REL_TOL)  # the rule's test
        ratio = paired / added
        lines.append(
            f"  {lengths[r - 1]} -> {lengths[r]} steps: paired SE / added SE median {np.median(ratio):.2f} "
            f"(range {ratio.min():.2f}-{ratio.max():.2f}); resolved and within 5% + 2 SE: added "
            f"{verdict(added).mean():.0%}, paired {verdict(paired).mean():.0%}; resolved: added "
            f"{(added <= scale).mean():.0%}, paired {(paired <= scale).mean():.0%}; median |change| "
            f"{np.median(change / np.abs(est_now)):.1%}")
        if details:
            for i in range(len(est_now)):
                lines.append(f"    instance {i} eps {out['step_size'][i]:.2g}: {est_before[i]:.2f} -> {est_now[i]:.2f} "
                             f"(added SE {added[i]:.2f}, paired {paired[i]:.2f}, of which the batch-means "
                             f"floor {out['bm_diff_se'][r][i]:.2f})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["6,2", "5,2"])
    parser.add_argument("--chains", type=int, default=8, help="chains per instance (at least 3)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[2560, 5120, 10240, 20480],
                        help="chain lengths, each twice the one before (the quick grid's cap is 2400)")
    parser.add_argument("--details", action="store_true", help="print every instance")
    args = parser.parse_args()
    if args.chains < 3:
        parser.error("--chains must be at least 3 (the paired SE needs 2 degrees of freedom)")
    if any(b != 2 * a for a, b in zip(args.lengths, args.lengths[1:])) or args.lengths[0] % TRACE_BLOCKS:
        parser.error(f"--lengths must double each time and be multiples of {TRACE_BLOCKS} (whole trace blocks)")
    for model in args.models:
        n, m = (int(v) for v in model.split(","))
        start = time.perf_counter()
        out = chains_at_lengths(n, m, args.lengths, args.chains)
        print(f"n{n}_m{m} ({out['per_chain'][0].shape[0]} instances, {args.chains} chains, step sizes "
              f"{out['step_size'].min():.2g}-{out['step_size'].max():.2g}; {time.perf_counter() - start:.0f} s):",
              flush=True)
        for line in compare(out, args.lengths, details=args.details):
            print(line, flush=True)


if __name__ == "__main__":
    main()
