"""Study: does a chain's LLC and MALA acceptance keep its digits over tens of millions of steps?

A chain's statistics are running sums over its post-burn-in steps. In plain float32 a sum stops
taking terms below half a unit in its last place: a sum of acceptances (each at most 1) cannot
pass 2^24, and a sum of excess losses of about lambda / nbeta is rounded on every addition once
it is large. The chains of the deep linear network panel run 20-65 million steps. This study runs
a case whose answer is known in closed form, long enough to cross 2^24: L(w) = (h / 2) ||w - 1||^2
with d = 2, h = 1, full batch, nbeta 1e4, localization 1, eps 1e-6, 2 chains of `--steps` steps
without burn-in; the expectation is `curvature.quadratic_llc` at that step size (Euler SGLD on a
quadratic is Gaussian with a known variance) and the MALA acceptance is close to 1.

    python -m experiments.long_chain_sums                    # the shipped (compensated) sums
    python -m experiments.long_chain_sums --sums plain       # float32 sums, as before the fix

Prints the LLC per chain, the mean MALA acceptance and 2^24 / (transitions), the value a plain
float32 acceptance sum saturates at; then, in numpy, the relative error of a plain float32 running
sum of N independent terms like a narrow deep linear network's excess losses (gamma-distributed,
shape 4.5, mean 4.5 / nbeta with nbeta = 1e5 / log 1e5) at the panel's post-burn-in lengths.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from slt_superposition import SGLDConfig, compensated, estimate_llc
from slt_superposition.curvature import quadratic_llc

H, NBETA, GAMMA, EPS, D = 1.0, 1e4, 1.0, 1e-6, 2


def loss_fn(params, batch):
    """(h / 2) ||w - 1||^2, the same for every row (a mean over rows of equal losses)."""
    return 0.5 * jnp.mean(batch["h"]) * jnp.sum((params["w"] - 1.0) ** 2)


def simulated_rounding(lengths=(3_240_000, 10_240_000, 32_381_723), seed: int = 0) -> None:
    """Plain float32 running sums (numpy's sequential accumulate) of i.i.d. excess-like terms
    against float64: the rounding alone, without a chain."""
    rng = np.random.default_rng(seed)
    nbeta = 1e5 / np.log(1e5)
    for n in lengths:
        terms = (rng.gamma(4.5, 1.0, size=n) / nbeta).astype(np.float32)
        plain = np.add.accumulate(terms, dtype=np.float32)[-1]
        print(f"    float32 sum of {n:,} terms of mean {4.5 / nbeta:.2g}: relative error "
              f"{plain / terms.astype(np.float64).sum() - 1:+.2%}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=17_000_000, help="steps per chain (2^24 = 16,777,216)")
    parser.add_argument("--sums", choices=("compensated", "plain"), default="compensated",
                        help="the chain's running sums: as shipped, or plain float32 (the ablation)")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    compensated.ENABLED = args.sums == "compensated"
    params = {"w": jnp.ones((D,), jnp.float32)}
    data = {"h": jnp.full((4, 1), H, jnp.float32)}
    config = SGLDConfig(step_size=EPS, localization=GAMMA, nbeta=NBETA, num_chains=2, num_steps=args.steps,
                        num_burnin=0, batch_size=None, trace_every=max(1, args.steps // 1000))
    start = time.perf_counter()
    ds = estimate_llc(loss_fn, params, data, config=config, key=jax.random.key(0))
    expected = float(quadratic_llc(np.full(D, H), EPS, GAMMA, NBETA))
    per_chain = ds["llc_per_chain"].values
    print(f"{args.sums} sums, 2 chains x {args.steps:,} steps ({time.perf_counter() - start:.0f} s)")
    print(f"    LLC per chain {np.array2string(per_chain, precision=4)}, expected {expected:.4f} "
          f"(relative error of the mean {per_chain.mean() / expected - 1:+.2%})")
    print(f"    MALA acceptance per chain {np.array2string(ds['mala_acceptance'].values, precision=5)}; "
          f"2^24 / transitions = {2**24 / (args.steps - 1):.5f}")
    simulated_rounding()


if __name__ == "__main__":
    main()
