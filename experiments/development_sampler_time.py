"""Study: the development part's final snapshots against sampler time, at several n.

With Metropolis-adjusted chains the flagship's development part (Chen et al.'s 6-feature,
2-neuron TMS, full batch through the closed form of L_n) settles at every n, and its settled
estimates of the final snapshots (class 5-gon+1, lambda 8.5) read above lambda at n = 2^14,
within 3% below it at 2^16 and 2-6% below it at 2^18 (docs/experiments/weights_vs_activations.md).
The length rule settles on a change of at most 5% per doubling, at sampler times of 0.5-1. This
holds every seed's final weights (trained as the flagship trains them) and estimates them at
growing sampler times eps x steps, the second half of each chain as the estimate, one key, at
step sizes eps = s / nbeta for each s given (about the calibration's choice at s = 0.33), so that
a rise with sampler time (a chain still relaxing) and agreement between step sizes (no step-size
bias: the chains are exact) can both be read off, at each n.

    python -m experiments.development_sampler_time                      # 2^16 and 2^18, times 0.5 to 8
    python -m experiments.development_sampler_time --log2-n 18 --times 1 4 16 --scales 0.33 0.1
    python -m experiments.development_sampler_time --sampler sgld --scales 0.1 0.033
    python -m experiments.development_sampler_time --refine      # at a critical point of each n's L_n

The final weights are trained on fresh batches (the population loss), so they are near, not at, a
critical point of the L_n of the LLC's n samples; `--refine` first moves them to one
(`analysis.refine.refine_batched`, as the flagship's grid does before its LLCs) and prints ||grad L_n||
before and after.

Prints one line per (n, step size, sampler time): every seed's LLC (mean +- SE over 4 chains),
its relative error against lambda where its class has one, the acceptance rate, the effective
sample size of the post-burn-in loss trace per 1000 chain-steps (the sampler's efficiency at that
step size; `trace_every` thins the trace to about 200 blocks, so it is a lower bound where the
trace is far from independent block to block) and the wall time.
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import numpy as np

from analysis.development import full_batch_inputs
from analysis.refine import refine_batched
from experiments.development_final_vs_n import development_config
from slt_superposition import grid
from slt_superposition.diagnostics import mean_and_se
from slt_superposition.llc import SGLDConfig, default_nbeta, estimate_llc_batched
from slt_superposition.theory import critical_point_class
from toy_models.train import llc_inputs, train_grid

CHAINS = 4


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("quick", "default", "full"), default="default",
                        help="the flagship size whose development training to follow")
    parser.add_argument("--log2-n", type=int, nargs="+", default=[16, 18], help="sample counts n = 2^k")
    parser.add_argument("--times", type=float, nargs="+", default=[0.5, 1, 2, 4, 8],
                        help="sampler times eps x steps (localization 1, so also in units of 1 / gamma)")
    parser.add_argument("--steps", type=int, nargs="+",
                        help="chain lengths instead of --times (the same length at every step size: compares "
                             "the step sizes' efficiency per step)")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.33],
                        help="step sizes as s / nbeta (0.33: about the calibration's choice at 2^16 and 2^18)")
    parser.add_argument("--sampler", choices=("mala", "sgld"), default="mala",
                        help="Metropolis-adjusted chains (the flagship's development default) or plain SGLD")
    parser.add_argument("--refine", action="store_true",
                        help="refine the final weights to a critical point of each n's L_n first")
    args = parser.parse_args(argv)
    if not all(8 <= k <= 24 for k in args.log2_n):
        parser.error("--log2-n values must be in 8..24")
    if not all(t > 0 and math.isfinite(t) for t in args.times + args.scales):
        parser.error("--times and --scales must be positive")
    if args.steps is not None and not all(v >= 4 for v in args.steps):
        parser.error("--steps must be at least 4")
    metropolis = args.sampler == "mala"
    train_config, config = development_config(args.size)
    train = train_grid(train_config, progress=False)
    W = train["W"].transpose(*grid.GRID_DIMS, "hidden", "feature").values.reshape(-1, 2, 6)
    b = train["b"].transpose(*grid.GRID_DIMS, "feature").values.reshape(-1, 6)
    classes = [critical_point_class(w, bias) for w, bias in zip(W, b)]
    print(f"{args.size} development, {len(classes)} seeds' final weights: "
          f"{', '.join(c.label for c in classes)}; {'Metropolis-adjusted' if metropolis else 'plain SGLD'}, "
          f"full batch (closed form), localization 1, {CHAINS} chains, second halves", flush=True)
    for k in args.log2_n:
        n = 2 ** k
        key = jax.random.key(config.seed + 10 * k)  # the data of development_final_vs_n at this n
        loss_fn, params, data = llc_inputs(train, n_samples=n, key=jax.random.fold_in(key, 0))
        loss_fn, data = full_batch_inputs(train, loss_fn, data)  # leaves (seed, ...)
        if args.refine:
            params, before, after = refine_batched(loss_fn, params, data)
            print(f"n = 2^{k}: refined to a critical point of L_n, ||grad L_n|| per seed "
                  f"{', '.join(f'{v:.1e}' for v in np.asarray(before))} -> "
                  f"{', '.join(f'{v:.1e}' for v in np.asarray(after))}", flush=True)
        nbeta = default_nbeta(n)
        for scale in args.scales:
            eps = scale / nbeta
            for steps in (args.steps or [max(4, int(round(t / eps))) for t in args.times]):
                sgld = SGLDConfig(step_size=eps, localization=1.0, num_chains=CHAINS, num_steps=steps,
                                  num_burnin=steps // 2, batch_size=None, metropolis=metropolis,
                                  trace_every=max(1, steps // 200))
                start = time.perf_counter()
                est = estimate_llc_batched(loss_fn, params, data, config=sgld, key=jax.random.key(7), checks=False)
                per_chain = est["llc_per_chain"].values.reshape(len(classes), -1)
                mean, se = mean_and_se(per_chain)
                acceptance = est["mala_acceptance"].values.reshape(len(classes), -1).mean(-1)
                ess = est["ess"].values.ravel() / (CHAINS * (steps - steps // 2)) * 1000  # per 1000 kept chain-steps
                cells = []
                for c, v, s in zip(classes, mean, se):
                    rel = f" ({(v - c.llc) / c.llc:+.1%})" if c.llc else ""
                    cells.append(f"{v:.2f} +- {s:.2f}{rel}")
                print(f"n = 2^{k}, eps {eps:.3g} ({scale:g} / nbeta), {steps} steps (sampler time {eps * steps:.3g}): "
                      f"{'; '.join(cells)}; acceptance {acceptance.min():.2f}-{acceptance.max():.2f}; "
                      f"loss-trace ESS per 1000 chain-steps {ess.min():.2f}-{ess.max():.2f}; "
                      f"{time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
