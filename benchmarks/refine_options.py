"""L-BFGS refinement (analysis.refine) compiled with XLA:CPU's defaults against the LLC programs'
options (`llc.CPU_COMPILER_OPTIONS`, no YNNPACK fusions), side by side in one process.

    python benchmarks/refine_options.py [--instances 12] [--n-samples 4096] [--steps 300]

The quick flagship's refinement shapes: TMS n=6, m=2 instances (random weights near a sparse-data
optimum's scale), n samples each, `--steps` L-BFGS iterations. Prints, for each option set, the
compile time and the best of two interleaved runs, and the largest gradient norm after refinement.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from analysis.refine import refine
from slt_superposition.llc import CPU_COMPILER_OPTIONS
from toy_models.tms import tms_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=12)
    parser.add_argument("--n-samples", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    N, n = args.instances, args.n_samples
    params = {"W": 0.3 * jax.random.normal(jax.random.key(0), (N, 2, 6)), "b": jnp.full((N, 6), -0.1)}
    mask = jax.random.uniform(jax.random.key(2), (N, n, 6)) < 0.2
    data = jax.random.uniform(jax.random.key(1), (N, n, 6)) * mask
    program = jax.jit(jax.vmap(lambda p, d: refine(tms_loss, p, d, steps=args.steps)))
    lowered = program.lower(params, data)
    print(f"jax {jax.__version__} on {jax.default_backend()}; {N} TMS 6x2 instances, n = {n}, {args.steps} L-BFGS steps")
    compiled, compile_s = {}, {}
    for name, options in (("XLA:CPU defaults", None), ("llc.CPU_COMPILER_OPTIONS", CPU_COMPILER_OPTIONS)):
        start = time.perf_counter()
        compiled[name] = lowered.compile(compiler_options=options)
        compile_s[name] = time.perf_counter() - start
    runs = {name: [] for name in compiled}
    for _ in range(2):  # interleaved rounds
        for name, program in compiled.items():
            start = time.perf_counter()
            out = jax.block_until_ready(program(params, data))
            runs[name].append(time.perf_counter() - start)
    for name in compiled:
        print(f"{name:26s} compile {compile_s[name]:5.1f} s, run {min(runs[name]):6.2f} s (best of 2 interleaved)")
    print(f"largest |grad L_n| after refinement: {float(np.max(out[2])):.1e}")

if __name__ == "__main__":
    main()
