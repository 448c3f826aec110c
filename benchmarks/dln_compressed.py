"""DLN chains at batch 500 of the n rows against full batch on the data's exact compression.

`toy_models.dln.dln_compressed_data` stands the n = 1e5 rows of a deep linear network's data
for H_0 + H_L rows with the same L_n (docs/experiments/dln_validation.md). This times
`estimate_llc` on 4-4-2-4 (rank 1, the panel's data and w*) with 4 chains x `--steps` at
eps 1e-7, both after a compiling call, in interleaved rounds (best of `--rounds`), and prints
chain-steps per second, the ratio and both estimates. Then the compressed side's chain program
with the running sums compensated (as shipped) against plain float32 sums (`compensated.ENABLED`),
compiled programs timed in interleaved rounds (best CPU time): the cost of the compensation on
the package's smallest chain step.

    python benchmarks/dln_compressed.py [--steps 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

import jax

import chain_profile  # benchmarks/chain_profile.py
from experiments.dln_validation import LOCALIZATION, N_SAMPLES, NBETA, NUM_CHAINS, SEED
from slt_superposition import SGLDConfig, compensated, estimate_llc
from toy_models.dln import dln_compressed_data, dln_data, dln_loss, dln_true_params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    k_true, k_data, _, k_est = jax.random.split(jax.random.key(SEED), 4)
    params = dln_true_params(k_true, (4, 4, 2, 4), 1, "singular")
    rows = dln_data(k_data, params, N_SAMPLES)
    sides = {"batch 500 of the n rows": (rows, 500), "full batch, compressed rows": (dln_compressed_data(*rows), None)}
    best, llc = {}, {}
    for _ in range(args.rounds + 1):  # the first round compiles
        for name, (data, batch) in sides.items():
            config = SGLDConfig(step_size=1e-7, localization=LOCALIZATION, nbeta=NBETA, num_chains=NUM_CHAINS,
                                num_steps=args.steps, num_burnin=args.steps // 2, batch_size=batch,
                                trace_every=max(1, args.steps // 1000))
            start = time.perf_counter()
            ds = estimate_llc(dln_loss, params, data, config=config, key=k_est, checks=False)
            seconds = time.perf_counter() - start
            if name in llc:
                best[name] = min(best.get(name, seconds), seconds)
            llc[name] = float(ds["llc_mean"])
    for name in sides:
        print(f"{name}: {best[name]:.3f} s, {NUM_CHAINS * args.steps / best[name]:,.0f} chain-steps/s, "
              f"llc {llc[name]:.3f}")
    a, b = sides
    print(f"ratio (compressed / batch 500): {best[a] / best[b]:.1f}x")
    config = SGLDConfig(step_size=1e-7, localization=LOCALIZATION, nbeta=NBETA, num_chains=NUM_CHAINS,
                        num_steps=10 * args.steps, num_burnin=5 * args.steps, batch_size=None,
                        trace_every=max(1, args.steps // 100))
    programs = {"compensated sums (as shipped)": chain_profile.one_instance_program(dln_loss, params, sides[b][0],
                                                                                    config)}
    with chain_profile.patched(compensated, ENABLED=False):
        programs["plain float32 sums"] = chain_profile.one_instance_program(dln_loss, params, sides[b][0], config)
    times = chain_profile.time_side_by_side(programs, rounds=2 * args.rounds + 1)
    for name, (cpu, _) in times.items():
        print(f"{name}: {cpu:.3f} s CPU for {NUM_CHAINS} x {10 * args.steps} steps")
    cost = times["compensated sums (as shipped)"][0] / times["plain float32 sums"][0]
    print(f"CPU time, compensated / plain: {cost:.2f}")


if __name__ == "__main__":
    main()
