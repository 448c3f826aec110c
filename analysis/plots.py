"""Figures for training grids: the columns of W, W^T W, feature dimensionality, loss curves.

Each `*_figure(ds)` returns a `matplotlib.figure.Figure` (tests inspect it);
`plot_training(ds, out_dir) -> list[Path]` saves them (`slt-superposition plot` dispatches
here by dataset kind). `draw_columns` is the one W-column drawing every figure uses. Style,
sizes and saving: `slt_superposition.figure_style`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from analysis.measures import REPRESENTED_THRESHOLD, STICKY_VALUES, dimensions_per_feature, feature_dimensionality
from slt_superposition import figure_style as fs
from slt_superposition.grid import GRID_DIMS, grid_shape
from toy_models.train import nonfinite_instances

MAX_ROWS, MAX_COLS = 6, 6  # small multiples beyond 36 panels are unreadable; the rest are counted in the title


def _facets(ds: xr.Dataset) -> tuple[list[list[dict]], int]:
    """Rows of instance selections {dim: index}: one row per feature probability, the other grid
    coordinates (importance decay x seed) along the row. Returns (rows, number of instances)."""
    dims = [d for d in GRID_DIMS if d in ds.dims]
    if not dims:
        return [[{}]], 1
    row_dim, rest = dims[0], dims[1:]
    cells = [dict(zip(rest, idx)) for idx in np.ndindex(*(ds.sizes[d] for d in rest))]
    rows = [[{row_dim: r, **cell} for cell in cells[:MAX_COLS]] for r in range(min(ds.sizes[row_dim], MAX_ROWS))]
    return rows, int(np.prod([ds.sizes[d] for d in dims]))


def _title(ds: xr.Dataset, isel: dict) -> str:
    return ", ".join(fs.coordinate(d, ds[d].values[i]) for d, i in isel.items()
                     if ds.sizes[d] > 1 or d == "feature_probability")


def mark_not_finite(ax) -> None:
    """Say in the panel that its instance's W holds a NaN or an infinity (nothing to draw)."""
    ax.text(0.5, 0.5, "W not finite\n(training diverged)", transform=ax.transAxes, ha="center", va="center",
            fontsize=6, color=fs.PALETTE[1])


def _limit(norms: np.ndarray) -> float:
    """Half-width of a W-column panel: 1.3, or 1.1 x the longest finite column."""
    finite = norms[np.isfinite(norms)]
    return max(1.3, 1.1 * float(np.max(finite, initial=0.0)))


def draw_columns(ax, W: np.ndarray, *, colours=None, limit: float | None = None, ticks: bool = True) -> None:
    """Draw each column W_i (W: (2, feature)) as a line from the origin in the hidden plane.

    Represented features (||W_i|| >= REPRESENTED_THRESHOLD) end in a filled dot, the others in
    an open circle, so a dead column (at the origin) is not mistaken for a short one. The unit
    circle ||W_i|| = 1 is dotted; both axes share one scale (`limit`, default 1.3 or the
    longest column) so lengths compare across panels.
    """
    n = W.shape[1]
    colours = colours or fs.feature_colours(n)
    norms = np.linalg.norm(W, axis=0)
    limit = limit or _limit(norms)
    circle = np.linspace(0, 2 * np.pi, 200)
    ax.plot(np.cos(circle), np.sin(circle), color="0.7", lw=0.6, ls=":", zorder=0)
    ax.axhline(0, color="0.9", lw=0.5, zorder=0)
    ax.axvline(0, color="0.9", lw=0.5, zorder=0)
    for i in range(n):
        ax.plot([0, W[0, i]], [0, W[1, i]], color=colours[i], lw=1.3)
        represented = norms[i] >= REPRESENTED_THRESHOLD
        ax.plot(W[0, i], W[1, i], "o", ms=3.5 if represented else 4.5, color=colours[i],
                mfc=colours[i] if represented else "white", mew=0.9, zorder=3)
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    if ticks:
        ax.set_xticks([-1, 0, 1])
        ax.set_yticks([-1, 0, 1])
    else:
        ax.set_xticks([])
        ax.set_yticks([])


