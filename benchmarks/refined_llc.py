"""Weight-refined LLC throughput: every feature's column of every instance in one program
(`estimate_refined_llc_batched`, masks x instances) against a loop of one mask per call
(`estimate_refined_llc`, what `estimate_llc(..., mask=)` calls), same chains, one process; the
block curvature (`llc_quadratic`) is left out on both sides, so only the sampling is compared.

    python benchmarks/refined_llc.py [--instances 64] [--n-samples 1024] [--steps 1000]

Grid: TMS n=6, m=2 trained 2000 AdamW steps at `--instances` / 8 feature probabilities
(log-spaced 1 .. 0.01) x 8 seeds; masks: the 6 feature columns (W_:,i, b_i); LLC data n =
`--n-samples`, minibatch 256, step size 1e-4, localization 1, 2 chains, `--steps` steps. Both
sides are timed after a warm-up call on the same shapes (compilation left out). The loop gives
each (instance, mask) the key the batched call gives it, so the two must agree to float
rounding; the largest difference is printed.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import numpy as np

from slt_superposition.llc import SGLDConfig
from slt_superposition.refined import estimate_refined_llc, estimate_refined_llc_batched, feature_masks
from tms_grid import trained_6x2_grid  # benchmarks/tms_grid.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=64, help="instances (a multiple of 8)")
    parser.add_argument("--n-samples", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    loss_fn, params, data, n_inst = trained_6x2_grid(args.instances, args.n_samples)
    config = SGLDConfig(step_size=1e-4, localization=1.0, num_chains=2, num_steps=args.steps,
                        num_burnin=args.steps // 4, batch_size=256)
    one = lambda i: jax.tree_util.tree_map(lambda x: x[i], (params, data))
    masks = feature_masks(one(0)[0])
    n_masks = masks["b"].shape[0]
    key = jax.random.key(1)
    mask_keys = jax.vmap(lambda k: jax.random.split(k, n_masks))(jax.random.split(key, n_inst))
    print(f"{platform.processor() or platform.machine()}, jax {jax.__version__} on {jax.default_backend()}; "
          f"{n_inst} TMS 6x2 instances x {n_masks} masks, n = {args.n_samples}, {args.steps} steps, 2 chains")

    mask = lambda j: jax.tree_util.tree_map(lambda m: m[j], masks)
    # warm-up: compile both paths on these shapes
    estimate_refined_llc(loss_fn, *one(0), config=config, key=mask_keys[0, 0], mask=mask(0), curvature=False)
    estimate_refined_llc_batched(loss_fn, params, data, masks=masks, config=config, key=key, curvature=False)

    start = time.perf_counter()
    batched = estimate_refined_llc_batched(loss_fn, params, data, masks=masks, config=config, key=key,
                                           curvature=False)
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    looped = np.array([[float(estimate_refined_llc(loss_fn, *one(i), config=config, key=mask_keys[i, j],
                                                   mask=mask(j), curvature=False)["llc_mean"]) for j in range(n_masks)]
                       for i in range(n_inst)])
    t_loop = time.perf_counter() - start
    calls = n_inst * n_masks
    print(f"one program (masks x instances): {t_batched:.1f} s for {calls} refined LLCs")
    print(f"loop of one mask per call:       {t_loop:.1f} s ({t_loop / calls * 1000:.0f} ms per call)")
    print(f"ratio: {t_loop / t_batched:.1f}x")
    diff = np.nanmax(np.abs(batched["llc_mean"].values - looped))
    print(f"largest |difference| of the estimates: {diff:.2e} (mean |llc| {np.nanmean(np.abs(looped)):.2f})")


if __name__ == "__main__":
    main()
