"""R-hat and ESS of LLC traces: this package's numpy functions against blackjax's, side by side.

    python benchmarks/chain_statistics.py [--instances 12] [--chains 2]

Until 2026-12-07 `diagnostics.rhat_and_ess` called blackjax's `potential_scale_reduction` and
`effective_sample_size`: one jitted, vmapped program over the instances whose chains are all
healthy (padded to a power of two instances), compiled once per trace shape, and op-by-op calls
for an instance with a chain left out. A calibration meets a new shape at every chain length (the
trace's post-burn-in blocks) and every set of healthy chains, so each of those compiled anew. This
script times both on the shapes a calibration's length stage meets (blocks doubling from 25 to 800,
`--instances` x `--chains`), each shape new to both sides, then one instance with a chain left out
at each length; it prints each side's total (first calls, compiling included, as a run meets them)
and the largest difference between their numbers.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import machine  # benchmarks/machine.py
from slt_superposition.diagnostics import rhat_and_ess


def blackjax_rhat_and_ess(trace: np.ndarray, healthy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The former `rhat_and_ess` (blackjax, one compiled program per shape), for comparison."""
    from blackjax.diagnostics import effective_sample_size, potential_scale_reduction

    program = jax.jit(jax.vmap(lambda t: (potential_scale_reduction(t, chain_axis=0, sample_axis=1),
                                          effective_sample_size(t, chain_axis=0, sample_axis=1))))
    rhat, ess = np.full(len(trace), np.nan), np.full(len(trace), np.nan)
    all_ok = healthy.all(axis=1)
    rows = trace[all_ok]
    padded = np.concatenate([rows, np.repeat(rows[:1], (1 << (len(rows) - 1).bit_length()) - len(rows), 0)])
    r, e = jax.device_get(program(padded))
    rhat[all_ok], ess[all_ok] = r[: len(rows)], e[: len(rows)]
    for i in np.flatnonzero(~all_ok):
        subset = trace[i][healthy[i]]
        ess[i] = float(effective_sample_size(subset, chain_axis=0, sample_axis=1))
        if subset.shape[0] >= 2:
            rhat[i] = float(potential_scale_reduction(subset, chain_axis=0, sample_axis=1))
    return rhat, ess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=12, help="instances per call (default %(default)s)")
    parser.add_argument("--chains", type=int, default=2, help="chains per instance (default %(default)s)")
    args = parser.parse_args()
    print(machine.describe())
    rng = np.random.default_rng(0)
    totals = {"numpy (this package)": 0.0, "blackjax, compiled per shape": 0.0}
    worst = 0.0
    for blocks in (25, 50, 100, 200, 400, 800):
        for left_out in (False, True):
            noise = rng.standard_normal((args.instances, args.chains + 1, blocks))
            trace = (np.cumsum(noise, axis=-1) * 0.1 + 5.0).astype(np.float32)  # correlated, like a loss trace
            trace = trace[:, : args.chains + int(left_out)]  # one more chain where one is left out: a new shape
            healthy = np.ones(trace.shape[:2], bool)
            if left_out:
                healthy[0, -1] = False
            times, results = {}, {}
            for name, fn in (("blackjax, compiled per shape", blackjax_rhat_and_ess),
                             ("numpy (this package)", rhat_and_ess)):
                start = time.perf_counter()
                results[name] = fn(trace, healthy)
                times[name] = time.perf_counter() - start
                totals[name] += times[name]
            for ours, theirs in zip(results["numpy (this package)"], results["blackjax, compiled per shape"]):
                ok = np.isfinite(theirs)
                worst = max(worst, float(np.max(np.abs(ours[ok] / theirs[ok] - 1))))
            print(f"  {trace.shape} {'one chain left out' if left_out else 'all healthy':<18} "
                  + ", ".join(f"{name} {seconds:.3f} s" for name, seconds in times.items()))
    numpy_total, blackjax_total = totals["numpy (this package)"], totals["blackjax, compiled per shape"]
    print(f"total: numpy {numpy_total:.2f} s, blackjax {blackjax_total:.2f} s: "
          f"{blackjax_total / numpy_total:.0f}x; largest relative difference {worst:.1e}")


if __name__ == "__main__":
    main()
