"""Does refining the trained weights to a critical point of L_n change k, the represented features?

The flagship estimates the LLC at each instance's trained weights refined to a critical point of
L_n (`analysis.refine`, full-batch L-BFGS on the LLC's n samples). Until 2026-12-06 its activation
side (k/m, D*, the SAEs) read the trained weights; where refinement moves a feature's norm across the
represented threshold (||W_i|| > 0.5), the two bases described different points. This recomputes the
refinement of a finished flagship run (the same keys, so the same refined points) and counts, per
model, the instances whose k differs: the size of that mismatch in runs made before then. (Runs made
since read both bases at the refined point and store `n_represented_trained` beside `n_represented`.)

    python -m experiments.refinement_changes_k results/quick    # the run's own settings (config_of_run)
    python -m experiments.refinement_changes_k results/wva --size default   # a run without its settings file
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np
import xarray as xr

from analysis.measures import n_represented
from experiments.weights_vs_activations import (QUICK, FlagshipConfig, _at_refined_point, _refined_inputs,
                                                config_of_run, model_key)
from slt_superposition.errors import InputError


def k_trained_and_refined(train: xr.Dataset, config: FlagshipConfig, key) -> tuple[np.ndarray, np.ndarray]:
    """(k at the trained weights, k at the refined point), each `(feature_probability, importance_decay, seed)`."""
    _, params, _, _ = _refined_inputs(train, config, key)
    refined = _at_refined_point(train, params)["W"]
    return n_represented(train["W"].transpose(*refined.dims)).values, n_represented(refined).values


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished flagship folder (with train_<model>.nc)")
    parser.add_argument("--size", choices=("quick", "default"),
                        help="the size the run was made with (its llc_samples and refinement settings); default: "
                             "read from the run's weights_vs_activations.nc, --set fields included")
    args = parser.parse_args(argv)
    if args.size is None:
        try:
            config = config_of_run(args.run)
        except InputError as err:
            raise SystemExit(f"error: {err} (or name the run's size with --size)") from None
    else:
        config = QUICK if args.size == "quick" else FlagshipConfig()
    paths = sorted(args.run.glob("train_n*_m*.nc"))
    if not paths:
        raise SystemExit(f"no train_n*_m*.nc in {args.run}")
    for path in paths:
        n, m = (int(part[1:]) for part in path.stem.removeprefix("train_").split("_"))
        k_t, k_r = k_trained_and_refined(xr.load_dataset(path), config,
                                         jax.random.fold_in(model_key(n, m, config), 2))
        changed = k_t != k_r
        pairs = sorted(zip(k_t[changed].tolist(), k_r[changed].tolist()))
        print(f"n{n}_m{m}: k changed by refinement on {int(changed.sum())} of {changed.size} instances; "
              f"up {int((k_r > k_t).sum())}, down {int((k_r < k_t).sum())}"
              + (f" (trained -> refined: {', '.join(f'{a}->{b}' for a, b in pairs)})" if pairs else ""), flush=True)


if __name__ == "__main__":
    main()
