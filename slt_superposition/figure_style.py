"""One look for every figure: a paper's column widths, fonts readable there, named colours,
axis labels with units, and atomic saving.

Every plotter in the package builds its figure inside `style()` and writes it with `save`,
so a figure pasted into a two-column paper at `COLUMN` or `PAGE` width keeps 7-8 pt text.
Plotters return their `matplotlib.figure.Figure`; tests inspect it (axis labels, legend
entries, panel count) before it is saved.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from slt_superposition.io import write_atomic

COLUMN = 3.4  # inches: one column of a two-column paper
PAGE = 7.0  # inches: the full text width
DPI = 300  # PNG resolution: sharp when printed at the widths above

# Okabe & Ito's colour-blind-safe qualitative palette (black last: reserved for references)
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
REFERENCE = "0.25"  # theory lines and other reference marks
SEQUENTIAL = "viridis"  # colour scale for ordered quantities (feature probability, feature index)

RC = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "figure.titlesize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": __import__("cycler").cycler(color=PALETTE),
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "errorbar.capsize": 1.5,
    "legend.frameon": False,
    "legend.handlelength": 1.6,
    "figure.dpi": 100,
    "savefig.dpi": DPI,
    "image.cmap": SEQUENTIAL,
}

# axis labels for the names the datasets use (units in brackets where a quantity has one)
LABELS = {
    "feature_probability": "feature probability p = 1 - S",
    "importance_decay": "importance decay r (I_i = r^i)",
    "seed": "seed",
    "step": "SGLD step",
    "chain": "chain",
    "llc": "LLC estimate (lambda-hat)",
    "train_step": "training step",
    "train_loss": "training loss (importance-weighted squared error)",
    "step_size": "SGLD step size eps",
}
SYMBOLS = {"feature_probability": "p", "importance_decay": "r", "seed": "seed"}


@contextlib.contextmanager
def style():
    """Context in which figures are built and saved with the package's rcParams."""
    import matplotlib

    with matplotlib.rc_context(RC):
        yield


def subplots(nrows: int = 1, ncols: int = 1, *, width: float = COLUMN, panel_aspect: float = 0.75,
             height: float | None = None, **kwargs):
    """`plt.subplots` with constrained layout, `width` inches wide; each panel `panel_aspect` as
    tall as wide unless `height` (inches, whole figure) is given. Returns (fig, axes 2-D array)."""
    import matplotlib.pyplot as plt

    if height is None:
        height = width / ncols * panel_aspect * nrows + 0.35
    kwargs.setdefault("squeeze", False)
    return plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained", **kwargs)


def save(fig, path: str | os.PathLike) -> Path:
    """Write `fig` to `path` atomically (temp file in the same folder, then rename) and close it.

    The format follows the suffix (.png, .pdf, .svg). Returns the path.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with style():
            write_atomic(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=DPI,
                                                       bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def label(name: str) -> str:
    """The axis label for a dataset name (the name itself where none is defined)."""
    return LABELS.get(name, name.replace("_", " "))


def coordinate(name: str, value) -> str:
    """'p = 0.05', 'r = 1', 'seed 3': one instance coordinate, short."""
    symbol = SYMBOLS.get(name, name)
    if isinstance(value, (float, np.floating)):
        text = f"{float(value):.3g}"
    else:
        text = str(value.item() if hasattr(value, "item") else value)
    return f"seed {text}" if symbol == "seed" else f"{symbol} = {text}"


def probability_colours(values) -> tuple[list, object]:
    """Colours for feature probabilities on a log scale, and the ScalarMappable for a colorbar."""
    import matplotlib as mpl

    values = np.asarray(values, dtype=float)
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    norm = mpl.colors.LogNorm(lo, hi if hi > lo else lo * 10)
    # 5% to 85% of the colour map: stop short of viridis's pale yellow end, which vanishes on white
    # paper; the colorbar is the same part, so a point reads its p off the bar
    full = mpl.colormaps[SEQUENTIAL]
    cmap = mpl.colors.ListedColormap(full(np.linspace(0.05, 0.85, 256)))
    mappable = mpl.cm.ScalarMappable(norm=norm, cmap=cmap)
    colours = [cmap(float(norm(v))) for v in values]
    return colours, mappable


def feature_colours(n: int) -> list:
    """n distinguishable colours for feature indices (qualitative up to 8, sequential beyond)."""
    import matplotlib as mpl

    if n <= len(PALETTE) - 1:
        return list(PALETTE[:n])
    return [mpl.colormaps[SEQUENTIAL](0.9 * i / max(n - 1, 1)) for i in range(n)]


def block_means(y: np.ndarray, max_points: int = 300) -> tuple[np.ndarray, int]:
    """Means of consecutive blocks along the last axis so that at most `max_points` remain.

    Returns (block means (..., blocks), block length); a trailing partial block is dropped.
    """
    y = np.asarray(y)
    k = max(1, int(np.ceil(y.shape[-1] / max_points)))
    blocks = y.shape[-1] // k
    return y[..., : blocks * k].reshape(y.shape[:-1] + (blocks, k)).mean(-1), k


def legend_below(fig, handles, labels, ncol: int | None = None):
    """One legend for the whole figure, under the panels (explains every mark once)."""
    ncol = ncol or min(len(handles), 3)
    return fig.legend(handles, labels, loc="outside lower center", ncol=ncol)


def facet_cells(axes, rows):
    """Walk a ragged grid of facets: yields (r, c, ax, cell) for `rows[r][c]` on `axes[r, c]` and
    hides the axes past the end of a shorter row."""
    n_cols = axes.shape[1]
    for r, row in enumerate(rows):
        for c in range(n_cols):
            if c >= len(row):
                axes[r, c].set_visible(False)
                continue
            yield r, c, axes[r, c], row[c]

