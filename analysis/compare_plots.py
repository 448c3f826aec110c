"""Figures, table and findings for the weight-vs-activation comparison (`compare` datasets,
stacked over a `model` dim as the flagship writes them) and for `development` datasets.

Each `*_figure` returns a Figure (tests inspect it); each `plot_*` saves one with
`figure_style.save` and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from analysis.compare import OUT_OF_RANGE_CAUSES, above_symmetry_bound, untrusted_reasons  # noqa: E402
from analysis.excursion_table import NEEDS, excursion_sides  # noqa: E402
from analysis.refine import FAR_MOVE  # noqa: E402
from slt_superposition import figure_style as fs  # noqa: E402


def _models(ds: xr.Dataset) -> list[str]:
    return [str(m) for m in ds["model"].values] if "model" in ds.dims else [None]


def _geometry_changes(one: xr.DataArray | xr.Dataset) -> xr.DataArray:
    """`geometry_changes` as floats, NaN at the largest feature probability: it compares each
    instance with the next larger p, and the largest has none (`compare.fragility` stores False)."""
    p = one["feature_probability"]
    return one["geometry_changes"].astype(float).where(p < p.max())


def _one(ds: xr.Dataset, model) -> xr.Dataset:
    """One model's comparison, with a single importance decay squeezed away (`compare` keeps it)."""
    one = ds if model is None else ds.sel(model=model)
    if "importance_decay" in one.dims and one.sizes["importance_decay"] == 1:
        one = one.squeeze("importance_decay")
    return one


def _sizes(one: xr.Dataset) -> tuple[int, int]:
    """(n, m): per-model coordinates in the flagship's stacked dataset, attrs in one `compare`."""
    if "n_features" in one.variables:
        return int(one["n_features"].values), int(one["n_hidden"].values)
    return int(one.attrs["n_features"]), int(one.attrs["n_hidden"])


def _n_parameters(one: xr.Dataset) -> int:
    """d of a TMS with n features and m hidden: W (m x n) and b (n)."""
    n, m = _sizes(one)
    return n * m + n


def _model_title(one: xr.Dataset) -> str:
    n, m = _sizes(one)
    return f"n = {n}, m = {m}"


def _save(fig, out_dir: Path, name: str) -> Path:
    """Save as `out_dir/name` (atomically, figure_style's resolution) and close `fig`."""
    return fs.save(fig, Path(out_dir) / name)


