"""Which matrix products the SGLD chains should write elementwise on a CPU (`small_dots.SMALL`).

    python benchmarks/small_dots_rule.py                 # TMS 6x2, 8x2, 10x3, 20x5, 40x10
    python benchmarks/small_dots_rule.py --shapes 20x5 --steps 2000

For each TMS shape, the one-instance chain program (`chain_profile.one_instance_program`: 2
chains, batch 512, n = 4096 sparse-uniform rows at p = 0.1) compiled three ways and timed in
interleaved rounds (best CPU time of the process and best wall time):

- as shipped: products whose two smallest sizes (of M, N, K) multiply to at most `SMALL`
  written as multiply-and-sum (`small_dots`), the others library GEMMs;
- every product elementwise: the rule before 2026-12-05 (one of M, N, K at most 16), which for
  every TMS with m <= 16 hidden units rewrote every product;
- every product a library GEMM (`chain.ELEMENTWISE_DOTS = False`).
"""

from __future__ import annotations

import argparse
import math

import jax
import numpy as np

import chain_profile  # benchmarks/chain_profile.py, next to this script
from slt_superposition import chain, small_dots
from slt_superposition.llc import SGLDConfig
from toy_models.data import sparse_uniform
from toy_models.tms import tms_init_params, tms_loss


def one_of_three_small(lhs, rhs, dimension_numbers, limit: int) -> bool:
    """The rule before 2026-12-05: a product is small when one of M, N, K is at most 16."""
    (lc, rc), (lb, rb) = dimension_numbers
    m = math.prod(s for d, s in enumerate(lhs.shape) if d not in lc and d not in lb)
    n = math.prod(s for d, s in enumerate(rhs.shape) if d not in rc and d not in rb)
    k = math.prod(lhs.shape[d] for d in lc)
    return lhs.dtype == rhs.dtype and min(m, n, k) <= 16


def programs(n_features: int, n_hidden: int, steps: int) -> dict:
    params = tms_init_params(jax.random.key(0), n_features, n_hidden)
    data = sparse_uniform(jax.random.key(1), 4096, n_features, 0.1)
    config = SGLDConfig(step_size=1e-4, localization=1.0, num_chains=2, num_steps=steps, num_burnin=steps // 2,
                        batch_size=512)
    build = lambda: chain_profile.one_instance_program(tms_loss, params, data, config)
    out = {"as shipped": build()}
    with chain_profile.patched(small_dots, _is_small=one_of_three_small):
        out["every product elementwise (old rule)"] = build()
    with chain_profile.patched(chain, ELEMENTWISE_DOTS=False):
        out["every product a library GEMM"] = build()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["6x2", "8x2", "10x3", "20x5", "40x10"],
                        help="TMS shapes, features x hidden (default: 6x2 8x2 10x3 20x5 40x10)")
    parser.add_argument("--steps", type=int, default=1000, help="chain steps per call (default 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}; 2 chains x {args.steps} steps, batch 512; "
          f"best of {args.rounds} interleaved rounds; SMALL = {small_dots.SMALL}")
    for shape in args.shapes:
        n, m = (int(v) for v in shape.split("x"))
        times = chain_profile.time_side_by_side(programs(n, m, args.steps), args.rounds)
        shipped = times["as shipped"][0]
        print(f"TMS {n}x{m}:")
        for name, (cpu, wall) in times.items():
            steps_per_s = 2 * args.steps / cpu
            print(f"  {name:40s} cpu {cpu * 1e3:8.1f} ms  wall {wall * 1e3:8.1f} ms  "
                  f"{steps_per_s:9,.0f} chain-steps per CPU s  ({cpu / shipped:.2f}x shipped's CPU time)")


if __name__ == "__main__":
    main()
