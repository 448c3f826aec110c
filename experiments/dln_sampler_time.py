"""How long in sampler time a narrow-bottleneck deep linear network needs before its LLC estimate settles.

The calibration's chain-length rule doubles the *step count* and stops when the estimate stops
moving. On a DLN with a narrow rank-1 bottleneck the curvature bound forces step sizes of
1e-8 to 3e-8, and there the rule stopped at 10k-40k steps, a sampler time eps x steps of
0.0013, reading 25-44% low (docs/experiments/dln_validation.md). This study holds the case's
data, w* and key fixed (as `dln_validation.run_case` had them when this study was made: localization 1,
batch 500 of the n rows, nbeta = n / log n, 4 chains, burn-in half) and estimates the LLC at growing sampler times, each at two step sizes
where affordable, so that a rise with sampler time at equal step size, and agreement between
step sizes at equal sampler time, can both be read off.

    python -m experiments.dln_sampler_time                       # 4-4-2-4, rank 1 (about 15 min on 2 cores)
    python -m experiments.dln_sampler_time --widths 6-3-6-6 --runs 3.2e-8:40000 1e-7:400000

Prints one line per run: step size, steps, sampler time, the LLC (mean and per chain), wall time.
"""

from __future__ import annotations

import argparse
import time

import jax

from experiments.dln_validation import LOCALIZATION, N_SAMPLES, NUM_CHAINS, SEED, parse_widths
from slt_superposition.llc import SGLDConfig, estimate_llc
from slt_superposition.theory import dln_learning_coefficient
from toy_models.dln import dln_data, dln_loss, dln_true_params

BATCH_SIZE = 500  # minibatches of the n rows (the panel now runs full batch on compressed rows)
# (step size, steps): sampler times 0.0013 (where calibration stopped), 0.005, 0.04 (two step
# sizes), 0.16 (two step sizes) and 0.64
DEFAULT_RUNS = ("3.2e-8:40000", "3.2e-8:160000", "3.2e-8:1280000", "1e-7:400000", "3.2e-8:5120000",
                "1e-7:1600000", "1e-7:6400000")


def parse_run(text: str) -> tuple[float, int]:
    """'EPS:STEPS' -> (eps, steps)."""
    try:
        eps, steps = text.split(":")
        eps, steps = float(eps), int(float(steps))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a run is STEP_SIZE:STEPS, e.g. 1e-7:400000, got {text!r}") from None
    if not (eps > 0 and steps >= 2):
        raise argparse.ArgumentTypeError(f"a run needs a positive step size and at least 2 steps, got {text!r}")
    return eps, steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=parse_widths, default="4-4-2-4",
                        help="layer widths, dash-separated (default %(default)s)")
    parser.add_argument("--rank", type=int, default=1, help="rank of every layer of w* (default %(default)s)")
    parser.add_argument("--runs", nargs="+", type=parse_run, default=[parse_run(r) for r in DEFAULT_RUNS],
                        help="STEP_SIZE:STEPS pairs (default: sampler times 0.0013 to 0.64)")
    args = parser.parse_args(argv)
    widths = args.widths
    k_true, k_data, _, k_est = jax.random.split(jax.random.key(SEED), 4)
    params = dln_true_params(k_true, widths, args.rank, "singular")
    data = dln_data(k_data, params, N_SAMPLES)
    print(f"{'-'.join(map(str, widths))} rank {args.rank}: lambda = {dln_learning_coefficient(widths, args.rank):g}", flush=True)
    for eps, steps in args.runs:
        config = SGLDConfig(step_size=eps, localization=LOCALIZATION, num_chains=NUM_CHAINS, num_steps=steps,
                            num_burnin=steps // 2, batch_size=BATCH_SIZE, trace_every=max(1, steps // 100))
        start = time.perf_counter()
        est = estimate_llc(dln_loss, params, data, config=config, key=k_est, checks=False)
        chains = " ".join(f"{v:.2f}" for v in est["llc_per_chain"].values)
        print(f"eps {eps:g}, {steps} steps, sampler time {eps * steps:.3g}: LLC {float(est['llc_mean']):.2f} "
              f"+- {float(est['llc_se']):.2f} (chains {chains}), {int(est['n_diverged'])} diverged, "
              f"{time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
