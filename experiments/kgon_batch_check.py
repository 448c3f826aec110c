"""How long the calibration's minibatch check must be to keep a small batch on the 5-gon at n = 1e5.

Runs `kgon_llc.run_case(5, 0)` (the 5-gon of Chen et al.'s setting, refined on 1e5 samples,
calibrated from batch 500 on the sample rows, not the quick protocol's full batch) with the quick
protocol otherwise, and
prints the batch the calibration kept, the estimate, the estimate with the dead feature held
fixed, and the wall time. The table in docs/experiments/kgon_llc.md comes from

    python -m experiments.kgon_batch_check --check-steps 500
    python -m experiments.kgon_batch_check --check-steps 4000
"""

from __future__ import annotations

import argparse
import time

from experiments.kgon_llc import QUICK, run_case


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check-steps", type=int, default=500,
                        help="length of the calibration's paired minibatch check (default %(default)s)")
    args = parser.parse_args(argv)
    if args.check_steps < 1:
        parser.error(f"--check-steps must be positive, got {args.check_steps}")
    start = time.perf_counter()
    row = run_case(5, 0, **dict(QUICK, batch_size=500, batch_check_steps=args.check_steps))
    print(f"check {args.check_steps} steps: batch {int(row['batch_size'])}, llc {row['llc_mean']:.2f} +- "
          f"{row['llc_se']:.2f}, dead features held fixed {row['llc_dead_frozen']:.2f} (lambda {row['llc_theory']:g}), "
          f"eps {row['step_size']:.3g}, {int(row['num_steps'])} steps, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
