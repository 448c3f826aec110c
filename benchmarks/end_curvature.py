"""What the check at the chains' ends costs beside the estimate it checks, side by side.

    python benchmarks/end_curvature.py [--instances 16] [--samples 16384] [--rounds 2]

On the shared trained 6x2 TMS grid (`tms_grid.py`; n = 16,384 samples per instance as in the
default flagship, 4 chains x 2000 steps, batch 512), times in interleaved rounds (best wall time of
each, after one untimed call that compiles): `estimate_llc_batched` with its stored checks (which
include the check at the chains' ends), the check at the ends alone
(`curvature.curvature_at_positions` on that estimate's final positions: a dense Hessian per chain
per instance), and the curvature at w* alone (`curvature.curvature_batched`, once per instance).
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from slt_superposition import SGLDConfig, estimate_llc_batched
from slt_superposition.curvature import curvature_at_positions, curvature_batched
from timing import best_of  # benchmarks/timing.py, next to this script
from tms_grid import trained_6x2_grid  # benchmarks/tms_grid.py, next to this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=16, help="a multiple of 8 (default %(default)s)")
    parser.add_argument("--samples", type=int, default=16384, help="samples per instance (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (default %(default)s)")
    args = parser.parse_args()
    if args.instances < 8 or args.instances % 8 or args.samples < 512 or args.rounds < 1:
        parser.error("--instances must be a positive multiple of 8, --samples at least 512, --rounds at least 1")
    loss_fn, params, data, n_inst = trained_6x2_grid(args.instances, args.samples)
    config = SGLDConfig(step_size=1e-4, localization=1.0, num_chains=4, num_steps=2000, num_burnin=1000,
                        batch_size=512, trace_every=10)
    key = jax.random.key(0)
    estimate = lambda: estimate_llc_batched(loss_fn, params, data, config=config, key=key)
    ds = estimate()
    positions = ds["final_position"].values.astype(np.float64)
    nbeta = float(ds["nbeta"].values.ravel()[0])
    ends = lambda: curvature_at_positions(loss_fn, params, data, positions, data_batched=True, step_size=1e-4,
                                          localization=1.0, nbeta=nbeta, key=key)
    at_w_star = lambda: curvature_batched(loss_fn, params, data, data_batched=True, key=key)
    best = best_of({"estimate with checks": estimate, "check at the ends": ends, "curvature at w*": at_w_star},
                   args.rounds)
    print(f"{n_inst} instances x 4 chains x 2000 steps, n = {args.samples}, batch 512, d = {positions.shape[-1]}; "
          f"best of {args.rounds} interleaved rounds, {jax.default_backend()}:")
    for name, seconds in best.items():
        print(f"  {name}: {seconds:.2f} s")
    print(f"the check at the ends is {best['check at the ends'] / best['estimate with checks']:.1%} of the estimate "
          f"with its checks (median step_bias_end {float(np.median(ds['step_bias_end'].values)):.2%})")


if __name__ == "__main__":
    main()
