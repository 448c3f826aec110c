"""The quadratic part's discretisation bias at a few step sizes, for each case of a dln-validation run.

Reads `calibration/<case>.nc` under a `reproduce dln-validation` output folder and prints, per
case, the curvature bound on the step size and `quadratic_llc` (full-batch Euler SGLD on the
quadratic approximation at w*, localization 1) relative to its eps -> 0 value at each step size.
The numbers in docs/experiments/dln_validation.md ("Why the step sizes fell") come from

    python -m experiments.dln_step_bias /work/runs/s10/dln
"""

from __future__ import annotations

import argparse
from pathlib import Path

import xarray as xr

from slt_superposition.curvature import quadratic_llc

STEP_SIZES = (3.16e-8, 1e-7, 3.16e-7, 1e-6)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="output folder of `slt-superposition reproduce dln-validation`")
    args = parser.parse_args(argv)
    files = sorted((args.run / "calibration").glob("*.nc"))
    if not files:
        parser.error(f"no calibration/*.nc under {args.run}")
    for path in files:
        with xr.open_dataset(path) as cal:
            h = cal["hessian_eigenvalues"].values.ravel()
            nbeta, gamma = float(cal.attrs["nbeta"]), float(cal.attrs["chosen_localization"])
            base = quadratic_llc(h, 0.0, gamma, nbeta)

            def bias(eps: float) -> str:
                if not base > 0:
                    return "no curved direction"
                value = quadratic_llc(h, eps, gamma, nbeta) / base - 1
                return f"{value:+.1%}" if value == value else "beyond the stability edge"

            biases = "  ".join(f"{eps:.2g}: {bias(eps)}" for eps in STEP_SIZES)
            print(f"{path.stem}: bound {float(cal.attrs['step_size_bound']):.2g}, chosen "
                  f"{float(cal.attrs['chosen_step_size']):.2g}; quadratic bias at {biases}")


if __name__ == "__main__":
    main()
