"""The flagship's fragility figure (`analysis.fragility_test`): left, each instance's
susceptibility (RMS of its response matrix of ||W_i||) against the feature probability, the
region of undercomplete weights and overcomplete activations marked; right, chi(p_j, ||W_i||)
against the retrained Delta ||W_i|| (the first-order prediction against training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from analysis.fragility_test import GROUP, response_measures


def plot_fragility(ds: xr.Dataset, out_dir: Path, prefix: str = "") -> Path:
    """Draw and save `<prefix>fragility_susceptibility.png` into `out_dir`; returns its path."""
    import matplotlib.pyplot as plt

    from slt_superposition.figure_style import save

    measures = response_measures(ds)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = "osD^v<>"
    for k, model in enumerate(ds["model"].values):
        rms = measures["susceptibility_rms_norm"].sel(model=model)
        group = ds[GROUP].sel(model=model).values.astype(bool)
        p = np.broadcast_to(ds["feature_probability"].values[:, None], rms.shape)
        for inside, colour, name in ((True, "tab:red", "region"), (False, "tab:blue", "outside")):
            pick = group == inside
            left.scatter(p[pick], rms.values[pick], marker=markers[k % len(markers)], color=colour, alpha=0.7,
                         label=f"{model}, {name}")
        chi = ds["susceptibility_norm"].sel(model=model)
        delta = ds["retrain_delta_norm"].sel(model=model).reindex_like(chi)
        ok = np.isfinite(chi.values) & np.isfinite(delta.values)
        right.scatter(chi.values[ok], delta.values[ok], marker=markers[k % len(markers)], s=14, alpha=0.7,
                      label=str(model))
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("feature probability p")
    left.set_ylabel("RMS of chi(p_j, ||W_i||)")
    left.set_title("susceptibility per instance")
    left.legend(fontsize=7)
    lim = np.nanmax(np.abs(right.get_xlim() + right.get_ylim()))
    right.plot([-lim, lim], [-lim, lim], color="0.5", lw=0.8)
    right.set_xscale("symlog", linthresh=1e-3)
    right.set_yscale("symlog", linthresh=1e-3)
    right.set_xlabel("chi(p_j, ||W_i||), predicted change")
    right.set_ylabel("retrained Delta ||W_i||")
    right.set_title("prediction against retraining")
    right.legend(fontsize=7)
    return save(fig, Path(out_dir) / f"{prefix}fragility_susceptibility.png")
