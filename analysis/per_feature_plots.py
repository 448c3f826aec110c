"""The per-feature figure: each feature's weight-refined LLC against its dimensionality D_i.

One panel per model; a point per (instance, feature): x = D_i (activation basis: the share of a
hidden dimension the feature has), y = 2 llc_i / (m + 1) (weight basis: the share of its column's
m + 1 parameters that count; 1 where every one is curved, 0 where the column is flat), coloured
by the instance's feature probability, with its standard error. Open marks: features not
represented (||W_i|| <= 0.5).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from slt_superposition.figure_style import PAGE, REFERENCE, probability_colours, style, subplots


def plot_per_feature(ds: xr.Dataset, models: list[str] | None = None):
    """`ds`: the per-feature dataset stacked along `model` (`experiments.per_feature_basis`).
    Returns the Figure (one panel per model)."""
    import matplotlib.lines as mlines

    models = list(ds["model"].values) if models is None else models
    with style():
        fig, axes = subplots(1, len(models), width=PAGE, panel_aspect=0.8, squeeze=False)
        colours_all, mappable = probability_colours(ds["feature_probability"].values)
        for ax, model in zip(axes[0], models):
            part = ds.sel(model=model)
            part = part.where(part["feature_exists"], drop=True) if "feature_exists" in part else part
            m_plus_1 = float(np.nanmax(part["column_parameters"].values))
            for k, p in enumerate(ds["feature_probability"].values):
                if p not in part["feature_probability"].values:
                    continue
                sel = part.sel(feature_probability=p)
                D = np.ravel(sel["feature_dimensionality"].values)
                y = 2 * np.ravel(sel["llc_weight"].values) / m_plus_1
                err = 2 * np.ravel(sel["llc_weight_se"].values) / m_plus_1
                rep = np.ravel(sel["represented"].values).astype(bool)
                colour = colours_all[k]
                ax.errorbar(D[rep], y[rep], yerr=err[rep], fmt="o", color=colour, markersize=3, elinewidth=0.6)
                ax.errorbar(D[~rep], y[~rep], yerr=err[~rep], fmt="o", mfc="none", color=colour, markersize=3,
                            elinewidth=0.6)
            ax.axhline(1.0, color=REFERENCE, lw=0.6, ls="--")
            ax.axhline(0.0, color=REFERENCE, lw=0.6, ls=":")
            ax.set_xlabel("feature dimensionality D_i")
            ax.set_ylabel(f"2 llc_i / (m + 1) (column LLC per parameter, m + 1 = {int(m_plus_1)})")
            ax.set_title(str(model))
        fig.colorbar(mappable, ax=list(axes[0]), label="feature probability p = 1 - S", shrink=0.8)
        handles = [mlines.Line2D([], [], marker="o", ls="", color="0.3", label="represented (||W_i|| > 0.5)"),
                   mlines.Line2D([], [], marker="o", ls="", mfc="none", color="0.3", label="not represented"),
                   mlines.Line2D([], [], ls="--", color=REFERENCE, label="every column parameter curved")]
        axes[0][0].legend(handles=handles, loc="best")
    return fig
