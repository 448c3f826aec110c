"""Study: the flagship's `trusted` share against the calibration's chain-length cap.

`trusted` needs the calibration's chain-length rule to settle, and the rule does not settle before
a sampler time eps x steps of 0.5 / gamma (`calibrate(min_relaxation=0.5)`). At the step sizes the
calibration picks on trained TMS (3e-5 to 1e-3 on the quick grid) that takes 500 to 17,000 steps,
while the quick grid caps chains at 2400 steps (the default grid at 4000). This runs the flagship's
LLC stage (train, refine, `calibrate_batched`, `estimate_llc_batched` with the stored checks, as
`experiments.weights_vs_activations` does) on the quick grid's models at several caps, the long
check allowed 3.2 x the cap (one half-decade step down at equal sampler time), and prints per
model and cap: the share trusted, the share whose length rule settled, whose stored step-size and
batch checks passed, the median estimate and the wall time.

    python -m experiments.trusted_vs_cap [--caps 2400 19200] [--models 5,2 6,2 20,5] [--chains 2 8] [--details]
    python -m experiments.trusted_vs_cap --size default --probabilities 4 --seeds 2 --models 20,5 --caps 4000 --chains 4

`--size default` runs the default grid's settings (n = 16,384, its training and calibration budget)
instead of the quick grid's, `--probabilities` and `--seeds` shrink the grid (the feature
probabilities stay log-spaced from 1 to 0.01): the second line is 8 instances of the default
flagship's largest model at its cap, about two minutes of its LLC stage on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import xarray as xr

from experiments.weights_vs_activations import (QUICK, SIZES, _calibrated_llc, _refined_inputs, model_key,
                                                 model_label, model_train_config)
from slt_superposition.checks import BATCH_TOL, STEP_TOL, within
from toy_models.train import train_grid


def print_length_stage(calibration: xr.Dataset) -> None:
    """Per instance: the length stage's step size, and at its last two lengths the sampler time, the
    estimate +- SE, the change from the previous length and R-hat; whether the rule settled."""
    flat = calibration.stack(instance=list(calibration["converged"].dims))
    for i in range(flat.sizes["instance"]):
        row = flat.isel(instance=i)
        ran = np.flatnonzero(np.isfinite(row["llc_length"].values))[-2:]
        lengths = "; ".join(
            f"t {float(row['sampler_time'][j]):.3g}: {float(row['llc_length'][j]):.2f} +- "
            f"{float(row['llc_se_length'][j]):.2f}, change {float(row['change_length'][j]):.2f}, "
            f"R-hat {float(row['rhat_length'][j]):.2f}" for j in ran)
        coords = ", ".join(f"{name} {float(row[name]):.3g}" for name in ("feature_probability", "seed"))
        print(f"  {coords}: eps {float(row['length_step_size']):.2g}; {lengths}; settled "
              f"{bool(row['converged'])}", flush=True)


def measure(n: int, m: int, cap: int, chains: int = QUICK.calibration_chains, config=QUICK,
            details: bool = False) -> dict:
    """The quick grid's model (n, m) through the flagship's LLC stage with chain length cap `cap`
    and `chains` calibration chains (`details`: print each instance's length stage)."""
    config = dataclasses.replace(config, calibration_max_steps=cap, calibration_chains=chains,
                                 calibration_long_check_steps=int(3.2 * cap))
    key = model_key(n, m, config)
    train = train_grid(model_train_config(n, m, config), progress=False)
    inputs = _refined_inputs(train, config, jax.random.fold_in(key, 2))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        llc, summary, _ = _calibrated_llc(inputs, train, config, jax.random.fold_in(key, 1), Path(tmp))
        seconds = time.perf_counter() - start
        if details:
            print_length_stage(xr.open_dataset(Path(tmp) / "calibration" / f"{model_label(n, m)}.nc").load())
    step_ok = within(llc["step_check_rel_diff"].values, llc["step_check_se"].values, STEP_TOL)
    batch_ok = within(llc["batch_check_rel_diff"].values, llc["batch_check_se"].values, BATCH_TOL)
    return dict(trusted=float(llc["trusted"].mean()), converged=summary["converged"],
                step_check=float(np.mean(step_ok)), batch_check=float(np.mean(batch_ok)), median_llc=float(np.nanmedian(llc["llc_mean"].values)),
                num_steps=summary["num_steps_range"], seconds=seconds, instances=int(llc["trusted"].size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caps", type=int, nargs="+", default=[2400, 19200])
    parser.add_argument("--models", nargs="+", default=["5,2", "6,2", "20,5"])
    parser.add_argument("--chains", type=int, nargs="+", default=[QUICK.calibration_chains],
                        help="calibration chains (the estimate keeps the quick grid's llc_chains)")
    parser.add_argument("--details", action="store_true",
                        help="print each instance's chain-length stage (last two lengths: estimate, change, R-hat)")
    parser.add_argument("--size", choices=("quick", "default"), default="quick",
                        help="the flagship grid whose settings are used (default: quick)")
    parser.add_argument("--probabilities", type=int, default=None,
                        help="feature probabilities (log-spaced from 1 to 0.01; default: the grid's own)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per feature probability (default: the grid's own)")
    args = parser.parse_args()
    config = SIZES[args.size]
    for name, value in (("n_feature_probabilities", args.probabilities), ("seeds", args.seeds)):
        if value is not None:
            if value < 1:
                parser.error(f"--{'probabilities' if name.startswith('n_') else 'seeds'} must be at least 1")
            config = dataclasses.replace(config, **{name: value})
    for model in args.models:
        n, m = (int(v) for v in model.split(","))
        for cap, chains in ((cap, chains) for chains in args.chains for cap in args.caps):
            r = measure(n, m, cap, chains, config=config, details=args.details)
            print(f"n{n}_m{m} cap {cap}, {chains} calibration chains: trusted {r['trusted']:.0%} of {r['instances']}, length rule settled "
                  f"{r['converged']:.0%}, step check passed {r['step_check']:.0%}, batch check passed "
                  f"{r['batch_check']:.0%}; median llc "
                  f"{r['median_llc']:.2f}; chains {r['num_steps'][0]}-{r['num_steps'][1]} steps; "
                  f"{r['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
