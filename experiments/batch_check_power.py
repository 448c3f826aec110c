"""Study: can the calibration's minibatch check keep a minibatch on the default flagship grid?

On the default grid (n = 16,384, batch 512) the calibration kept full batch on four of five
models (docs/experiments/weights_vs_activations.md): its paired check of 300 steps must resolve
2% (standard error at most 2% of the estimate) on every instance, and at batch 512 its standard
error was 5-7%, so every batch size up to 8192 failed somewhere and the estimate, its checks and
the susceptibility chains all ran at full batch (32 x the work of a step at 512). Two things
made the check noisy or short, and this measures each:

- the excess loss L_B(w_t) - L_n(w*) (devinterp's) carries the minibatch's sampling noise at w*;
  the paired excess L_B(w_t) - L_B(w*) (`chain.PAIRED_EXCESS`, the same rows at w*) does not;
- a check left unresolved but consistent with no bias now runs again for as long as its standard
  error says resolves 2% (`checks.resolving_steps`, at most `MAX_CHECK_EXTENSION` x longer).

For each model it trains the default grid's instances at a few feature probabilities and seeds
(the flagship's training, refinement and calibration settings; same keys as the flagship), runs
the flagship's `calibrate_batched`, and prints per batch size tried the share of instances that
passed, the median standard error and the check lengths, then the batch kept and the wall time.
`--devinterp-excess` uses L_B(w_t) - L_n(w*) and `--extension 1` turns the rerun off (together:
the calibration before both changes). Each setting in its own process (programs are traced once).
`--estimate-step-size EPS` skips the calibration and instead estimates every instance at EPS
(batch 512, localization 1, 2 chains of 4000 steps, one key, no checks), printing the median LLC
and relative standard error: run it with and without `--devinterp-excess` to compare the two
readings of the same chains' settings.

    python -m experiments.batch_check_power [--models 4,2 6,2] [--probabilities 5] [--seeds 2]
        [--devinterp-excess] [--extension 8] [--estimate-step-size 3.2e-5]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import numpy as np

from experiments.weights_vs_activations import FlagshipConfig, _calibrate, _refined_inputs, model_key, model_train_config
from slt_superposition import SGLDConfig, calibration, chain, checks, estimate_llc_batched, grid
from toy_models.train import train_grid


def _model(text: str) -> tuple[int, int]:
    try:
        n, m = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a model is N,M (features, hidden), got '{text}'") from None
    if not 1 <= m <= n:
        raise argparse.ArgumentTypeError(f"need 1 <= M <= N, got {text}")
    return n, m


def run_model(n: int, m: int, config: FlagshipConfig, probabilities: int, seeds: int,
              estimate_step_size: float | None = None) -> dict:
    """Train, refine and calibrate `probabilities` x `seeds` instances of model (n, m) as the
    flagship does (its first `seeds` seeds at every `20 / probabilities`-th feature probability);
    with `estimate_step_size`, estimate them at that step size instead of calibrating."""
    every = max(1, config.n_feature_probabilities // probabilities)
    chosen = config.feature_probabilities[::every][:probabilities]
    sub = dataclasses.replace(config, n_feature_probabilities=len(chosen), seeds=seeds)
    train_config = dataclasses.replace(model_train_config(n, m, sub), feature_probabilities=chosen)
    start = time.perf_counter()
    train = train_grid(train_config, progress=False)
    key = model_key(n, m, config)
    loss_fn, params, data, _ = _refined_inputs(train, config, jax.random.fold_in(key, 2))
    dims = grid.grid_coords(train)
    if estimate_step_size is not None:
        fixed = SGLDConfig(step_size=estimate_step_size, localization=1.0, num_chains=2, num_steps=4000,
                           num_burnin=2000, batch_size=config.llc_batch_size)
        llc = estimate_llc_batched(loss_fn, params, data, config=fixed, key=jax.random.key(5), instance_dims=dims,
                                   checks=False)
        return {"llc": llc, "seconds": time.perf_counter() - start, "instances": int(np.prod(grid.grid_shape(train)))}
    cal_key = jax.random.split(jax.random.fold_in(key, 1))[0]
    sgld, sweep = _calibrate(loss_fn, params, data, cal_key, config, instance_dims=dims)
    return {"sweep": sweep, "batch": sgld.batch_size, "seconds": time.perf_counter() - start,
            "instances": int(np.prod(grid.grid_shape(train)))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=_model, nargs="+", default=[(4, 2), (6, 2)], help="N,M pairs")
    parser.add_argument("--probabilities", type=int, default=5, help="feature probabilities per model (of 20)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per feature probability (of 8)")
    parser.add_argument("--devinterp-excess", action="store_true",
                        help="excess L_B(w_t) - L_n(w*) as devinterp (default: L_B(w_t) - L_B(w*))")
    parser.add_argument("--extension", type=int, default=checks.MAX_CHECK_EXTENSION,
                        help="an unresolved check runs again at most this many times longer (1: never)")
    parser.add_argument("--estimate-step-size", type=float, default=None,
                        help="no calibration: estimate every instance at this step size (batch 512, 4000 steps)")
    args = parser.parse_args(argv)
    if not 1 <= args.probabilities <= 20 or not 1 <= args.seeds <= 8:
        parser.error("need 1 <= --probabilities <= 20 and 1 <= --seeds <= 8")
    if args.estimate_step_size is not None and not args.estimate_step_size > 0:
        parser.error(f"--estimate-step-size must be positive, got {args.estimate_step_size}")
    if args.extension < 1:
        parser.error(f"--extension must be at least 1, got {args.extension}")
    chain.PAIRED_EXCESS = not args.devinterp_excess
    calibration.MAX_CHECK_EXTENSION = checks.MAX_CHECK_EXTENSION = args.extension
    config = FlagshipConfig()
    label = f"excess {'L_B(w_t) - L_n(w*)' if args.devinterp_excess else 'L_B(w_t) - L_B(w*)'}, extension {args.extension}x"
    for n, m in args.models:
        out = run_model(n, m, config, args.probabilities, args.seeds, args.estimate_step_size)
        if "llc" in out:
            llc = out["llc"]
            mean, se = llc["llc_mean"].values.ravel(), llc["llc_se"].values.ravel()
            print(f"n{n}_m{m} ({label}): {out['instances']} instances at eps {args.estimate_step_size:g}: median llc "
                  f"{np.median(mean):.3f}, median relative SE {np.median(se / np.abs(mean)):.4f}; "
                  f"{out['seconds']:.0f} s", flush=True)
            print("    llc " + " ".join(f"{v:.2f}" for v in mean), flush=True)
            continue
        sweep = out["sweep"]
        print(f"n{n}_m{m} ({label}): {out['instances']} instances, batch kept "
              f"{out['batch'] or 'full'}; calibration {out['seconds']:.0f} s", flush=True)
        for b in sweep["batch_check"].values:
            one = sweep.sel(batch_check=b)
            se, steps = one["batch_check_se"].values.ravel(), one["batch_check_steps"].values.ravel()
            rel = np.abs(one["batch_check_rel_diff"].values.ravel())
            print(f"    batch {b}: passed {np.mean(one['batch_check_passed'].values):.0%}, median |rel| "
                  f"{np.nanmedian(rel):.4f}, median SE {np.nanmedian(se):.4f}, max SE {np.nanmax(se):.4f}, "
                  f"check steps {int(np.nanmin(steps))}-{int(np.nanmax(steps))}", flush=True)


if __name__ == "__main__":
    main()