def column_legend(fig, n: int, *, colours=None, importance: np.ndarray | None = None) -> None:
    """The legend for `draw_columns`: one entry per feature (up to 10, else a range), the unit
    circle, and the open/filled tips."""
    from matplotlib.lines import Line2D

    colours = colours or fs.feature_colours(n)
    handles, labels = [], []
    shown = range(n) if n <= 10 else (0, n - 1)
    for i in shown:
        handles.append(Line2D([], [], color=colours[i], lw=1.3))
        labels.append(f"feature {i}" + (f" (I = {importance[i]:.2g})" if importance is not None else ""))
    handles += [Line2D([], [], color="0.7", lw=0.6, ls=":"),
                Line2D([], [], color="0.3", marker="o", ms=3.5, lw=0),
                Line2D([], [], color="0.3", marker="o", ms=4.5, mfc="white", lw=0)]
    labels += ["$\\|W_i\\| = 1$", f"represented ($\\|W_i\\| \\geq$ {REPRESENTED_THRESHOLD:g})",
               f"not represented ($\\|W_i\\| <$ {REPRESENTED_THRESHOLD:g})"]
    fs.legend_below(fig, handles, labels, ncol=min(len(labels), 4))


def _importance(ds: xr.Dataset, isel: dict) -> np.ndarray | None:
    if "importance" in ds:
        values = ds["importance"]
        return values.isel({d: i for d, i in isel.items() if d in values.dims}).values
    return None


def columns_figure(ds: xr.Dataset):
    """m = 2: the columns of W in the hidden plane, one panel per instance (rows: feature
    probability; columns: the other grid coordinates), all on one scale."""
    rows, n_instances = _facets(ds)
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    n = ds.sizes["feature"]
    W_all = ds["W"].transpose(..., "hidden", "feature")
    limit = _limit(np.linalg.norm(W_all.values, axis=-2))
    colours = fs.feature_colours(n)
    with fs.style():
        fig, axes = fs.subplots(n_rows, n_cols, width=min(fs.PAGE, 1.35 * n_cols + 0.4), panel_aspect=1.0,
                                sharex=True, sharey=True)
        for r, c, ax, cell in fs.facet_cells(axes, rows):
            W = W_all.isel(cell).values
            draw_columns(ax, W, colours=colours, limit=limit)
            if not np.isfinite(W).all():
                mark_not_finite(ax)
            ax.set_title(_title(ds, cell))
            if c == 0:
                ax.set_ylabel("hidden unit 2")
            if r == n_rows - 1:
                ax.set_xlabel("hidden unit 1")
        column_legend(fig, n, colours=colours, importance=_importance(ds, rows[0][0]))
        shown = sum(len(r) for r in rows)
        more = f"; {shown} of {n_instances} instances shown" if shown < n_instances else ""
        fig.suptitle(f"Columns $W_i$ of W (n = {n} features, m = 2 hidden{more})")
    return fig


def gram_figure(ds: xr.Dataset):
    """W^T W heat map (feature x feature), one panel per instance, one colour scale."""
    rows, n_instances = _facets(ds)
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    W_all = ds["W"].transpose(..., "hidden", "feature")
    with fs.style():
        fig, axes = fs.subplots(n_rows, n_cols, width=min(fs.PAGE, 1.35 * n_cols + 0.8), panel_aspect=1.0)
        image = None
        for r, c, ax, cell in fs.facet_cells(axes, rows):
            W = W_all.isel(cell).values
            image = ax.imshow(W.T @ W, cmap="RdBu_r", vmin=-1.2, vmax=1.2)
            if not np.isfinite(W).all():
                mark_not_finite(ax)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(_title(ds, cell))
            if c == 0:
                ax.set_ylabel("feature i")
            if r == n_rows - 1:
                ax.set_xlabel("feature j")
        fig.colorbar(image, ax=axes, shrink=0.6, label="$W_i \\cdot W_j$")
        shown = sum(len(r) for r in rows)
        more = f"; {shown} of {n_instances} instances shown" if shown < n_instances else ""
        fig.suptitle(f"$W^T W$ (n = {ds.sizes['feature']}, m = {ds.sizes['hidden']}{more})")
    return fig


def dimensionality_figure(ds: xr.Dataset):
    """D_i of every feature against 1/D* of its instance, sticky values as lines (Elhage et al.)."""
    D_i = feature_dimensionality(ds["W"])
    inv_D_star = 1.0 / dimensions_per_feature(ds["W"])
    x, y = xr.broadcast(inv_D_star, D_i)
    with fs.style():
        fig, axes = fs.subplots(1, 1, width=fs.COLUMN, panel_aspect=0.8)
        ax = axes[0, 0]
        if "feature_probability" in x.dims:
            p = xr.broadcast(ds["feature_probability"], x)[0].values.ravel()
            colours, mappable = fs.probability_colours(p)
            ax.scatter(x.values.ravel(), y.values.ravel(), c=colours, s=6, alpha=0.8, lw=0)
            fig.colorbar(mappable, ax=ax, label=fs.label("feature_probability"))
        else:
            ax.scatter(x.values.ravel(), y.values.ravel(), s=6)
        for value in STICKY_VALUES:
            ax.axhline(value, color="0.6", lw=0.5, ls="--")
            ax.text(1.0, value, f" {value:.3g}", transform=ax.get_yaxis_transform(), va="center", fontsize=6,
                    color="0.4")
        ax.set_xlabel("1 / D* = $\\|W\\|_F^2$ / m (features per dimension)")
        ax.set_ylabel("feature dimensionality $D_i$")
        ax.set_ylim(-0.05, 1.1)
        ax.set_title("one point per feature; dashed: sticky values 1, 3/4, 2/3, 1/2, 2/5, 3/8")
    return fig


