"""The calibration's chain-length stage on normal-crossing cases: the estimate and its standard error per length.

Runs `calibrate` on a case's inputs exactly as `reproduce normal-crossing` does (same data, key and
options) and prints, per chain length of stage 2, the estimate, its standard error (batch means
pooled over the 4 calibration chains) and R-hat, then the chosen settings and the verdict. The
numbers quoted in docs/experiments/normal_crossing.md ("No calibration settled") come from

    python -m experiments.normal_crossing_length 2,3 1,1,1
"""

from __future__ import annotations

import argparse

from experiments import normal_crossing as nc
from slt_superposition.calibration import calibrate
from slt_superposition.errors import InputError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", help="exponents, comma-separated, e.g. 2,3 or 1,1,1")
    args = parser.parse_args(argv)
    for text in args.cases:
        try:
            powers = nc.check_powers(tuple(int(p) for p in text.split(",")))
        except (ValueError, InputError) as err:
            parser.error(f"a case is comma-separated non-negative exponents, e.g. 2,3 ({err})")
        loss, params, data, k_cal, _ = nc.case_inputs(powers, nc.SEED)
        config, cal = calibrate(loss, params, data, key=k_cal, **nc.CALIBRATION)
        print(f"w^{powers} (n = {nc.N_SAMPLES}):")
        for steps, llc, se, rhat in zip(cal["num_steps"].values, cal["llc_length"].values,
                                        cal["llc_se_length"].values, cal["rhat_length"].values):
            print(f"  {int(steps):>7} steps: {llc:.4f} +- {se:.4f} ({se / abs(llc):.0%}), R-hat {rhat:.3f}")
        print(f"  chose eps {float(config.step_size):g}, {int(config.num_steps)} steps; {cal.attrs['verdict']}")


if __name__ == "__main__":
    main()
