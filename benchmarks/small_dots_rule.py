"""Which matrix products the SGLD chains should write elementwise on a CPU (`small_dots.SMALL`).

    python benchmarks/small_dots_rule.py                 # TMS 6x2, 8x2, 10x3, 20x5, 40x10; two DLNs
    python benchmarks/small_dots_rule.py --shapes 20x5 --steps 2000 --dln

For each TMS shape, the one-instance chain program (`chain_profile.one_instance_program`: 2
chains, batch 512, n = 4096 sparse-uniform rows at p = 0.1) compiled three ways and timed in
interleaved rounds (best CPU time of the process and best wall time):

- as shipped: products whose two smallest sizes (of M, N, K) multiply to at most `SMALL`, or
  whose M N K is at most `TINY`, written as multiply-and-sum (`small_dots`), the others
  library GEMMs;
- every product elementwise: the rule before 2026-12-05 (one of M, N, K at most 16), which for
  every TMS with m <= 16 hidden units rewrote every product;
- every product a library GEMM (`chain.ELEMENTWISE_DOTS = False`).

Then the same for two deep linear networks of the validation panel (3-10-10-3 rank 2 and 5-8-5
rank 2, the panel's data, w* and settings, 4 chains at eps 1e-7): full batch on the data's exact
compression (6 and 10 rows, as the panel runs) and minibatches of 500 of the n = 1e5 rows.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import chain_profile  # benchmarks/chain_profile.py, next to this script
from slt_superposition import chain, small_dots
from slt_superposition.llc import SGLDConfig
from toy_models.data import sparse_uniform
from toy_models.dln import dln_compressed_data, dln_data, dln_loss, dln_true_params
from toy_models.tms import tms_init_params, tms_loss


def one_of_three_small(lhs, rhs, dimension_numbers, limit: int) -> bool:
    """The rule before 2026-12-05: a product is small when one of M, N, K is at most 16."""
    return (jnp.issubdtype(lhs.dtype, jnp.floating) and lhs.dtype == rhs.dtype
            and min(small_dots.product_sizes(lhs, rhs, dimension_numbers)) <= 16)


def tms_programs(n_features: int, n_hidden: int, steps: int) -> dict:
    params = tms_init_params(jax.random.key(0), n_features, n_hidden)
    data = sparse_uniform(jax.random.key(1), 4096, n_features, 0.1)
    config = SGLDConfig(step_size=1e-4, localization=1.0, num_chains=2, num_steps=steps, num_burnin=steps // 2,
                        batch_size=512)
    return programs(tms_loss, params, data, config)


def dln_programs(widths: tuple[int, ...], rank: int, steps: int, compressed: bool) -> dict:
    from experiments.dln_validation import LOCALIZATION, N_SAMPLES, NBETA, NUM_CHAINS, SEED

    k_true, k_data = jax.random.split(jax.random.key(SEED), 4)[:2]
    params = dln_true_params(k_true, widths, rank, "singular")
    rows = dln_data(k_data, params, N_SAMPLES)
    config = SGLDConfig(step_size=1e-7, localization=LOCALIZATION, nbeta=NBETA, num_chains=NUM_CHAINS,
                        num_steps=steps, num_burnin=steps // 2, batch_size=None if compressed else 500)
    return programs(dln_loss, params, dln_compressed_data(*rows) if compressed else rows, config)


def programs(loss_fn, params, data, config) -> dict:
    build = lambda: chain_profile.one_instance_program(loss_fn, params, data, config)
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
    parser.add_argument("--no-dln", dest="dln", action="store_false", help="skip the deep linear networks")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}; TMS 2 chains x {args.steps} steps, batch 512; "
          f"DLN 4 chains x {4 * args.steps} steps; best of {args.rounds} interleaved rounds; "
          f"SMALL = {small_dots.SMALL}, TINY = {small_dots.TINY}")
    cases = [(f"TMS {shape}", lambda shape=shape: tms_programs(*(int(v) for v in shape.split("x")), args.steps))
             for shape in args.shapes]
    if args.dln:
        cases += [(f"DLN {'-'.join(map(str, w))}, {what}", lambda w=w, r=r, c=c: dln_programs(w, r, 4 * args.steps, c))
                  for w, r in (((3, 10, 10, 3), 2), ((5, 8, 5), 2))
                  for c, what in ((True, "full batch on its compressed rows"), (False, "batch 500 of n = 1e5 rows"))]
    for title, build in cases:
        times = chain_profile.time_side_by_side(build(), args.rounds)
        shipped = times["as shipped"][0]
        print(f"{title}:")
        for name, (cpu, wall) in times.items():
            print(f"  {name:40s} cpu {cpu * 1e3:8.1f} ms  wall {wall * 1e3:8.1f} ms  "
                  f"({cpu / shipped:.2f}x shipped's CPU time)")


if __name__ == "__main__":
    main()
