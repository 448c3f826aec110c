"""What the calibration's step-size sweep sees on an n-study instance at large n.

On the H200 (TensorFloat-32 products) `reproduce tms-llc-vs-n` stopped at n6_m2, p = 0.05,
n = 2^20 with "the smallest step size 1e-06 is already unhealthy". This recomputes, in this
process's precision, what the sweep's health rule uses for that instance: the refined point's
||grad L_n||, the top Hessian eigenvalue and the curvature step-size bound (2% quadratic bias at
localization 1, nbeta = n / log n), and the MALA acceptance, divergences and LLC of 1000-step
chains (4 chains, batch 500, as the study's calibration) at the two smallest step sizes, which
set the acceptance plateau.

    python -m experiments.tms_large_n_check --train-from DIR [--model n6_m2] [--p 0.05] [--log2-n 20]

DIR holds the study's train_{model}.nc (`reproduce tms-llc-vs-n` writes it).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import experiments.tms_llc_vs_n as study
from slt_superposition.curvature import curvature_batched, step_size_bound
from slt_superposition.io import open_result
from slt_superposition.llc import SGLDConfig, default_nbeta, estimate_llc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-from", required=True)
    parser.add_argument("--model", default="n6_m2")
    parser.add_argument("--p", type=float, default=0.05)
    parser.add_argument("--log2-n", type=int, default=20)
    parser.add_argument("--step-sizes", type=float, nargs="+", default=[1e-6, 3.16e-6])
    args = parser.parse_args(argv)
    train = open_result(f"{args.train_from}/train_{args.model}.nc", kind="train")
    i = int(np.argmin(np.abs(train["feature_probability"].values - args.p)))
    n = 2 ** args.log2_n
    start = time.perf_counter()
    loss_fn, params, data, grad_norm, _ = study.refined_point(train, i, n)
    one = lambda tree: jax.tree_util.tree_map(lambda x: x[None], tree)
    curvature = curvature_batched(loss_fn, one(params), one(data), data_batched=True, key=jax.random.key(0))
    nbeta = default_nbeta(n)
    bound = float(np.ravel(step_size_bound(curvature["eigenvalues"], 1.0, nbeta, top=curvature["top"]))[0])
    print(f"{args.model} p={float(train['feature_probability'].values[i]):g} n=2^{args.log2_n} "
          f"({jax.config.jax_default_matmul_precision} products): ||grad L_n|| {grad_norm:.1e}, top eigenvalue "
          f"{curvature['top'][0]:.3g}, nbeta {nbeta:.0f}, curvature step-size bound {bound:.3g} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    for eps in args.step_sizes:
        config = SGLDConfig(step_size=eps, localization=1.0, num_chains=4, num_steps=1000, batch_size=500)
        est = estimate_llc(loss_fn, params, data, config=config, key=jax.random.key(3), checks=False)
        print(f"  eps {eps:g}: MALA acceptance per chain {np.round(est['mala_acceptance'].values, 3).tolist()}, "
              f"divergent chains {int(est['n_diverged'])}, llc {float(est['llc_mean']):.2f}", flush=True)


if __name__ == "__main__":
    main()