def loss_curves_figure(ds: xr.Dataset):
    """Training loss against step: per feature probability (and importance decay) the mean over
    seeds as a line and the range over seeds as a band."""
    from matplotlib.lines import Line2D
    import matplotlib.patches as mpatches

    curves = ds["loss_curve"]
    for dim in GRID_DIMS:
        if dim not in curves.dims:
            curves = curves.expand_dims(dim)
    p = curves["feature_probability"].values if "feature_probability" in curves.coords else np.arange(
        curves.sizes["feature_probability"])
    colours, mappable = fs.probability_colours(p) if np.all(np.asarray(p) > 0) else (fs.feature_colours(len(p)), None)
    decays = curves.sizes["importance_decay"]
    styles = ["-", "--", ":", "-."]
    steps = ds["step"].values
    with fs.style():
        fig, axes = fs.subplots(1, 1, width=fs.COLUMN, panel_aspect=0.8)
        ax = axes[0, 0]
        handles, labels = [], []
        for i in range(curves.sizes["feature_probability"]):
            for j in range(decays):
                one = curves.isel(feature_probability=i, importance_decay=j).transpose("seed", ...).values
                ax.fill_between(steps, one.min(0), one.max(0), color=colours[i], alpha=0.2, lw=0)
                ax.plot(steps, one.mean(0), color=colours[i], ls=styles[j % len(styles)], lw=1.0)
            handles.append(Line2D([], [], color=colours[i], lw=1.0))
            labels.append(fs.coordinate("feature_probability", p[i]))
        if decays > 1:
            for j in range(decays):
                handles.append(Line2D([], [], color="0.3", ls=styles[j % len(styles)], lw=1.0))
                labels.append(fs.coordinate("importance_decay", curves["importance_decay"].values[j]))
        n_seeds = curves.sizes["seed"]
        handles.append(mpatches.Patch(color="0.3", alpha=0.2, lw=0))
        labels.append(f"range over {n_seeds} seed{'s' if n_seeds > 1 else ''} (line: mean)")
        ax.set_yscale("log")
        ax.set_xlabel(fs.label("train_step"))
        ax.set_ylabel(fs.label("train_loss"))
        if len(p) <= 8 or mappable is None:
            fs.legend_below(fig, handles, labels, ncol=2)
        else:
            fig.colorbar(mappable, ax=ax, label=fs.label("feature_probability"))
            fs.legend_below(fig, handles[len(p):], labels[len(p):], ncol=1)
        ax.set_title("training loss")
    return fig


def plot_training(ds: xr.Dataset, out_dir) -> list[Path]:
    """Figures for a 'train' dataset; returns the PNG paths written into `out_dir`.

    m = 2: the columns of W in the plane (`W_columns.png`, one panel per instance, at most 36).
    other m: the W^T W heat maps (`WtW.png`) and D_i against 1/D* with the sticky values
    (`feature_dimensionality.png`). Always: the loss curves (`loss_curves.png`).

    Diverged instances (W or b not finite) are named in a `RuntimeWarning` and marked in their
    panels; if every instance diverged there is nothing to draw: `InputError`, nothing written.
    """
    import warnings

    from slt_superposition.errors import InputError

    bad = nonfinite_instances(ds)
    n_instances = int(np.prod(grid_shape(ds)))
    if bad and len(bad) == n_instances:
        raise InputError(f"nothing to draw: the weights of all {n_instances} instance(s) are not finite (NaN or inf; "
                         "training diverged): retrain with a lower learning rate")
    if bad:
        shown = "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        warnings.warn(f"the weights of {len(bad)} of {n_instances} instances are not finite ({shown}): "
                      "their panels say 'W not finite'", RuntimeWarning, stacklevel=2)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    if ds.sizes["hidden"] == 2:
        paths.append(fs.save(columns_figure(ds), out_dir / "W_columns.png"))
    else:
        paths.append(fs.save(gram_figure(ds), out_dir / "WtW.png"))
        paths.append(fs.save(dimensionality_figure(ds), out_dir / "feature_dimensionality.png"))
    if "loss_curve" in ds:
        paths.append(fs.save(loss_curves_figure(ds), out_dir / "loss_curves.png"))
    return paths
