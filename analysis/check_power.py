"""How long a stored bias check would have to run to resolve its tolerance.

`checks.within` passes a step-size or batch check only when it is *resolved*: its standard
error is at most its tolerance (5% for the step size, 2% for the batch), so that a bias of
that size would show. A check of T steps whose standard error falls as 1 / sqrt(T) (batch
means over a stationary stretch) would be resolved by T (se / tol)^2 steps. Short checks
have not reached stationarity, so the extrapolation is a lower bound on what is needed.

For a flagship dataset (`weights_vs_activations.nc` or one of its sweep chunks), per model
and check: how many estimates the check failed, how many of those were unresolved rather
than resolved and too large, and the median and 90th percentile of the check length that
would resolve them.

    python -m analysis.check_power results/default/weights_vs_activations.nc [--check-steps 300]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import xarray as xr

from slt_superposition.checks import BATCH_TOL, STEP_TOL, within

CHECKS = {"step size": ("llc_step_check_rel_diff", "llc_step_check_se", STEP_TOL),
          "batch": ("llc_batch_check_rel_diff", "llc_batch_check_se", BATCH_TOL)}


def check_power(one: xr.Dataset, check_steps: int) -> list[dict]:
    """Rows (one per check) for one model's instances: `estimates`, `failed`, `unresolved`
    (se above the tolerance, or NaN where the check ran), `resolved_too_large`, and the steps
    `T (se / tol)^2` that would resolve the unresolved ones (median, 90th percentile), T the
    check's length: `llc_batch_check_steps` where the dataset has it, else `check_steps`."""
    rows = []
    for name, (rel_name, se_name, tol) in CHECKS.items():
        rel, se = one[rel_name].values.ravel(), one[se_name].values.ravel()
        ran = ~np.isnan(rel)  # a full-batch estimate has no batch check
        failed = ~within(rel, se, tol) & ran
        unresolved = ran & ~(np.isfinite(se) & (se <= tol))
        # the batch check's own length where the dataset records it (a rerun check ran longer)
        length = one.get("llc_batch_check_steps") if name == "batch" else None
        length = np.full(se.shape, float(check_steps)) if length is None else length.values.ravel()
        selected = unresolved & np.isfinite(se)
        needed = length[selected] * (se[selected] / tol) ** 2
        quantile = lambda q: float(np.quantile(needed, q)) if needed.size else float("nan")
        rows.append(dict(check=name, tolerance=tol, estimates=int(ran.sum()), failed=int(failed.sum()),
                         unresolved=int(unresolved.sum()), resolved_too_large=int((failed & ~unresolved).sum()),
                         steps_to_resolve_median=quantile(0.5), steps_to_resolve_p90=quantile(0.9)))
    return rows


def _models(ds: xr.Dataset):
    """(label, one model's dataset) for a combined dataset or a single-model chunk."""
    if "model" in ds.dims:
        return [(str(m), ds.sel(model=m)) for m in ds["model"].values]
    return [(str(ds.attrs.get("model", "model")), ds)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="weights_vs_activations.nc or a sweep chunk of it")
    parser.add_argument("--check-steps", type=int, default=None,
                        help="the checks' length (default: the dataset's config, else 300)")
    args = parser.parse_args(argv)
    ds = xr.open_dataset(args.dataset)
    steps = args.check_steps or json.loads(ds.attrs.get("config", "{}")).get("check_steps", 300)
    print(f"{args.dataset}: checks of {steps} steps; steps to resolve = {steps} (se / tol)^2, a lower bound")
    print("| model | check | tol | estimates | failed | unresolved | resolved, too large | steps to resolve "
          "(median, 90%) |")
    print("|---|---|---|---|---|---|---|---|")
    for label, one in _models(ds):
        for r in check_power(one, steps):
            print(f"| {label} | {r['check']} | {r['tolerance']:.0%} | {r['estimates']} | {r['failed']} | "
                  f"{r['unresolved']} | {r['resolved_too_large']} | {r['steps_to_resolve_median']:,.0f}, "
                  f"{r['steps_to_resolve_p90']:,.0f} |")


if __name__ == "__main__":
    main()
