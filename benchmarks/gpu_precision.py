"""TensorFloat-32 against float32 matrix products on one TMS point of the n study, side by side.

    python benchmarks/gpu_precision.py [--train-from DIR] [--log2-n 18] [--steps 20000]

On a GPU whose float32 `dot` defaults to TensorFloat-32 (Ampere and later), this measures what
that rounding does to the numbers the project computes, on n6_m2 at p = 0.05 (the tms-llc-vs-n
instance; its train_n6_m2.nc from DIR) at n = 2^log2_n, once under each precision:

- L-BFGS refinement to a critical point of L_n (300 iterations): ||grad L_n|| before and after;
- L_n at the refined point in the other precision: nbeta x the difference is the loss rounding in
  units of the LLC;
- an LLC estimate at fixed settings (eps 1e-5, gamma 1, 4 chains, batch 8000) from the same key;
- LLC chain-steps per second of the gpu_scale workload (accelerator blocks).

On a CPU both precisions are float32 and the two columns agree.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import slt_superposition  # noqa: F401  (sets float32 matmuls unless the user chose otherwise)
from analysis.refine import refine
from slt_superposition.io import open_result
from slt_superposition.llc import SGLDConfig, default_nbeta, estimate_llc
from toy_models.train import llc_inputs

PRECISIONS = ("tensorfloat32", "highest")


def measure(precision: str, train, n: int, steps: int) -> dict:
    with jax.default_matmul_precision(precision):
        key = jax.random.fold_in(jax.random.key(0), n)  # as tms_llc_vs_n.measure_point
        loss_fn, params, data = llc_inputs(train, n_samples=n, key=key)
        i = int(np.argmin(np.abs(train["feature_probability"].values - 0.05)))
        params = jax.tree_util.tree_map(lambda x: x[i], params)
        data = jax.tree_util.tree_map(lambda x: x[i], data)
        start = time.perf_counter()
        refined, before, after = jax.jit(lambda p, d: refine(loss_fn, p, d, tol=0.0))(params, data)
        jax.block_until_ready(refined)
        refine_s = time.perf_counter() - start
        loss = float(jax.jit(loss_fn)(refined, data))
        config = SGLDConfig(step_size=1e-5, localization=1.0, num_chains=4, num_steps=steps, batch_size=min(8000, n))
        start = time.perf_counter()
        est = estimate_llc(loss_fn, refined, data, config=config, key=jax.random.key(1), checks=False)
        llc_s = time.perf_counter() - start
    other = "highest" if precision == "tensorfloat32" else "tensorfloat32"
    with jax.default_matmul_precision(other):
        loss_other = float(jax.jit(loss_fn)(refined, data))
    return dict(before=float(before), after=float(after), loss=loss, loss_other=loss_other, refine_s=refine_s,
                llc=float(est["llc_mean"]), llc_se=float(est["llc_per_chain"].std(ddof=1) / 2), llc_s=llc_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-from", default="results/tms_llc_vs_n")
    parser.add_argument("--log2-n", type=int, default=18)
    parser.add_argument("--steps", type=int, default=20_000)
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}); jax {jax.__version__}; package default "
          f"precision {jax.config.jax_default_matmul_precision}", flush=True)
    train = open_result(f"{args.train_from}/train_n6_m2.nc", kind="train")
    n = 2 ** args.log2_n
    nbeta = default_nbeta(n)
    for precision in PRECISIONS:
        r = measure(precision, train, n, args.steps)
        print(f"{precision:>13}: refine ||grad L_n|| {r['before']:.2e} -> {r['after']:.2e} ({r['refine_s']:.1f} s); "
              f"L_n {r['loss']:.9f}, in the other precision {r['loss_other']:.9f} (nbeta x difference "
              f"{nbeta * (r['loss_other'] - r['loss']):+.3f}); llc {r['llc']:.2f} +- {r['llc_se']:.2f} "
              f"({args.steps} steps, {r['llc_s']:.1f} s)", flush=True)
    from gpu_scale import bench_llc  # benchmarks/gpu_scale.py, next to this script

    for precision in PRECISIONS:
        with jax.default_matmul_precision(precision):
            print(f"{precision:>13}:", end=" ", flush=True)
            bench_llc(n_instances=2048, chains=8, steps=1000, block_bytes=None)


if __name__ == "__main__":
    main()
