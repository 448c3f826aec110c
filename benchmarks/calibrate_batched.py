"""Calibration throughput: `calibrate_batched` (every instance at once) against a loop of
`calibrate` (one instance at a time), same instances, same settings, one process.

    python benchmarks/calibrate_batched.py [--instances 64] [--n-samples 4096]

Grid: TMS n=6, m=2 trained 2000 AdamW steps at `--instances` / 8 feature probabilities
(log-spaced 1 .. 0.01) x 8 seeds; LLC data n = `--n-samples`, batch 512, localization 1,
2 chains; the flagship's quick calibration budget (half-decade step grid 1e-6 .. 1e-2, sweep
300 steps, chains 600 .. 2400, long check at most 2400). Both sides are timed after a warm-up
call on the same shapes (compilation left out), and the chosen step sizes are compared.
Then the sampling program alone: chain-steps per second of 1 instance per call against all
instances in one call (the raw ratio that bounds what batching can gain on this machine).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from slt_superposition import SGLDConfig, estimate_llc_batched
from slt_superposition.calibration import calibrate, calibrate_batched
from slt_superposition.cpu_devices import split_cpu_into_cores
import machine  # benchmarks/machine.py
from tms_grid import trained_6x2_grid  # benchmarks/tms_grid.py

STEP_SIZES = tuple(float(10.0 ** (e / 2)) for e in range(-12, -3))
OPTIONS = dict(batch_size=512, num_chains=2, step_sizes=STEP_SIZES, sweep_steps=300, min_steps=600, max_steps=2400,
               long_check_max_steps=2400, batch_check_steps=600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=64, help="instances (a multiple of 8)")
    parser.add_argument("--n-samples", type=int, default=4096)
    parser.add_argument("--raw-only", action="store_true", help="only the sampling throughput, no calibration")
    args = parser.parse_args()
    split_cpu_into_cores()  # as the console script does: the batched side's instances on every core
    loss_fn, params, data, n_inst = trained_6x2_grid(args.instances, args.n_samples)
    print(f"{machine.describe()}; {n_inst} TMS 6x2 instances, n = {args.n_samples}")

    if args.raw_only:
        raw_throughput(loss_fn, params, data, n_inst)
        return
    one = lambda i: jax.tree_util.tree_map(lambda x: x[i], (params, data))
    key = jax.random.key(1)
    # warm-up: compile both paths on these shapes
    calibrate(loss_fn, *one(0), key=key, **OPTIONS)
    calibrate_batched(loss_fn, params, data, key=key, **OPTIONS)

    start = time.perf_counter()
    batched, _ = calibrate_batched(loss_fn, params, data, key=key, **OPTIONS)
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    looped = [calibrate(loss_fn, *one(i), key=key, **OPTIONS)[0] for i in range(n_inst)]
    t_loop = time.perf_counter() - start
    eps_loop = np.array([c.step_size for c in looped])
    eps_batched = np.asarray(batched.step_size).ravel()
    print(f"calibrate_batched: {t_batched:.1f} s for {n_inst} instances")
    print(f"loop of calibrate: {t_loop:.1f} s ({t_loop / n_inst:.2f} s per instance)")
    print(f"ratio: {t_loop / t_batched:.1f}x")
    print(f"same chosen step size on {np.mean(eps_loop == eps_batched):.0%} of instances "
          "(the keys differ: instance i of the batch uses split(key, N)[i], the loop uses key)")
    raw_throughput(loss_fn, params, data, n_inst)


def raw_throughput(loss_fn, params, data, n_inst: int, steps: int = 2000) -> None:
    """Chain-steps per second of the sampling program alone (no checks, no calibration logic):
    1 instance per call against all instances in one call, same chains and batch as above.
    If the batched program did no more chain-steps per second than the single one, no
    batching could beat the loop by more than the loop's per-call overheads."""
    config = SGLDConfig(step_size=1e-4, localization=1.0, num_chains=OPTIONS["num_chains"], num_steps=steps,
                        num_burnin=steps // 2, batch_size=OPTIONS["batch_size"])
    one = jax.tree_util.tree_map(lambda x: x[:1], (params, data))
    rates = {}
    for label, (p, d) in (("1 instance per call", one), (f"{n_inst} instances in one call", (params, data))):
        call = lambda: estimate_llc_batched(loss_fn, p, d, config=config, key=jax.random.key(2), checks=False)
        call()  # compile
        best = min(_seconds(call) for _ in range(3))
        count = jax.tree_util.tree_leaves(p)[0].shape[0]
        rates[label] = count * config.num_chains * steps / best
        print(f"sampling alone, {label}: {best:.2f} s -> {rates[label]:,.0f} chain-steps/s "
              f"({count} x {config.num_chains} chains x {steps} steps)")
    values = list(rates.values())
    print(f"raw throughput ratio ({n_inst} instances in one call / 1 instance per call): {values[1] / values[0]:.2f}x")


def _seconds(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