def _mean_sd(da: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    return da.mean("seed").values, da.std("seed").values


def sparsity_curves_figure(ds: xr.Dataset):
    """2 llc / d (top) and k / m (bottom) against feature probability, one column per model:
    every seed as a dot, the mean over seeds as a line, +- 1 sd over seeds as a band."""
    import matplotlib.patches as mpatches
    from matplotlib.lines import Line2D

    models = _models(ds)
    rows = [("d_eff_fraction", "2 llc / d"), ("overcompleteness", "k / m")]
    with fs.style():
        fig, axes = fs.subplots(2, len(models), width=fs.PAGE if len(models) > 2 else fs.COLUMN * 1.3,
                                panel_aspect=0.8, sharex=True)
        for j, model in enumerate(models):
            one = _one(ds, model)
            p = one["feature_probability"].values
            for i, (name, label) in enumerate(rows):
                ax = axes[i, j]
                values = one[name].transpose("feature_probability", "seed").values
                mean, sd = _mean_sd(one[name])
                ax.fill_between(p, mean - sd, mean + sd, color=fs.PALETTE[0], alpha=0.2, lw=0)
                ax.plot(np.repeat(p, values.shape[1]), values.ravel(), ".", color=fs.PALETTE[0], ms=3, alpha=0.6)
                ax.plot(p, mean, "-", color=fs.PALETTE[0])
                ax.axhline(1.0, color=fs.REFERENCE, lw=0.7, ls="--")
                ax.set_xscale("log")
                if j == 0:
                    ax.set_ylabel(label)
            axes[0, j].set_title(_model_title(one))
            axes[1, j].set_xlabel(fs.label("feature_probability"))
        axes[0, 0].invert_xaxis()  # shared x: dense on the left, sparse on the right
        handles = [Line2D([], [], color=fs.PALETTE[0]), mpatches.Patch(color=fs.PALETTE[0], alpha=0.2, lw=0),
                   Line2D([], [], color=fs.PALETTE[0], marker=".", ls="none", ms=4),
                   Line2D([], [], color=fs.REFERENCE, lw=0.7, ls="--")]
        labels = ["mean over seeds", "$\\pm$ 1 sd over seeds", "one seed",
                  "1: all weight directions used (top); as many features as neurons (bottom)"]
        fs.legend_below(fig, handles, labels, ncol=2)
        fig.suptitle("Weight basis (top: 2 llc / d, the effective fraction of the weights) and activation basis "
                     "(bottom: k / m, represented features per neuron)")
    return fig


def plot_sparsity_curves(ds: xr.Dataset, out_dir: Path) -> Path:
    """Write `sparsity_curves.png` (see `sparsity_curves_figure`)."""
    return _save(sparsity_curves_figure(ds), out_dir, "sparsity_curves.png")


def scatter_figure(ds: xr.Dataset):
    """2 llc / d against k / m, every instance; colour: feature probability, marker: model."""
    from matplotlib.lines import Line2D

    markers = "osD^v<>p"
    all_p = np.concatenate([_one(ds, m)["feature_probability"].values for m in _models(ds)])
    _, mappable = fs.probability_colours(all_p)
    with fs.style():
        fig, axes = fs.subplots(1, 1, width=fs.COLUMN, panel_aspect=0.85)
        ax = axes[0, 0]
        handles, labels = [], []
        for j, model in enumerate(_models(ds)):
            one = _one(ds, model)
            p = np.broadcast_to(one["feature_probability"].values[:, None], one["overcompleteness"].shape)
            colours, _ = fs.probability_colours(p.ravel())
            marker = markers[j % len(markers)]
            ax.scatter(one["overcompleteness"].values.ravel(), one["d_eff_fraction"].values.ravel(),
                       c=[mappable.to_rgba(v) for v in p.ravel()], marker=marker, s=14, alpha=0.85, lw=0)
            handles.append(Line2D([], [], color="0.35", marker=marker, ls="none", ms=4))
            labels.append(_model_title(one))
        fig.colorbar(mappable, ax=ax, label=fs.label("feature_probability"))
        ax.axvline(1.0, color=fs.REFERENCE, lw=0.7, ls="--")
        ax.axhline(1.0, color=fs.REFERENCE, lw=0.7, ls=":")
        handles += [Line2D([], [], color=fs.REFERENCE, lw=0.7, ls="--"), Line2D([], [], color=fs.REFERENCE, lw=0.7,
                                                                              ls=":")]
        labels += ["k / m = 1 (right: overcomplete activations)",
                   "2 llc / d = 1 (all directions used; undercomplete: 2 SE below the symmetry bound)"]
        ax.set_xlabel("k / m (represented features per neuron)")
        ax.set_ylabel("2 llc / d (effective fraction of the weights)")
        fs.legend_below(fig, handles, labels, ncol=2)
        ax.set_title("one point per instance")
    return fig


def plot_scatter(ds: xr.Dataset, out_dir: Path) -> Path:
    """Write `scatter.png` (see `scatter_figure`)."""
    return _save(scatter_figure(ds), out_dir, "scatter.png")


def fragility_figure(ds: xr.Dataset):
    """Per model and feature probability: the fraction of seeds whose geometry (k) changes at
    the next larger feature probability (blank at the largest, which has none), and
    |d (2 llc / d) / d log p| (normalised by d, so models of different sizes share one scale),
    mean over seeds; the values are printed in the cells."""
    models = _models(ds)
    change = np.stack([_geometry_changes(_one(ds, m)).mean("seed").values for m in models])
    slope = np.stack([(2.0 / _n_parameters(_one(ds, m)) * np.abs(_one(ds, m)["dllc_dlogp"])).mean("seed").values
                      for m in models])
    p = ds["feature_probability"].values
    with fs.style():
        fig, axes = fs.subplots(1, 2, width=fs.PAGE, height=0.35 * len(models) + 1.6)
        for ax, values, title, cmap, label in [
            (axes[0, 0], change, "geometry changes at the next larger p", "Reds", "fraction of seeds"),
            (axes[0, 1], slope, "|d (2 llc / d) / d log p|", "magma_r", "mean over seeds"),
        ]:
            finite = values[np.isfinite(values)]
            vmax = float(finite.max()) if len(finite) and finite.max() > 0 else 1.0
            im = ax.imshow(values, aspect="auto", cmap=cmap, vmin=0, vmax=vmax)
            for (r, c), v in np.ndenumerate(values):
                if np.isfinite(v):
                    ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if v > 0.6 * vmax else "black")
            ax.set_yticks(range(len(models)), [_model_title(_one(ds, m)) for m in models])
            ax.set_xticks(range(len(p)), [f"{v:.2g}" for v in p])
            ax.set_xlabel(fs.label("feature_probability"))
            ax.set_title(title)
            fig.colorbar(im, ax=ax, label=label)
        fig.suptitle("Fragility: how much a small change of sparsity moves the arrangement")
    return fig


def plot_fragility(ds: xr.Dataset, out_dir: Path) -> Path:
    """Write `fragility.png` (see `fragility_figure`)."""
    return _save(fragility_figure(ds), out_dir, "fragility.png")


