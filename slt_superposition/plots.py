"""Figures for SLT result datasets: LLC loss traces (and, appended by calibration, the sweep).

Every plotter has the signature `(ds: xr.Dataset, out_dir: Path) -> list[Path]` and is
dispatched by `slt-superposition plot` on the dataset's kind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

MAX_PANELS = 16


def _instances(ds: xr.Dataset) -> list[dict]:
    """Index dicts over the instance dims of an `llc` dataset (one empty dict if unbatched)."""
    inst_dims = [d for d in ds["llc_mean"].dims]
    if not inst_dims:
        return [{}]
    sizes = [ds.sizes[d] for d in inst_dims]
    return [dict(zip(inst_dims, idx)) for idx in np.ndindex(*sizes)]


def _label(ds: xr.Dataset, index: dict) -> str:
    parts = []
    for dim, i in index.items():
        value = ds[dim].values[i]
        parts.append(f"{dim}={value:.3g}" if isinstance(value, (float, np.floating)) else f"{dim}={value}")
    return ", ".join(parts)


def plot_llc(ds: xr.Dataset, out_dir: Path) -> list[Path]:
    """Loss traces per chain for each instance (small multiples, at most 16 panels).

    Each panel: one line per chain (divergent chains dashed), the initial loss L_n(w*) as a
    horizontal line, the end of burn-in as a vertical line; the title gives the LLC estimate
    and the mean MALA acceptance, the legend each chain's acceptance. Writes `llc_traces.png`
    and, for batched datasets, `llc_estimates.png` (llc_mean +- llc_std per instance).
    """
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    instances = _instances(ds)
    shown = instances[:MAX_PANELS]
    cols = min(4, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    burnin = int(ds.attrs.get("num_burnin", 0))
    for ax, index in zip(axes.flat, shown):
        one = ds.isel(index)
        for c in one["chain"].values:
            chain = one.sel(chain=c)
            accept = float(chain["mala_acceptance"])
            ax.plot(one["step"].values, chain["loss_trace"].values, lw=0.7,
                    ls="--" if bool(chain["diverged"]) else "-", label=f"chain {c}: MALA {accept:.2f}")
        ax.axhline(float(one["init_loss"]), color="k", lw=0.8, label="L_n(w*)")
        if burnin:
            ax.axvline(burnin, color="grey", ls=":", lw=0.8)
        label = _label(ds, index)
        ax.set_title(f"{label + chr(10) if label else ''}LLC {float(one['llc_mean']):.3g} +- "
                     f"{float(one['llc_std']):.2g}, MALA {float(one['mala_acceptance'].mean()):.2f}", fontsize=8)
        ax.set_xlabel("SGLD step")
        ax.set_ylabel("minibatch loss")
        if one.sizes["chain"] <= 8:
            ax.legend(fontsize=6, loc="upper right")
    for ax in list(axes.flat)[len(shown):]:
        ax.set_visible(False)
    more = f" (first {MAX_PANELS} of {len(instances)} instances)" if len(instances) > MAX_PANELS else ""
    fig.suptitle(f"SGLD loss traces{more}", fontsize=10)
    fig.tight_layout()
    paths = [out_dir / "llc_traces.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    if len(instances) > 1:
        fig, ax = plt.subplots(figsize=(max(4.0, 0.3 * len(instances)), 3.2))
        mean = ds["llc_mean"].values.ravel()
        std = ds["llc_std"].values.ravel()
        ax.errorbar(np.arange(len(mean)), mean, yerr=std, fmt="o", ms=3)
        ax.set_xlabel("instance (" + " x ".join(ds["llc_mean"].dims) + ", C order)")
        ax.set_ylabel("LLC estimate")
        fig.tight_layout()
        paths.append(out_dir / "llc_estimates.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def plot_calibration(ds: xr.Dataset, out_dir: Path) -> list[Path]:
    """The calibration sweep: LLC estimate and MALA acceptance against step size (log x),
    the chosen step size marked, unhealthy ones greyed; beside it the estimate against chain
    length at the chosen step size. Writes `calibration.png`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    eps = ds["step_size"].values
    healthy = ds["healthy"].values.astype(bool)
    chosen = float(ds.attrs["chosen_step_size"])
    fig, (ax_llc, ax_len) = plt.subplots(1, 2, figsize=(10, 3.6))
    llc, se = ds["llc_sweep"].values, np.nan_to_num(ds["llc_se_sweep"].values)
    ax_llc.errorbar(eps[healthy], llc[healthy], yerr=se[healthy], fmt="o-", color="C0", label="LLC (healthy)")
    ax_llc.errorbar(eps[~healthy], llc[~healthy], yerr=se[~healthy], fmt="x", color="0.6", label="LLC (unhealthy)")
    ax_llc.axvline(chosen, color="k", ls=":", label=f"chosen eps = {chosen:.2g}")
    ax_llc.set_xscale("log")
    ax_llc.set_xlabel("step size eps")
    ax_llc.set_ylabel("LLC estimate (short chains)")
    ax_acc = ax_llc.twinx()
    ax_acc.plot(eps, ds["acceptance"].values, "s--", color="C1", label="MALA acceptance")
    ax_acc.axhline(float(ds.attrs["acceptance_threshold"]), color="C1", lw=0.8, ls=":")
    ax_acc.set_ylabel("MALA acceptance", color="C1")
    ax_acc.set_ylim(0, 1.02)
    handles = ax_llc.get_legend_handles_labels()[0] + ax_acc.get_legend_handles_labels()[0]
    ax_llc.legend(handles=handles, fontsize=7, loc="upper left")
    ax_llc.set_title("step size sweep")

    steps = ds["num_steps"].values
    ax_len.errorbar(steps, ds["llc_length"].values, yerr=2 * np.nan_to_num(ds["llc_se_length"].values), fmt="o-")
    ax_len.set_xscale("log", base=2)
    ax_len.set_xlabel("chain length (steps, half burn-in)")
    ax_len.set_ylabel("LLC estimate (+- 2 SE)")
    ok = "converged" if int(ds.attrs.get("converged", 0)) else "NOT converged"
    ax_len.set_title(f"chain length at eps = {chosen:.2g}: {ok}")
    fig.tight_layout()
    path = out_dir / "calibration.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]
