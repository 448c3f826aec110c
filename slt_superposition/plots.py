"""Figures for SLT result datasets: LLC loss traces, LLC estimates across a grid, and the
calibration sweep.

Each `*_figure(ds)` returns a `matplotlib.figure.Figure` (tests inspect it); each
`plot_*(ds: xr.Dataset, out_dir: Path) -> list[Path]` saves its figures and is dispatched by
`slt-superposition plot` on the dataset's kind. Style, sizes and saving: `figure_style`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from slt_superposition import figure_style as fs
from slt_superposition.provenance import read_config

MAX_ROWS, MAX_COLS = 4, 4  # trace panels: at most 16 (later instances are listed as left out)
THIN_CHAINS = 3  # chains drawn individually in each trace panel
TRACE_POINTS = 120  # block means drawn per trace: enough for the shape, few enough to read


def _instance_dims(ds: xr.Dataset) -> list[str]:
    return list(ds["llc_mean"].dims)


def _facets(ds: xr.Dataset) -> tuple[list[list[dict]], int]:
    """Panel grid of instance selections: one row per value of the first instance dim that
    varies (feature probability first), the other instance dims along the row. Returns
    (rows of {dim: index}, number of instances in the dataset)."""
    dims = _instance_dims(ds)
    if not dims:
        return [[{}]], 1
    order = sorted(dims, key=lambda d: (d != "feature_probability", ds.sizes[d] == 1))
    row_dim, rest = order[0], order[1:]
    cells = [dict(zip(rest, idx)) for idx in np.ndindex(*(ds.sizes[d] for d in rest))]
    rows = [[{row_dim: r, **cell} for cell in cells[:MAX_COLS]] for r in range(min(ds.sizes[row_dim], MAX_ROWS))]
    return rows, int(np.prod([ds.sizes[d] for d in dims]))


def _setting(ds: xr.Dataset, name: str, default):
    """A sampler setting: the per-instance variable where the dataset has one, else the attr."""
    if name in ds.data_vars:
        return ds[name].values
    return ds.attrs.get(name, default)


def _se(ds: xr.Dataset) -> xr.DataArray:
    """Standard error of llc_mean over the non-divergent chains (the `llc` dataset's `llc_se`)."""
    return ds["llc_se"]


def _title(ds: xr.Dataset, index: dict) -> str:
    return ", ".join(fs.coordinate(d, ds[d].values[i]) for d, i in index.items() if ds.sizes[d] > 1
                     or d == "feature_probability")


def llc_traces_figure(ds: xr.Dataset):
    """Loss traces of every shown instance, summarised (one panel per instance, at most 16).

    Each panel shows the excess loss L_B(w_t) - L_B(w*) in blocks of steps: the mean over the
    non-divergent chains, the band between their lowest and highest block means, the first
    THIN_CHAINS chains as thin lines, divergent chains dashed, burn-in shaded, and the level
    llc_mean / nbeta that the post-burn-in mean sets. Rows are feature probabilities (or the
    first instance dim), columns the other instance coordinates.
    """
    import matplotlib.patches as mpatches
    from matplotlib.lines import Line2D

    rows, n_instances = _facets(ds)
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    n_chains = ds.sizes["chain"]
    with fs.style():
        fig, axes = fs.subplots(n_rows, n_cols, width=fs.PAGE if n_cols > 1 else fs.COLUMN,
                                panel_aspect=0.7, sharex=True)
        block = 1
        for r, c, ax, cell in fs.facet_cells(axes, rows):
            one = ds.isel(cell)
            burnin = int(_setting(one, "num_burnin", 0))
            nbeta = float(_setting(one, "nbeta", np.nan))
            excess = one["loss_trace"].values - float(one["init_loss"])
            means, block = fs.block_means(excess, max_points=TRACE_POINTS)
            steps = one["step"].values[: means.shape[-1] * block: block]
            diverged = one["diverged"].values.astype(bool)
            ok = means[~diverged]
            if burnin:
                ax.axvspan(0, burnin, color="0.85", lw=0, zorder=0)
            if np.isfinite(ok).any():  # traces are NaN past a chain's end (per-instance lengths)
                with np.errstate(invalid="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    low, high, mean = np.nanmin(ok, 0), np.nanmax(ok, 0), np.nanmean(ok, 0)
                ax.fill_between(steps, low, high, color=fs.PALETTE[0], alpha=0.25, lw=0)
                for k in np.flatnonzero(~diverged)[:THIN_CHAINS]:
                    ax.plot(steps, means[k], color=fs.PALETTE[0], lw=0.4, alpha=0.7)
                ax.plot(steps, mean, color=fs.PALETTE[0], lw=1.2)
                lo, hi = float(np.nanmin(ok)), float(np.nanmax(ok))
                pad = 0.08 * (hi - lo or abs(hi) or 1.0)
                ax.set_ylim(min(lo, 0.0) - pad, max(hi, 0.0) + pad)
            for k in np.flatnonzero(diverged):
                ax.plot(steps, means[k], color=fs.PALETTE[1], lw=0.6, ls="--")
            ax.axhline(0.0, color=fs.REFERENCE, lw=0.6)
            level = float(one["llc_mean"]) / nbeta
            if np.isfinite(level):
                end = int(_setting(one, "num_steps", steps[-1] if len(steps) else burnin))
                ax.hlines(level, burnin, end, color=fs.PALETTE[1], lw=0.9, ls="--")
            acc = one["mala_acceptance"].values[~diverged]
            stats = (f"$\\hat\\lambda$ = {float(one['llc_mean']):.3g} $\\pm$ {float(_se(one)):.2g}, "
                     f"MALA {acc.mean() if len(acc) else float('nan'):.2f}")
            title = _title(ds, cell)
            ax.set_title(f"{title}\n{stats}" if title else stats)
            if c == 0:
                ax.set_ylabel("$L_B(w_t) - L_B(w^*)$")
            if r == n_rows - 1 or (r + 1 < n_rows and c >= len(rows[r + 1])):
                ax.set_xlabel(fs.label("step"))
                ax.tick_params(labelbottom=True)
        handles = [Line2D([], [], color=fs.PALETTE[0], lw=1.2),
                   mpatches.Patch(color=fs.PALETTE[0], alpha=0.25, lw=0),
                   Line2D([], [], color=fs.PALETTE[0], lw=0.4),
                   Line2D([], [], color=fs.PALETTE[1], lw=0.9, ls="--"),
                   Line2D([], [], color=fs.REFERENCE, lw=0.6),
                   mpatches.Patch(color="0.85", lw=0)]
        spacing = int(np.diff(ds["step"].values[:2])[0]) if ds.sizes["step"] > 1 else 1  # the stored trace_every
        labels = [f"mean over {n_chains} chains (blocks of {block * spacing} steps)",
                  "range over chains",
                  f"chains 0-{min(THIN_CHAINS, n_chains) - 1}" if n_chains > 1 else "chain 0",
                  "$\\hat\\lambda / n\\beta$ (post-burn-in mean)",
                  "$L_n(w^*)$ (zero excess)", "burn-in (left out)"]
        if ds["diverged"].values.any():
            handles.append(Line2D([], [], color=fs.PALETTE[1], lw=0.6, ls="-."))
            labels.append("divergent chain (excluded)")
        fs.legend_below(fig, handles, labels, ncol=3)
        shown = sum(len(r) for r in rows)
        more = f"; {shown} of {n_instances} instances shown" if shown < n_instances else ""
        nbetas = np.unique(np.asarray(_setting(ds, "nbeta", np.nan)))
        fixed = f"; n$\\beta$ = {float(nbetas[0]):.4g}" if len(nbetas) == 1 else ""
        fig.suptitle(f"SGLD loss traces ($\\hat\\lambda$ $\\pm$ 1 SE over chains{fixed}{more})")
    return fig


def llc_estimates_figure(ds: xr.Dataset):
    """llc_mean of every instance with +- 1 standard error over chains: against feature
    probability (log axis) when the grid has one, one colour per importance decay, seeds as
    points side by side and their mean as a line; otherwise against the first instance dim.
    Returns None for a single instance."""
    from matplotlib.lines import Line2D

    dims = _instance_dims(ds)
    if not dims or int(np.prod([ds.sizes[d] for d in dims])) < 2:
        return None
    x_dim = "feature_probability" if "feature_probability" in dims else dims[0]
    colour_dim = "importance_decay" if "importance_decay" in dims and x_dim != "importance_decay" else None
    others = [d for d in dims if d not in (x_dim, colour_dim)]
    se = _se(ds)
    x = ds[x_dim].values
    numeric = np.issubdtype(x.dtype, np.number)
    positions = x.astype(float) if numeric else np.arange(len(x), dtype=float)
    log_x = x_dim == "feature_probability" and numeric and bool((positions > 0).all())
    groups = ds[colour_dim].values if colour_dim else [None]
    with fs.style():
        fig, axes = fs.subplots(1, 1, width=fs.COLUMN, panel_aspect=0.75)
        ax = axes[0, 0]
        handles, labels = [], []
        n_other = int(np.prod([ds.sizes[d] for d in others])) if others else 1
        for g, value in enumerate(groups):
            sel = {colour_dim: g} if colour_dim else {}
            mean = ds["llc_mean"].isel(sel).transpose(x_dim, *others).values.reshape(len(x), n_other)
            err = se.isel(sel).transpose(x_dim, *others).values.reshape(len(x), n_other)
            colour = fs.PALETTE[g % (len(fs.PALETTE) - 1)]
            trusted = (ds["trusted"].isel(sel).transpose(x_dim, *others).values.reshape(len(x), n_other).astype(bool)
                       if "trusted" in ds else np.ones_like(mean, bool))
            for j in range(n_other):
                offset = (j - (n_other - 1) / 2) * 0.035
                xs = positions * 10 ** offset if log_x else positions + offset * 3
                for ok, face in ((trusted[:, j], colour), (~trusted[:, j], "white")):
                    if ok.any():  # untrusted estimates (a stored bias check failed) drawn open, not hidden
                        ax.errorbar(xs[ok], mean[ok, j], yerr=err[ok, j], fmt="o", ms=3, color=colour, mfc=face,
                                    alpha=0.85, lw=0.8)
            ax.plot(positions, np.nanmean(mean, axis=1), "-", color=colour, lw=1.0)
            handles.append(Line2D([], [], color=colour, marker="o", ms=3, lw=1.0))
            labels.append(f"{fs.label(colour_dim)}: {value:g}" if colour_dim else "LLC estimate")
        if log_x:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(positions, [str(v) for v in x])
        ax.set_xlabel(fs.label(x_dim))
        ax.set_ylabel(fs.label("llc"))
        handles.append(Line2D([], [], color="0.4", marker="o", ms=3, lw=0.8, ls="none"))
        labels.append("one instance $\\pm$ 1 SE over chains" + (f" ({', '.join(others)} side by side)" if others else ""))
        if "trusted" in ds and not bool(ds["trusted"].all()):
            handles.append(Line2D([], [], color="0.4", marker="o", mfc="white", ms=3, lw=0.8, ls="none"))
            labels.append(f"not trusted: a stored bias check failed ({int((~ds['trusted'].astype(bool)).sum())} of "
                          f"{int(ds['trusted'].size)})")
        if others:
            handles.append(Line2D([], [], color="0.4", lw=1.0))
            labels.append(f"mean over the {n_other} {', '.join(others)} values")
        d = ds.attrs.get("n_parameters")
        if d:
            ax.set_title(f"LLC of every instance (d = {int(d)} parameters)")
        fs.legend_below(fig, handles, labels, ncol=1)
    return fig


def plot_llc(ds: xr.Dataset, out_dir: Path) -> list[Path]:
    """Write `llc_traces.png` and, for more than one instance, `llc_estimates.png`."""
    out_dir = Path(out_dir)
    paths = [fs.save(llc_traces_figure(ds), out_dir / "llc_traces.png")]
    estimates = llc_estimates_figure(ds)
    if estimates is not None:
        paths.append(fs.save(estimates, out_dir / "llc_estimates.png"))
    return paths


def calibration_figure(ds: xr.Dataset):
    """The calibration's decisions in three panels (error bars: +- 1 standard error over chains).

    (a) MALA acceptance against step size with the acceptance threshold: healthy step sizes
    filled, unhealthy crossed. (b) The short-chain LLC against step size, the bias-check
    estimates at equal sampler time and their eps -> 0 extrapolation, the long-chain checks,
    and the chosen step size starred. (c) The LLC against chain length at the step size of the
    length stage, with the chosen length marked.
    """
    eps = ds["step_size"].values
    healthy = ds["healthy"].values.astype(bool)
    chosen = float(_setting(ds, "chosen_step_size", np.nan))
    length_eps = float(_setting(ds, "length_step_size", chosen))
    threshold = float(_setting(ds, "acceptance_threshold", np.nan))
    with fs.style():
        fig, axes = fs.subplots(1, 3, width=fs.PAGE, panel_aspect=0.95)
        ax_acc, ax_llc, ax_len = axes[0]
        acc = ds["acceptance"].values
        ax_acc.plot(eps, acc, "-", color="0.6", lw=0.7)
        ax_acc.plot(eps[healthy], acc[healthy], "o", color=fs.PALETTE[0], label="healthy")
        if (~healthy).any():
            ax_acc.plot(eps[~healthy], acc[~healthy], "x", color=fs.PALETTE[1], label="unhealthy (diverged or low)")
        ax_acc.axhline(threshold, color=fs.REFERENCE, lw=0.7, ls=":", label=f"acceptance threshold {threshold:.2f}")
        ax_acc.axvline(chosen, color=fs.PALETTE[2], lw=0.8, label=f"chosen eps = {chosen:.2g}")
        ax_acc.set(xscale="log", xlabel=fs.label("step_size"), ylabel="MALA acceptance",
                   ylim=(min(0.0, np.nanmin(acc) if np.isfinite(acc).any() else 0.0), 1.02),
                   title="(a) healthy step sizes")

        llc, se = ds["llc_sweep"].values, ds["llc_se_sweep"].values
        ax_llc.errorbar(eps[healthy], llc[healthy], yerr=se[healthy], fmt="o-", color=fs.PALETTE[0],
                        label="short chains, healthy")
        if (~healthy & np.isfinite(llc)).any():
            ax_llc.errorbar(eps[~healthy], llc[~healthy], yerr=se[~healthy], fmt="x", color=fs.PALETTE[1],
                            label="short chains, unhealthy")
        if "llc_bias_check" in ds and np.isfinite(ds["llc_bias_check"].values).any():
            ax_llc.errorbar(eps, ds["llc_bias_check"].values, yerr=ds["llc_se_bias_check"].values, fmt="s",
                            mfc="none", color=fs.PALETTE[3], label="bias check (equal sampler time)")
            ax_llc.plot(eps, ds["llc_extrapolated"].values, "_", ms=8, color=fs.PALETTE[3],
                        label="its eps $\\to$ 0 extrapolation")
        if "llc_long_check" in ds:
            ax_llc.plot(ds["long_check_step_size"].values, ds["llc_long_check"].values, "D", color=fs.PALETTE[4],
                        label="long chains at the chosen sampler time")
        long_llc = ds["llc_long_check"].values if "llc_long_check" in ds else np.array([np.nan])
        final = long_llc[np.isfinite(long_llc)][-1] if np.isfinite(long_llc).any() else np.nan
        ax_llc.plot([chosen], [final], "*", ms=10, color=fs.PALETTE[2], label="chosen step size and its estimate",
                    zorder=5)
        ax_llc.set(xscale="log", xlabel=fs.label("step_size"), ylabel=fs.label("llc"),
                   title="(b) LLC against step size")
        finite = llc[healthy & np.isfinite(llc)]
        if len(finite):  # unhealthy step sizes can read far off: keep the healthy ones in view
            lo, hi = min(finite.min(), np.nanmin([final, finite.min()])), max(finite.max(), np.nanmax([final, finite.max()]))
            pad = 0.3 * (hi - lo or abs(hi) or 1.0)
            ax_llc.set_ylim(lo - pad, hi + pad)

        steps = ds["num_steps"].values
        ax_len.errorbar(steps, ds["llc_length"].values, yerr=ds["llc_se_length"].values, fmt="o-",
                        color=fs.PALETTE[0], label=f"length stage at eps = {length_eps:.2g}")
        chosen_steps = int(_setting(ds, "chosen_num_steps", steps[-1]))
        ax_len.axvline(chosen_steps, color=fs.PALETTE[2], lw=0.8, label=f"chosen length {chosen_steps:,} steps")
        ok = "converged" if bool(_setting(ds, "converged", 0)) else "NOT converged"
        ax_len.set(xscale="log", xlabel="chain length (steps; first half burn-in)", ylabel=fs.label("llc"),
                   title=f"(c) chain length: {ok}")
        ax_len.set_xticks(steps, [f"{s / 1000:g}k" if s >= 1000 else str(s) for s in steps])
        ax_len.minorticks_off()
        handles, labels = {}, []
        for ax in (ax_acc, ax_llc, ax_len):
            for handle, text in zip(*ax.get_legend_handles_labels()):
                if text not in handles:
                    handles[text] = handle
                    labels.append(text)
        fs.legend_below(fig, [handles[t] for t in labels], labels, ncol=3)
        fig.suptitle("Calibration (error bars: $\\pm$ 1 SE over chains)")
    return fig


def _last_finite(da: xr.DataArray, dim: str) -> xr.DataArray:
    """The last finite value along `dim` (NaN where there is none): the long-chain check's final
    estimate, whose rounds past the walk are NaN."""
    values = np.moveaxis(da.values, da.get_axis_num(dim), -1)
    finite = np.isfinite(values)
    index = np.where(finite.any(-1), values.shape[-1] - 1 - np.argmax(finite[..., ::-1], -1), 0)
    last = np.take_along_axis(values, index[..., None], -1)[..., 0]
    return xr.DataArray(np.where(finite.any(-1), last, np.nan), dims=[d for d in da.dims if d != dim],
                        coords={d: da[d] for d in da.dims if d != dim and d in da.coords})


CALIBRATION_DIMS = ("step_size", "num_steps", "long_check", "localization", "batch_check", "eigenvalue")


def calibration_instance_dims(ds: xr.Dataset) -> list[str]:
    """The instance dims of a calibration dataset (none for `calibrate`'s one-instance dataset)."""
    if "chosen_step_size" not in ds.data_vars:
        return []
    return [d for d in ds["chosen_step_size"].dims if d not in CALIBRATION_DIMS]


def _metropolis(ds: xr.Dataset) -> bool:
    """Whether a calibration dataset calibrated Metropolis-adjusted chains (its stored settings)."""
    return "config" in ds.attrs and bool(read_config(ds.attrs).get("metropolis", False))


def calibration_grid_figure(ds: xr.Dataset):
    """What calibration chose for every instance of a grid, against feature probability (or the
    first instance dim): (a) the step size, with the curvature bound where computed; (b) the
    chain length, open where the length rule did not converge; (c) the LLC at the chosen
    settings, with the quadratic-approximation prediction; (d) the minibatch check, the relative
    difference from full batch, open where it failed, with the predicted minibatch bias
    (`batch_bias_predicted`, where stored). Other instance dims side by side."""
    from matplotlib.lines import Line2D

    dims = calibration_instance_dims(ds)
    x_dim = "feature_probability" if "feature_probability" in dims else dims[0]
    others = [d for d in dims if d != x_dim]
    x = ds[x_dim].values.astype(float)
    n_other = int(np.prod([ds.sizes[d] for d in others])) if others else 1
    log_x = x_dim == "feature_probability" and bool((x > 0).all())

    def grid(da):
        return da.transpose(x_dim, *others).values.reshape(len(x), n_other)

    def positions(j):
        offset = (j - (n_other - 1) / 2) * 0.03
        return x * 10 ** offset if log_x else x + offset

    final = _last_finite(ds["llc_long_check"], "long_check") if "llc_long_check" in ds else None
    panels = [("chosen_step_size", "step_size_bound", "(a) step size", fs.label("step_size"), True),
              ("chosen_num_steps", None, "(b) chain length", "chain length (steps)", True),
              ("final_llc", "llc_quadratic", "(c) LLC at the chosen settings", fs.label("llc"), False),
              ("batch_check_rel_diff", "batch_bias_predicted", "(d) minibatch against full batch", "relative difference",
               False)]
    with fs.style():
        fig, axes = fs.subplots(2, 2, width=fs.PAGE * 0.8, panel_aspect=0.7, sharex=True)
        for ax, (name, reference, title, ylabel, log_y) in zip(axes.ravel(), panels):
            if name == "final_llc":
                values = grid(final) if final is not None else None
                ok = grid(ds["converged"].astype(bool)) if "converged" in ds else None
            elif name == "batch_check_rel_diff" and name in ds and ds.sizes["batch_check"] == 0:
                ax.text(0.5, 0.5, "full batch:\nno minibatch check", ha="center", va="center", transform=ax.transAxes)
                ax.set(title=title, yticks=[])
                ax.set_xlabel(fs.label(x_dim))
                continue
            elif name == "batch_check_rel_diff" and name in ds:
                values = grid(ds[name].isel(batch_check=-1))
                ok = grid(ds["batch_check_passed"].isel(batch_check=-1).astype(bool))
            elif name in ds:
                values = grid(ds[name])
                ok = grid(ds["converged"].astype(bool)) if name == "chosen_num_steps" else None
            else:
                values = None
            if values is None:
                ax.set_visible(False)
                continue
            for j in range(n_other):
                colour = fs.PALETTE[0]
                good = np.ones(len(x), bool) if ok is None else ok[:, j]
                ax.plot(positions(j)[good], values[good, j], "o", color=colour, ms=3.5)
                ax.plot(positions(j)[~good], values[~good, j], "o", color=colour, mfc="white", ms=3.5)
                if reference and reference in ds:
                    ref = ds[reference].isel(batch_check=-1) if "batch_check" in ds[reference].dims else ds[reference]
                    ax.plot(positions(j), grid(ref)[:, j], "_", color=fs.PALETTE[1], ms=7, mew=1.2)
            if log_y and np.all(values[np.isfinite(values)] > 0):
                ax.set_yscale("log")
            if log_x:
                ax.set_xscale("log")
            ax.set(title=title, ylabel=ylabel)
            ax.set_xlabel(fs.label(x_dim))
            ax.tick_params(labelbottom=True)
        handles = [Line2D([], [], color=fs.PALETTE[0], marker="o", ls="none", ms=3.5),
                   Line2D([], [], color=fs.PALETTE[0], marker="o", mfc="white", ls="none", ms=3.5),
                   Line2D([], [], color=fs.PALETTE[1], marker="_", ls="none", ms=7, mew=1.2)]
        labels = ["one instance" + (f" ({', '.join(others)} side by side)" if others else ""),
                  "length rule not converged (b, c) / minibatch check failed (d)",
                  "curvature bound on eps (a" + ("; SGLD's, not applied to Metropolis-adjusted chains"
                                                 if _metropolis(ds) else "")
                  + ") / quadratic-approximation LLC (c) / predicted minibatch bias (d)"]
        fs.legend_below(fig, handles, labels, ncol=2)
        fig.suptitle("Calibration of every instance")
    return fig


def plot_calibration(ds: xr.Dataset, out_dir: Path) -> list[Path]:
    """Write `calibration.png` (see `calibration_figure`); for a grid (`calibrate_batched`),
    `calibration_grid.png` (see `calibration_grid_figure`) and `calibration.png` of the first
    instance."""
    out_dir = Path(out_dir)
    dims = calibration_instance_dims(ds)
    if not dims:
        return [fs.save(calibration_figure(ds), out_dir / "calibration.png")]
    first = ds.isel({d: 0 for d in dims})
    return [fs.save(calibration_grid_figure(ds), out_dir / "calibration_grid.png"),
            fs.save(calibration_figure(first), out_dir / "calibration.png")]