def sae_curves_figure(ds: xr.Dataset):
    """SAE against ground truth, first seed: recovered overcompleteness against k / m from W
    (top), and FVU against dictionary size / m at a few feature probabilities, k / m dotted
    in the same colour (bottom). None without SAE variables."""
    if "sae_fvu" not in ds:
        return None
    from matplotlib.lines import Line2D

    models = _models(ds)
    with fs.style():
        fig, axes = fs.subplots(2, len(models), width=fs.PAGE if len(models) > 2 else fs.COLUMN * 1.3,
                                panel_aspect=0.8)
        for j, model in enumerate(models):
            one = _one(ds, model).isel(seed=0)
            n, m = _sizes(one)
            fvu = one["sae_fvu"].dropna("dict_size", how="all")
            ps = one["feature_probability"].values
            shown = ps[np.linspace(0, len(ps) - 1, min(4, len(ps))).astype(int)]
            colours, _ = fs.probability_colours(shown)
            for colour, p in zip(colours, shown):
                curve = fvu.sel(feature_probability=p)
                axes[1, j].plot(curve["dict_size"] / m, curve.values, "o-", ms=2.5, color=colour,
                                label=fs.coordinate("feature_probability", p))
                k = float(one["overcompleteness"].sel(feature_probability=p))
                axes[1, j].axvline(k, ls=":", lw=0.8, color=colour)
            axes[0, j].plot(ps, one["overcompleteness"].values, "o-", ms=2.5, color=fs.PALETTE[0],
                            label="k / m from W")
            axes[0, j].plot(ps, one["sae_recovered_overcompleteness"].values, "s--", ms=2.5, color=fs.PALETTE[1],
                            label="recovered by the SAE")
            axes[0, j].set_xscale("log")
            axes[0, j].invert_xaxis()
            axes[0, j].set_xlabel(fs.label("feature_probability"))
            axes[0, j].set_title(f"n = {n}, m = {m} (seed 0)")
            axes[1, j].set_yscale("log")
            axes[1, j].set_xlabel("dictionary size / m")
            if j == 0:
                axes[0, j].set_ylabel("overcompleteness")
                axes[1, j].set_ylabel("fraction of variance unexplained")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        bottom = axes[1, 0].get_legend_handles_labels()
        handles += bottom[0] + [Line2D([], [], color="0.4", ls=":", lw=0.8)]
        labels += [f"FVU at {t}" for t in bottom[1]] + ["k / m from W, at the curve's p (bottom)"]
        fs.legend_below(fig, handles, labels, ncol=4)
        fig.suptitle("What a TopK SAE recovers from the activations")
    return fig


def plot_sae_curves(ds: xr.Dataset, out_dir: Path) -> Path | None:
    """Write `sae_curves.png` (see `sae_curves_figure`); None without SAE variables."""
    fig = sae_curves_figure(ds)
    return None if fig is None else _save(fig, out_dir, "sae_curves.png")


def portraits_figure(trains: list[xr.Dataset], n_panels: int = 3):
    """Weight-column portraits of m = 2 training grids: one row per model, the best seed at
    `n_panels` feature probabilities, all panels on one scale (`analysis.plots.draw_columns`:
    open circles mark columns too short to be represented)."""
    from analysis.plots import column_legend, draw_columns

    rows = []
    for train in trains:
        ps = train["feature_probability"].values
        cells = []
        for idx in np.linspace(0, len(ps) - 1, min(n_panels, len(ps))).astype(int):
            one = train.isel(feature_probability=idx, importance_decay=0)
            best = one.isel(seed=int(one["loss"].argmin("seed")))
            cells.append((float(ps[idx]), best["W"].transpose("hidden", "feature").values))
        rows.append(cells)
    n_max = max(W.shape[1] for cells in rows for _, W in cells)
    limit = max(1.3, 1.1 * max(float(np.linalg.norm(W, axis=0).max()) for cells in rows for _, W in cells))
    colours = fs.feature_colours(n_max)
    n_cols = max(len(cells) for cells in rows)
    with fs.style():
        fig, axes = fs.subplots(len(rows), n_cols, width=min(fs.PAGE, 1.5 * n_cols + 0.5), panel_aspect=1.0,
                                sharex=True, sharey=True)
        for i, j, ax, cell in fs.facet_cells(axes, rows):
            p, W = cell
            draw_columns(ax, W, colours=colours[:W.shape[1]], limit=limit)
            ax.set_title(f"n = {W.shape[1]}, {fs.coordinate('feature_probability', p)}")
            if j == 0:
                ax.set_ylabel("hidden unit 2")
            if i == len(rows) - 1:
                ax.set_xlabel("hidden unit 1")
        column_legend(fig, n_max, colours=colours)
        fig.suptitle("Columns of W, best seed (lowest loss) of each model")
    return fig


def plot_portraits(out_dir: Path, n_panels: int = 3) -> Path | None:
    """Write `portraits.png` from the m = 2 training grids `train_n*_m2.nc` in `out_dir`."""
    out_dir = Path(out_dir)
    files = sorted(out_dir.glob("train_n*_m2.nc"))
    if not files:
        return None
    trains = []
    for path in files:
        with xr.open_dataset(path) as train:
            trains.append(train.load())
    return _save(portraits_figure(trains, n_panels), out_dir, "portraits.png")


def plot_comparison(ds: xr.Dataset, out_dir: Path) -> list[Path]:
    """Every comparison figure; returns the paths written."""
    out_dir = Path(out_dir)
    paths = [plot_sparsity_curves(ds, out_dir), plot_scatter(ds, out_dir), plot_fragility(ds, out_dir),
             plot_sae_curves(ds, out_dir), plot_portraits(out_dir)]
    return [p for p in paths if p is not None]


