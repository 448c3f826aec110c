"""How long in sampler time a trained TMS needs before its LLC estimate settles.

`python -m experiments.trusted_vs_cap` found the quick flagship's estimates still rising between
2400 and 19,200 steps, and the length rule settling almost nowhere. This study takes instances of
the quick grid's model (trained and refined exactly as the flagship does, n = 4096,
localization 1, batch 512, nbeta = n / log n) and estimates each at growing sampler times
eps x steps, at two step sizes, holding the key fixed, so that a rise with sampler time at one
step size, and agreement between step sizes at equal sampler time, can both be read off.

    python -m experiments.tms_sampler_time                               # n6_m2, p = 1, 0.16, 0.01 (seed 0)
    python -m experiments.tms_sampler_time --model 20,5 --times 0.25 1 4 --step-sizes 1e-4
    python -m experiments.tms_sampler_time --batch-size full --step-sizes 1e-4 --times 1 4 16   # no minibatch noise
    python -m experiments.tms_sampler_time --burn-in-fraction 0.5 --step-sizes 1e-4 --times 1 2 4 8 16

Prints one line per (step size, sampler time): the LLC of every instance (mean +- SE over 4
chains) and the wall time.
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import numpy as np

from experiments.weights_vs_activations import QUICK, _refined_inputs, model_key, model_train_config
from slt_superposition.diagnostics import mean_and_se
from slt_superposition.llc import SGLDConfig, estimate_llc_batched
from toy_models.train import train_grid

CHAINS = 4


def inputs(n: int, m: int, probabilities: list[float]):
    """(loss_fn, params, data, labels) of seed 0 at the quick grid's feature probabilities nearest
    `probabilities`, trained and refined as `weights_vs_activations.compute_model` does."""
    config = QUICK
    train = train_grid(model_train_config(n, m, config), progress=False)
    loss_fn, params, data, _ = _refined_inputs(train, config, jax.random.fold_in(model_key(n, m, config), 2))
    fps = np.asarray(config.feature_probabilities)
    rows = sorted({int(np.argmin(np.abs(np.log(fps) - math.log(p)))) for p in probabilities})
    pick = lambda tree: jax.tree_util.tree_map(lambda x: x[np.asarray(rows), 0, 0], tree)  # (fp, decay, seed, ...)
    return loss_fn, pick(params), pick(data), [f"p={fps[r]:.3g}" for r in rows]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="6,2", help="n,m of the quick grid's model (default %(default)s)")
    parser.add_argument("--probabilities", type=float, nargs="+", default=[1.0, 0.16, 0.01])
    parser.add_argument("--step-sizes", type=float, nargs="+", default=[1e-4, 3.16e-5])
    parser.add_argument("--times", type=float, nargs="+", default=[0.25, 0.5, 1, 2, 4],
                        help="sampler times eps x steps (localization 1, so also in units of 1 / gamma)")
    parser.add_argument("--burn-in-fraction", type=float, default=0.0,
                        help="leading fraction of each chain left out of the estimate (default %(default)s: none; "
                             "0.5 is calibrate's length stage)")
    parser.add_argument("--batch-size", default=str(QUICK.llc_batch_size),
                        help="minibatch size of the chains, or 'full' for full batch (default %(default)s, the quick grid's)")
    args = parser.parse_args(argv)
    n, m = (int(v) for v in args.model.split(","))
    if not (args.batch_size == "full" or args.batch_size.isdigit()):
        parser.error(f"--batch-size must be a positive integer or 'full', got {args.batch_size!r}")
    if not 0 <= args.burn_in_fraction < 1:
        parser.error(f"--burn-in-fraction must be in [0, 1), got {args.burn_in_fraction}")
    batch_size = None if args.batch_size == "full" else int(args.batch_size)
    loss_fn, params, data, labels = inputs(n, m, args.probabilities)
    print(f"n{n}_m{m}, quick grid, seed 0, {', '.join(labels)}; n = {QUICK.llc_samples}, batch "
          f"{batch_size or 'full'}, localization 1, {CHAINS} chains", flush=True)
    for eps in args.step_sizes:
        for t in args.times:
            steps = max(2, int(round(t / eps)))
            config = SGLDConfig(step_size=eps, localization=1.0, num_chains=CHAINS, num_steps=steps,
                                num_burnin=int(steps * args.burn_in_fraction),
                                batch_size=batch_size, trace_every=max(1, steps // 200))
            start = time.perf_counter()
            est = estimate_llc_batched(loss_fn, params, data, config=config, key=jax.random.key(7), checks=False)
            per_chain = est["llc_per_chain"].values
            se = mean_and_se(per_chain)[1]
            values = ", ".join(f"{label} {v:.2f} +- {s:.2f}" for label, v, s in
                               zip(labels, est["llc_mean"].values, se))
            print(f"eps {eps:.3g}, {steps} steps (sampler time {eps * steps:.3g}): {values}; "
                  f"{time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
