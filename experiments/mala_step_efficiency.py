"""Which step size makes Metropolis-adjusted chains most efficient: the acceptance rate against precision per step.

Metropolis-adjusted chains (`slt_superposition.mala`) are exact at every step size, so the step
size changes only how much a chain of a given length tells: a small step is accepted almost always
but moves little, a large one moves far but is often rejected. `calibrate(..., metropolis=True)`
takes the largest step whose acceptance rate is at least min(0.9, plateau - 0.12), the rule it keeps
from plain SGLD, where a high acceptance proxy is a sign of small discretisation bias. For MALA
the theory of high-dimensional targets puts the most efficient rate near 0.57 (Roberts and
Rosenthal 1998), which would allow larger steps and shorter chains. This study measures it on the
deep-linear-network panel's setting (compressed full-batch data, nbeta = n / log n, localization 1,
chains from w*): at each step size, many chains of the same number of steps (equal compute), and
from their per-chain estimates (second half of each chain, as `calibrate`'s length stage)

- the mean and its standard error over chains (every step size targets the same value),
- the chain-to-chain standard deviation s, and the efficiency at equal steps relative to the step
  size the calibration's rule would choose, (s_rule / s)^2: how many times fewer steps the same
  precision would take, once the chains have settled;
- the root mean square error of one chain's estimate against a reference value (`--reference`,
  default the asymptotic lambda; give the finite-n value where it differs), sqrt(bias^2 + s^2),
  which also counts chains that have not yet relaxed from w* (at a small step size a chain of a
  given length covers a short sampler time), and its efficiency against the rule's, (RMSE_rule /
  RMSE)^2.

    python -m experiments.mala_step_efficiency                                  # 3-10-10-3 rank 2
    python -m experiments.mala_step_efficiency --widths 6-6-6-6 --rank 3
    python -m experiments.mala_step_efficiency --steps 262144 --chains 16

The chains are `experiments.dln_wide_drift.chain_blocks`'s (the package's `mala` kernel, blocks
of 4096 steps).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from experiments.dln_validation import LOCALIZATION, N_SAMPLES, SEED, parse_widths
from experiments.dln_wide_drift import BLOCK, chain_blocks
from slt_superposition.calibration import TARGET_ACCEPTANCE
from slt_superposition.diagnostics import mean_and_se
from slt_superposition.llc import default_nbeta
from slt_superposition.theory import dln_learning_coefficient
from toy_models.dln import dln_compressed_data, dln_data, dln_true_params

RULE_ACCEPTANCE = TARGET_ACCEPTANCE  # calibrate's default acceptance target
STEP_SIZES = (3.16e-8, 1e-7, 3.16e-7, 1e-6, 3.16e-6)


def measure(params, data, step_size: float, *, steps: int, chains: int, localization: float, nbeta: float,
            key) -> dict:
    """One step size: `chains` Metropolis-adjusted chains of `steps` steps from w*. Returns the per-chain
    estimates over each chain's second half (`per_chain (chains,)`), their mean, standard error and
    standard deviation, and the acceptance rate over the second half."""
    n_blocks = max(2, steps // BLOCK)
    run, _ = chain_blocks(params, data, step_size, localization, True, nbeta)
    start = jnp.broadcast_to(ravel_pytree(params)[0], (chains, sum(W.size for W in params)))
    _, (sums, accepted) = run(start, jax.random.split(key, chains), 0, n_blocks)
    half = n_blocks // 2
    kept = (n_blocks - half) * BLOCK
    per_chain = nbeta * np.asarray(sums, np.float64)[half:].sum(axis=0) / kept
    return {"step_size": step_size, "steps": n_blocks * BLOCK, "per_chain": per_chain,
            "mean": float(per_chain.mean()), "std": float(per_chain.std(ddof=1)),
            "se": float(mean_and_se(per_chain)[1]),
            "acceptance": float(np.asarray(accepted, np.float64)[half:].sum() / (kept * chains))}


def rule_choice(rows: list[dict]) -> dict | None:
    """The row the calibration's acceptance rule would choose: the largest step size with acceptance
    >= RULE_ACCEPTANCE (None if none reaches it)."""
    ok = [row for row in rows if row["acceptance"] >= RULE_ACCEPTANCE]
    return max(ok, key=lambda row: row["step_size"]) if ok else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=parse_widths, default="3-10-10-3", help="layer widths (default %(default)s)")
    parser.add_argument("--rank", type=int, default=2, help="rank of every layer of w* (default %(default)s)")
    parser.add_argument("--n", type=int, default=N_SAMPLES, help="samples n (default %(default)s, the panel's)")
    parser.add_argument("--step-sizes", nargs="+", type=float, default=list(STEP_SIZES),
                        help="step sizes (default %(default)s)")
    parser.add_argument("--steps", type=int, default=16 * BLOCK,
                        help=f"steps per chain at every step size, a multiple of {BLOCK} (default %(default)s)")
    parser.add_argument("--chains", type=int, default=16, help="chains per step size (default %(default)s)")
    parser.add_argument("--localization", type=float, default=LOCALIZATION, help="gamma (default %(default)s)")
    parser.add_argument("--reference", type=float, default=None,
                        help="the value the chains should read (default: the asymptotic lambda)")
    args = parser.parse_args(argv)
    if args.steps < 2 * BLOCK or args.chains < 2 or not all(eps > 0 for eps in args.step_sizes):
        parser.error(f"--steps must be at least {2 * BLOCK}, --chains at least 2, step sizes positive")
    k_true, k_data, _, k_est = jax.random.split(jax.random.key(SEED), 4)
    params = dln_true_params(k_true, args.widths, args.rank, "singular")
    data = dln_compressed_data(*dln_data(k_data, params, args.n))
    nbeta = default_nbeta(args.n)
    lam = dln_learning_coefficient(args.widths, args.rank)
    reference = lam if args.reference is None else args.reference
    print(f"{'-'.join(map(str, args.widths))} rank {args.rank}, n = {args.n}, nbeta {nbeta:.1f}, gamma "
          f"{args.localization:g}: lambda = {lam:g}, reference {reference:g}; "
          f"{args.chains} chains x {args.steps} steps per step size (second half kept)", flush=True)
    rows = []
    start = time.perf_counter()
    for eps in sorted(args.step_sizes):
        row = measure(params, data, eps, steps=args.steps, chains=args.chains, localization=args.localization,
                      nbeta=nbeta, key=k_est)
        rows.append(row)
        print(f"  eps {eps:.3g}: sampler time {eps * row['steps']:.3g}, accepted {row['acceptance']:.3f}, "
              f"LLC {row['mean']:.3f} +- {row['se']:.3f} (chain std {row['std']:.3f})  "
              f"[{time.perf_counter() - start:.0f} s]", flush=True)
    chosen = rule_choice(rows)
    if chosen is None:
        print(f"no step size reached acceptance {RULE_ACCEPTANCE}: no reference for the efficiency")
        return
    rmse = lambda row: float(np.sqrt(np.mean((row["per_chain"] - reference) ** 2)))
    print(f"at equal steps, against eps {chosen['step_size']:.3g} (the largest with acceptance >= "
          f"{RULE_ACCEPTANCE}, the calibration's rule): variance efficiency (s_rule / s)^2, one chain's RMSE "
          f"against {reference:g} and its efficiency (RMSE_rule / RMSE)^2")
    for row in rows:
        print(f"  eps {row['step_size']:.3g}  accepted {row['acceptance']:.3f}  "
              f"variance {(chosen['std'] / row['std']) ** 2:6.2f}x  "
              f"mean - reference {row['mean'] - reference:+.3f} ({(row['mean'] - reference) / row['se']:+.1f} s.e.)  "
              f"RMSE {rmse(row):.3f}, efficiency {(rmse(chosen) / rmse(row)) ** 2:6.2f}x")


if __name__ == "__main__":
    main()
