"""Figures for training grids (and, below, for the weight-vs-activation comparison).

Every plotting function takes a result dataset and an output folder and returns the
paths of the PNG files it wrote (`slt-superposition plot` dispatches here by dataset kind).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import xarray as xr

from analysis.measures import STICKY_VALUES, dimensions_per_feature, feature_dimensionality

GRID_DIMS = ("feature_probability", "importance_decay", "seed")
MAX_PANELS = 36  # small multiples beyond this are unreadable; later instances are left out


def _instances(ds: xr.Dataset) -> list[dict]:
    """Selections {dim: value} of every instance, grid order, at most MAX_PANELS."""
    dims = [d for d in GRID_DIMS if d in ds.dims]
    index = [dict(zip(dims, values)) for values in np.ndindex(*(ds.sizes[d] for d in dims))]
    return index[:MAX_PANELS]


def _title(ds: xr.Dataset, isel: dict) -> str:
    short = {"feature_probability": "p", "importance_decay": "r", "seed": "seed"}
    parts = [f"{short[d]}={ds[d].values[i]:.3g}" for d, i in isel.items() if ds.sizes[d] > 1 or d == "feature_probability"]
    return ", ".join(parts)


def _grid_figure(n_panels: int, size: float = 2.2):
    import matplotlib.pyplot as plt

    cols = min(n_panels, 6)
    rows = math.ceil(n_panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + 0.4), squeeze=False)
    for ax in axes.ravel()[n_panels:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _plot_columns_2d(ds: xr.Dataset, out_dir: Path) -> Path:
    """m = 2: each feature's column W_i as an arrow in the hidden plane, one panel per instance."""
    import matplotlib.pyplot as plt

    selections = _instances(ds)
    fig, axes = _grid_figure(len(selections))
    colors = plt.cm.viridis(np.linspace(0, 1, ds.sizes["feature"]))
    for ax, isel in zip(axes, selections):
        W = ds["W"].isel(isel).transpose("hidden", "feature").values
        for i in range(W.shape[1]):
            ax.plot([0, W[0, i]], [0, W[1, i]], color=colors[i], lw=1.5)
            ax.scatter(W[0, i], W[1, i], color=colors[i], s=12, zorder=3)
        ax.set_xlim(-1.5, 1.5)
        ax.set_ylim(-1.5, 1.5)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(_title(ds, isel), fontsize=8)
    fig.suptitle(f"columns of W (n={ds.sizes['feature']}, m=2); colour = feature index", fontsize=10)
    return _save(fig, out_dir / "W_columns.png")


def _plot_gram(ds: xr.Dataset, out_dir: Path) -> Path:
    """W^T W heat map (feature x feature), one panel per instance."""
    selections = _instances(ds)
    fig, axes = _grid_figure(len(selections))
    image = None
    for ax, isel in zip(axes, selections):
        W = ds["W"].isel(isel).transpose("hidden", "feature").values
        image = ax.imshow(W.T @ W, cmap="RdBu_r", vmin=-1.2, vmax=1.2)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(_title(ds, isel), fontsize=8)
    fig.colorbar(image, ax=list(axes[: len(selections)]), shrink=0.6, label="W^T W")
    fig.suptitle(f"W^T W (n={ds.sizes['feature']}, m={ds.sizes['hidden']})", fontsize=10)
    return _save(fig, out_dir / "WtW.png")


def _plot_dimensionality(ds: xr.Dataset, out_dir: Path) -> Path:
    """D_i of every feature against 1/D* of its instance, sticky values as lines (Elhage Fig.)."""
    import matplotlib.pyplot as plt

    D_i = feature_dimensionality(ds["W"])
    inv_D_star = 1.0 / dimensions_per_feature(ds["W"])
    x, y = xr.broadcast(inv_D_star, D_i)
    fig, ax = plt.subplots(figsize=(6, 4))
    color_by = ds["feature_probability"] if "feature_probability" in x.dims else None
    if color_by is not None:
        c = np.log10(xr.broadcast(ds["feature_probability"], x)[0].values.ravel())
        points = ax.scatter(x.values.ravel(), y.values.ravel(), c=c, cmap="plasma", s=8, alpha=0.7)
        fig.colorbar(points, ax=ax, label="log10 feature probability")
    else:
        ax.scatter(x.values.ravel(), y.values.ravel(), s=8)
    for value in STICKY_VALUES:
        ax.axhline(value, color="grey", lw=0.6, ls="--")
        ax.text(1.0, value, f" {value:.3g}", transform=ax.get_yaxis_transform(), va="center", fontsize=7, color="grey")
    ax.set_xlabel("1 / D* = ||W||_F^2 / m  (features per dimension)")
    ax.set_ylabel("feature dimensionality D_i")
    ax.set_ylim(-0.05, 1.1)
    ax.set_title("feature dimensionality; dashed: 1, 3/4, 2/3, 1/2, 2/5, 3/8", fontsize=9)
    return _save(fig, out_dir / "feature_dimensionality.png")


def _plot_loss_curves(ds: xr.Dataset, out_dir: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    curves = ds["loss_curve"].stack(instance=[d for d in GRID_DIMS if d in ds["loss_curve"].dims])
    for k in range(min(curves.sizes["instance"], 4 * MAX_PANELS)):
        ax.plot(ds["step"].values, curves.isel(instance=k).values, lw=0.8, alpha=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.set_title("training loss, one line per instance", fontsize=9)
    return _save(fig, out_dir / "loss_curves.png")


def plot_training(ds: xr.Dataset, out_dir) -> list[Path]:
    """Figures for a 'train' dataset; returns the PNG paths written into `out_dir`.

    m = 2: the columns of W in the plane (one panel per instance, at most 36).
    other m: the W^T W heat maps and D_i against 1/D* with the sticky values.
    Always: the loss curves.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    if ds.sizes["hidden"] == 2:
        paths.append(_plot_columns_2d(ds, out_dir))
    else:
        paths.append(_plot_gram(ds, out_dir))
        paths.append(_plot_dimensionality(ds, out_dir))
    if "loss_curve" in ds:
        paths.append(_plot_loss_curves(ds, out_dir))
    return paths