def _development_limits(llc: np.ndarray, theory: np.ndarray, pad: float = 0.15) -> tuple[float, float]:
    """LLC-axis limits from the converged values: the estimates of the last third of the
    snapshots and the class lambdas (axis 1 is the snapshot), padded by `pad` of the range.
    Early snapshots sit at saddles, where chains slide downhill and read far below zero."""
    tail = llc[:, -max(1, llc.shape[1] // 3):]
    values = np.concatenate([tail[np.isfinite(tail)], theory[np.isfinite(theory)], [0.0]])
    lo, hi = float(values.min()), float(values.max())
    span = max(hi - lo, 1.0)
    return lo - pad * span, hi + pad * span


def plot_development(dev: xr.Dataset, out_dir: Path, kgon_llc: dict[int, float] | None = None) -> list[Path]:
    """Loss, LLC and k/m of every snapshot along training. The LLC panel draws each seed's
    estimates (solid) with the theoretical lambda of each snapshot's critical-point class
    (dashed, same colour; a gap where the class has no theory), estimates whose stored bias
    checks did not all pass (`llc_trusted`) as open circles; its limits come from the
    converged values (`_development_limits`) and estimates outside them are drawn as
    triangles on the edge; a star at the last step marks each seed's final weights refined to a
    critical point of L_n (`llc_final_refined`). Without class variables (older datasets) the
    k-gon levels `kgon_llc` are drawn instead."""
    with fs.style():
        kgon_llc = kgon_llc or {5: 7.0, 6: 8.5}
        dev = dev.isel(feature_probability=0, importance_decay=0)
        steps = dev["snapshot"].values
        has_classes = "class_llc" in dev
        llc = dev["llc_mean"].transpose("seed", "snapshot").values
        trusted = (dev["llc_trusted"].transpose("seed", "snapshot").values.astype(bool) if "llc_trusted" in dev
                   else np.ones(llc.shape, bool))
        theory = dev["class_llc"].transpose("seed", "snapshot").values if has_classes else np.full_like(llc, np.nan)
        lo, hi = _development_limits(llc, theory if has_classes else np.array(list(kgon_llc.values()), float))
        fig, axes = fs.subplots(3, 1, width=fs.COLUMN * 1.5, panel_aspect=0.3, sharex=True)
        axes = axes[:, 0]
        n_off = 0
        for s in range(dev.sizes["seed"]):
            one = dev.isel(seed=s)
            (line,) = axes[0].plot(steps, one["snapshot_loss"], "o-", ms=2, label=f"seed {int(one['seed'])}")
            color = line.get_color()
            axes[1].plot(steps, np.clip(llc[s], lo, hi), "-", lw=1, color=color)
            inside = (llc[s] >= lo) & (llc[s] <= hi)
            for shown, face in ((inside & trusted[s], color), (inside & ~trusted[s], "none")):
                if shown.any():  # open circles: the estimate's stored bias checks did not all pass
                    axes[1].plot(steps[shown], llc[s][shown], "o", ms=3, color=color, mfc=face)
            for edge, marker, off in ((lo, "v", llc[s] < lo), (hi, "^", llc[s] > hi)):
                if off.any():  # an empty unclipped line would stretch the layout to the figure's origin
                    axes[1].plot(steps[off], np.full(off.sum(), edge), marker, ms=6, color=color, clip_on=False)
                    n_off += int(off.sum())
            if has_classes:
                axes[1].plot(steps, theory[s], "--", lw=1, color=color, drawstyle="steps-post")
            if "llc_final_refined" in one:  # the final weights at a critical point of L_n
                refined = float(one["llc_final_refined"])
                axes[1].plot([steps[-1]], [np.clip(refined, lo, hi)], "*", ms=7, color=color,
                             mec="black", mew=0.4, clip_on=False)
            axes[2].plot(steps, one["overcompleteness"], "o-", ms=2, color=color)
        m = int(dev.attrs.get("n_hidden", 2))
        if has_classes:
            labels = dev["class_label"].values.ravel()
            for label, value in sorted({(str(a), float(v)) for a, v in zip(labels, dev["class_loss"].values.ravel())
                                        if np.isfinite(v)}, key=lambda t: -t[1]):
                axes[0].axhline(value, color="gray", ls=":", lw=0.8)
                axes[0].text(steps[0], value, f" {label}", va="bottom", fontsize=7, color="gray")
        else:
            for k, value in kgon_llc.items():
                axes[1].axhline(value, color="gray", ls="--", lw=0.8)
                axes[1].text(steps[0], value, f" {k}-gon", va="bottom", fontsize=7, color="gray")
        for k in kgon_llc:
            axes[2].axhline(k / m, color="gray", ls="--", lw=0.8)
            axes[2].text(steps[0], k / m, f" {k}-gon", va="bottom", fontsize=7, color="gray")
        axes[1].set_ylim(lo, hi)
        axes[0].set_ylabel("loss")
        if has_classes:
            axes[0].set_title("dotted: population loss of each class point", fontsize=8)
        axes[0].set_yscale("log")
        axes[1].set_ylabel("llc")
        note = ["dashed: lambda of the snapshot's class (gap: no theory)" if has_classes else "dashed: k-gon lambdas"]
        if n_off:
            note.append(f"{n_off} estimates off scale (triangles on the edge)")
        keys = (["open circles: not trusted"] if "llc_trusted" in dev else []) + (
            ["stars: final weights at a critical point of L_n"] if "llc_final_refined" in dev else [])
        axes[1].set_title("; ".join(note) + ("\n" + "; ".join(keys) if keys else ""), fontsize=8)
        axes[2].set_ylabel("k / m")
        axes[2].set_xlabel("training step")
        axes[2].set_xscale("log")
        axes[0].legend(fontsize=7, ncol=2)
        fig.suptitle("6 features, 2 neurons, x = mu e_i: loss, LLC and k/m along training")
    return [_save(fig, out_dir, "development.png")]


def summary_table(ds: xr.Dataset, n_rows: int = 5) -> str:
    """A markdown table: per model, a few feature probabilities, means over seeds ("geometry
    changes" towards the next larger p: "-" at the largest, which has none)."""
    cell = lambda v: "-" if not np.isfinite(v) else f"{v:.2f}"
    header = ("| model | p | k/m | 1/D* | SAE k/m (seeds with an SAE) | llc (+- se) | 2 llc / d | Hessian rank | "
              "GN rank | under & over | geometry changes at the next larger p |")
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for model in _models(ds):
        one = _one(ds, model)
        ps = one["feature_probability"].values
        geometry = _geometry_changes(one)  # over the whole p axis: the largest p has no larger neighbour
        for idx in np.linspace(0, len(ps) - 1, min(n_rows, len(ps))).astype(int):
            row = one.isel(feature_probability=idx)
            mean = lambda name: float(row[name].mean("seed")) if name in row else float("nan")
            se = float(np.sqrt((row["llc_standard_error"] ** 2).mean("seed") / row.sizes["seed"]))
            sae = float(row["sae_recovered_overcompleteness"].mean("seed")) if "sae_recovered_overcompleteness" in row else float("nan")
            lines.append(
                f"| {model} | {ps[idx]:.3g} | {mean('overcompleteness'):.2f} | {mean('features_per_dimension'):.2f} | "
                f"{sae:.2f} | {mean('llc_mean'):.2f} +- {se:.2f} | {mean('d_eff_fraction'):.2f} | "
                f"{mean('hessian_rank'):.1f} | {mean('gn_rank'):.1f} | "
                f"{mean('undercomplete_weights_overcomplete_activations'):.2f} | "
                f"{cell(float(geometry.isel(feature_probability=idx).mean('seed')))} |"
            )
    return "\n".join(lines)


def headline(ds: xr.Dataset) -> str:
    """One paragraph for the top of the report: over every model, how many instances have
    overcomplete activations, how many also have undercomplete weights, and how many
    estimates passed their bias checks (numbers from `ds`, nothing hard-coded)."""
    models = _models(ds)
    total = sum(int(np.prod(_one(ds, m)["activations_overcomplete"].shape)) for m in models)
    count = lambda name: sum(int(_one(ds, m)[name].sum()) for m in models)
    sizes = "; ".join(_model_title(_one(ds, m)) for m in models)
    meaning = ds["weights_undercomplete"].attrs.get("long_name", "") if "weights_undercomplete" in ds else ""
    text = (f"Over {total} trained instances ({sizes}), {count('activations_overcomplete')} have overcomplete "
            f"activations (k > m) and {count('undercomplete_weights_overcomplete_activations')} have both overcomplete "
            "activations and undercomplete weights" + (f" ({meaning})." if meaning else "."))
    if "llc_trusted" in ds:
        text += (f" {count('llc_trusted')} of the {total} LLC estimates are trusted (every stored bias check "
                 f"passed and the calibration's chain-length rule settled).")
    return text + " Per model, in numbers:"


def findings(ds: xr.Dataset, dev: xr.Dataset | None = None, kgon_llc: dict[int, float] | None = None) -> list[str]:
    """Sentences with the numbers the data gives (nothing here is hard-coded)."""
    import json

    out = []
    per_model = json.loads(ds.attrs.get("per_model", "{}"))
    for model in _models(ds):
        one = _one(ds, model)
        n, m = _sizes(one)
        calibrations = json.loads(per_model.get(str(model), {}).get("calibration", "{}"))
        both = float(one["undercomplete_weights_overcomplete_activations"].mean())
        over = float(one["activations_overcomplete"].mean())
        x, y = one["overcompleteness"].values.ravel(), one["d_eff_fraction"].values.ravel()
        ok = np.isfinite(x) & np.isfinite(y)
        corr = _spearman(x[ok], y[ok])
        changes = _geometry_changes(one).values  # NaN at the largest p: no larger neighbour
        paired = np.isfinite(changes)
        change, unchanged = paired & (changes == 1), paired & (changes == 0)
        slope = np.abs(one["dllc_dlogp"].values)
        at_change = float(np.nanmean(slope[change])) if change.any() else float("nan")
        elsewhere = float(np.nanmean(slope[unchanged])) if unchanged.any() else float("nan")
        text = (f"- **n={n}, m={m}**: {over:.0%} of instances have overcomplete activations (k > m) and "
                f"{both:.0%} have both overcomplete activations and undercomplete weights; the Spearman "
                f"correlation of 2 llc / d with k/m is {corr:+.2f}. The geometry changes between "
                f"neighbouring sparsities in {change.sum() / max(paired.sum(), 1):.0%} of the {int(paired.sum())} "
                f"pairs, where |d llc / d log p| "
                f"averages {at_change:.2f} against {elsewhere:.2f} elsewhere.")
        if "n_represented_trained" in one:
            moved = one["n_represented_trained"] != one["n_represented"]
            text += (" Both bases are read at the trained weights refined to a critical point of L_n; refinement "
                     f"changed k on {int(moved.sum())} of {moved.size} instances (`n_represented_trained`)")
            if "refinement_move" in one:
                move = one["refinement_move"]
                text += (f" and moved the weights by more than {FAR_MOVE:.0%} of their norm on "
                         f"{int((move > FAR_MOVE).sum())} (median move {float(move.median()):.1%}, largest "
                         f"{float(move.max()):.0%}; `refinement_move`): there the LLC describes a critical point the "
                         "training had not reached")
            text += "."
        fraction = one["d_eff_fraction"]
        negative, above = float((fraction < 0).mean()), float((fraction > 1).mean())
        text += (f" 2 llc / d is negative in {negative:.0%} of instances (the chains found lower loss than w*, "
                 f"which is then not a minimum of L_n) and above 1 in {above:.0%} (impossible for a loss analytic at "
                 "w*, possible at the ReLU kinks: K = |w| has llc 1 > d/2; or step-size bias).")
        if "violates_bound" in one:
            text += (f" The Hessian-rank bound on llc is violated in {float(one['violates_bound'].mean()):.0%} of "
                     "instances (the bound assumes a loss analytic at w*, which the ReLU TMS is not everywhere).")
        if "excess_degeneracy" in one:
            text += " " + _budget_finding(one)
        if "sae_recovered_overcompleteness" in one:
            rec = one["sae_recovered_overcompleteness"]
            # SAEs are trained on the first seeds only; the other seeds are NaN throughout
            trained = one["sae_fvu"].notnull().any("dict_size")
            reached = rec.notnull() & trained
            agree = (np.abs(rec - one["overcompleteness"]) < 0.5 / m).where(reached)
            missed = float((trained & ~reached).sum() / max(int(trained.sum()), 1))
            text += (f" Of the {int(trained.sum())} instances the SAE was trained on, {missed:.0%} reached no "
                     "dictionary size meeting the targets" + (
                         f"; where one did, it recovers k/m exactly in {float(agree.mean()):.0%}." if reached.any()
                         else "."))
        if isinstance(calibrations, dict) and calibrations:
            c = calibrations
            text += (f" Calibration (`calibrate_batched`, every instance): step sizes "
                     f"{c['step_size_range'][0]:.2g} to {c['step_size_range'][1]:.2g}, chains of "
                     f"{c['num_steps_range'][0]} to {c['num_steps_range'][1]} steps, "
                     f"{'full batch' if c['batch_size'] is None else 'batch ' + str(c['batch_size'])}; the estimate "
                     f"stopped moving with chain length on {c['converged']:.0%} of instances")
            text += (" (elsewhere it may still be moving: short chains read low at singular points)"
                     if c["converged"] < 1 else "")
            text += (f"; trusted (`llc_trusted`: every stored bias check passed and the length rule settled) on "
                     f"{c['trusted']:.0%}")
            text += _untrusted_counts(one) + "."
        text += _minibatch_bias_finding(one)
        if "llc_chains_left" in one:
            left = one["llc_chains_left"] > 0
            text += (f" On {float(left.mean()):.0%} of instances at least one chain ended with other features live "
                     "than at w* (`llc_chains_left`): those estimates average over more than w*'s configuration "
                     "(at localization 1 a dead feature's flat directions are open to the chains); the largest "
                     "distance of a chain's end from w* (rotation removed) has median "
                     f"{float(one['llc_chain_distance_max'].median()):.2f} |w*| over instances.")
            if all(name in one for name in NEEDS) and 0 < int(left.sum()) < left.size:
                sides = excursion_sides(one)
                text += (f" Median 2 llc / d {sides['left']['d_eff_fraction']:.2f} on those, "
                         f"{sides['stayed']['d_eff_fraction']:.2f} where every chain stayed; above the symmetry "
                         f"bound {sides['left']['above_bound']:.0%} and {sides['stayed']['above_bound']:.0%} "
                         "(`python -m analysis.excursion_table`).")
        out.append(text)
    if dev is not None:
        out.append(_development_finding(dev, kgon_llc or {}))
    return out


def _minibatch_bias_finding(one: xr.Dataset) -> str:
    """' The minibatch's bias predicted ...: median x% (largest y%); the paired checks measured z%.' where
    the estimates ran on minibatches and stored the prediction (`llc_batch_bias_predicted`), else ''."""
    if "llc_batch_bias_predicted" not in one:
        return ""
    predicted = one["llc_batch_bias_predicted"].values.ravel()
    if not np.isfinite(predicted).any():
        return ""
    measured = one["llc_batch_check_rel_diff"].values.ravel()
    return (f" The minibatch's bias against full batch that the rows' gradient spread at w* predicts on the quadratic "
            f"approximation (`llc_batch_bias_predicted`) has median {np.nanmedian(predicted):+.1%} (largest "
            f"{np.nanmax(predicted):+.1%}); the paired batch checks measured median {np.nanmedian(measured):+.1%}.")


def _budget_finding(one: xr.Dataset) -> str:
    """The degeneracy budget d = orbit + dead-flat + 2 llc + excess (medians over instances), where
    the weights are undercomplete (excess > 2 SE) and how many instances are out of range."""
    med = lambda name: float(one[name].median())
    d = int(one["n_parameters"].values)
    under = one["weights_undercomplete"]
    by_p = under.mean([dim for dim in under.dims if dim != "feature_probability"])
    majority = [f"{p:.3g}" for p, v in zip(by_p["feature_probability"].values, by_p.values) if v > 0.5]
    above = above_symmetry_bound(one)
    below = (2 * one["llc_mean"] < -2 * one["excess_degeneracy_se"])
    rank = f", Hessian rank {med('hessian_rank'):.1f}" if "hessian_rank" in one else ""
    return (f"Degeneracy budget (medians over instances): d = {d} = orbit {med('orbit_dimension'):g} + dead-flat "
            f"{med('dead_flat_parameters'):g} + 2 llc {2 * med('llc_mean'):.2f} + excess "
            f"{med('excess_degeneracy'):.2f} +- {med('excess_degeneracy_se'):.2f}{rank}. The weights are undercomplete "
            f"beyond symmetry and dead features (excess > 2 SE) in {float(under.mean()):.0%} of instances"
            + (f", in most seeds at p = {', '.join(majority)}" if majority else ", in most seeds at no sparsity")
            + f"; out of range in {float(one['budget_out_of_range'].mean()):.0%} (2 llc above the symmetry bound "
            f"d - orbit - dead-flat by more than 2 SE: {float(above.mean()):.0%}; below 0: {float(below.mean()):.0%})"
            + _attribution(one) + ".")


def _attribution(one: xr.Dataset) -> str:
    """'; attributed to: step size 1, ...' over the out-of-range instances (flagship datasets)."""
    if "out_of_range_cause" not in one or not one["budget_out_of_range"].any():
        return ""
    causes = one["out_of_range_cause"].values.ravel()
    older = sorted(set(causes) - set(OUT_OF_RANGE_CAUSES) - {""})  # labels of datasets written by older versions
    counts = [(c, int((causes == c).sum())) for c in (*OUT_OF_RANGE_CAUSES, *older)]
    return "; each attributed to the first failing of: " + ", ".join(f"{c} {k}" for c, k in counts)


def _untrusted_counts(one: xr.Dataset) -> str:
    """' (not trusted: R-hat 3, step size 0, ... of N; an estimate may fail several)'."""
    needed = ("llc_trusted", "llc_rhat", "llc_step_check_rel_diff", "llc_batch_check_rel_diff", "llc_n_diverged",
              "llc_calibration_converged")
    if any(name not in one for name in needed) or bool(one["llc_trusted"].all()):
        return ""
    counts = untrusted_reasons(one)
    return (f" (failed, of {int(one['llc_trusted'].size)}: " + ", ".join(f"{r} {k}" for r, k in counts.items())
            + "; an estimate may fail several)")


def _development_finding(dev: xr.Dataset, kgon_llc: dict[int, float]) -> str:
    """Per seed the sequence of critical-point classes along training (k where the dataset has
    no classes), and each final snapshot's estimate against its own class's lambda: the median
    |relative error| over the seeds whose class has a theory, with the scatter across seeds."""
    one = dev.isel(feature_probability=0, importance_decay=0)
    llc = one["llc_mean"].transpose("seed", "snapshot").values
    if "class_llc" not in one:
        return _development_finding_by_k(one, llc, kgon_llc)
    labels = one["class_label"].transpose("seed", "snapshot").values.astype(str)
    theory = one["class_llc"].transpose("seed", "snapshot").values
    paths = []
    for row in labels:
        path = [row[0]] + [b for a, b in zip(row[:-1], row[1:]) if b != a]
        paths.append(" -> ".join(path))
    per_class, negative = [], []
    for label in dict.fromkeys(labels.ravel()):
        at = labels == label
        lam, median = theory[at][0], np.nanmedian(llc[at])
        per_class.append(f"{label}: median {median:.2f} over {int(at.sum())} snapshots vs "
                         + (f"lambda {lam:g}" if np.isfinite(lam) else "no theory"))
        if median < 0:
            negative.append(label)
    final, final_theory, final_labels = llc[:, -1], theory[:, -1], labels[:, -1]
    with_theory = np.isfinite(final_theory)
    finals = "; ".join(f"{lab} {v:.2f} vs " + (f"{t:g}" if np.isfinite(t) else "no theory")
                       for lab, v, t in zip(final_labels, final, final_theory))
    below = (f" A negative median ({', '.join(negative)}) marks snapshots that are not minima of L_n (a saddle, "
             "or weights still moving): the chains slide downhill from them, and no LLC is defined there."
             if negative else "")
    text = (f"- **Development** (n=6, m=2, x = mu e_i, SGD from a small initialisation): critical-point classes "
            f"along training, per seed ('+j': j dead features with positive bias): {'; '.join(paths)}. "
            f"Estimates per class: {'; '.join(per_class)}.{below} Final snapshots (estimate vs its class's lambda): "
            f"{finals}.")
    if with_theory.any():
        rel = (final[with_theory] - final_theory[with_theory]) / final_theory[with_theory]
        text += (f" Median |relative error| over the {int(with_theory.sum())} seeds with a theory: "
                 f"{np.median(np.abs(rel)):.0%} (from {rel.min():+.0%} to {rel.max():+.0%}).")
    else:
        text += " No final snapshot is in a class with a theory."
    if "llc_chains_left" in one:
        text += " " + _snapshot_excursions(one, labels)
    if "llc_final_refined" in one and "final_refined_class_llc" in one:
        text += " " + _refined_final_finding(one)
    return text


def _snapshot_excursions(one: xr.Dataset, labels: np.ndarray) -> str:
    """Per class, on how many snapshots a chain ended with other features live than at the
    snapshot (`llc_chains_left`, development datasets since 2026-12-06): a snapshot that is
    not a critical point sends its chains away from it. `labels`: (seed, snapshot)."""
    left = one["llc_chains_left"].transpose("seed", "snapshot").values > 0
    each = "; ".join(f"{label} {int(left[labels == label].sum())} of {int((labels == label).sum())}"
                     for label in dict.fromkeys(labels.ravel()))
    return (f"Snapshots on which a chain ended with other features live than at the snapshot, per class: {each} "
            f"(final snapshots: {int(left[:, -1].sum())} of {left.shape[0]}).")


def _refined_final_finding(one: xr.Dataset) -> str:
    """The final weights refined to a critical point of L_n (`development.snapshot_llc(..., refine_final=True)`)
    against their class's lambda: trained on fresh batches, the final snapshots sit near, not
    at, a critical point of the LLC's L_n, and the snapshot estimates read low by about nbeta
    times the loss gap."""
    value = one["llc_final_refined"].transpose("seed").values
    theory = one["final_refined_class_llc"].transpose("seed").values
    labels = one["final_refined_class_label"].transpose("seed").values.astype(str)
    before = one["grad_norm_final"].transpose("seed").values
    after = one["grad_norm_final_refined"].transpose("seed").values
    trusted = int(one["llc_final_refined_trusted"].sum())
    each = "; ".join(f"{lab} {v:.2f} vs " + (f"{t:g}" if np.isfinite(t) else "no theory")
                     for lab, v, t in zip(labels, value, theory))
    text = (f"At a critical point of L_n (the final weights refined, ||grad L_n|| {np.min(before):.1e}-"
            f"{np.max(before):.1e} -> at most {np.max(after):.1e}): {each}; {trusted} of {value.size} trusted.")
    with_theory = np.isfinite(theory)
    if with_theory.any():
        rel = (value[with_theory] - theory[with_theory]) / theory[with_theory]
        text += (f" Median |relative error| {np.median(np.abs(rel)):.0%} (from {rel.min():+.0%} to "
                 f"{rel.max():+.0%}).")
    if "llc_final_refined_chains_left" in one:
        left = int((one["llc_final_refined_chains_left"] > 0).sum())
        far = float(one["llc_final_refined_chain_distance_max"].max())
        text += (f" On {left} of {value.size} a chain ended with other features live than at the refined point "
                 f"(chains ended at most {far:.2f} |w*| from it, rotation removed).")
    return text


def _development_finding_by_k(one: xr.Dataset, llc: np.ndarray, kgon_llc: dict[int, float]) -> str:
    """The finding for development datasets without classes: the median LLC at each k."""
    k = one["n_represented"].transpose("seed", "snapshot").values.astype(int)
    paths = []
    for row in k:
        path = [int(row[0])] + [int(b) for a, b in zip(row[:-1], row[1:]) if b != a]
        paths.append(" -> ".join(map(str, path)))
    levels = ", ".join(f"k = {v}: {np.nanmedian(llc[k == v]):.2f} ({int((k == v).sum())} snapshots)"
                       for v in np.unique(k))
    theory = ", ".join(f"{kk}-gon {v}" for kk, v in kgon_llc.items())
    return (f"- **Development** (n=6, m=2, x = mu e_i, SGD from a small initialisation): represented features k "
            f"along training, per seed: {'; '.join(paths)}. Median llc of the snapshots at each k: {levels} "
            f"(theory: {theory}; a negative value marks a saddle, where the chains slide downhill).")


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)
