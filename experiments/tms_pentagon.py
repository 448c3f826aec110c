"""Elhage et al. 2022: n=5 features, m=2 hidden, I=1, feature probability 0.05 -> a pentagon.

Several seeds; the lowest final loss is kept. Reports D_i (2/5 for a regular pentagon),
the angles between neighbouring columns (72 degrees) and draws the columns of W.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from analysis.measures import feature_dimensionality, feature_norms
from experiments.registry import header
from slt_superposition import markdown
from slt_superposition.io import save_dataset
from toy_models.train import TrainConfig, select_best_seed, train_grid

NAME = "tms-pentagon"


def settings(quick: bool) -> TrainConfig:
    return TrainConfig(n_features=5, n_hidden=2, feature_probabilities=(0.05,), seeds=4 if quick else 10,
                       steps=5000 if quick else 10_000, batch_size=1024, learning_rate=1e-3 if not quick else 3e-3)


def neighbour_angles(W: np.ndarray) -> np.ndarray:
    """Angles (degrees) between angularly adjacent columns of W: (2, n), sorted by angle."""
    theta = np.sort(np.degrees(np.arctan2(W[1], W[0])) % 360)
    return np.diff(np.append(theta, theta[0] + 360))


def run(out_dir: Path, *, size: str = "default", progress: bool = True) -> xr.Dataset:
    """Train the seeds, keep the best; write pentagon.nc, pentagon.png and report.md under `out_dir`."""
    ds = train_grid(settings(size == "quick"), progress=progress)
    best = select_best_seed(ds).squeeze(("feature_probability", "importance_decay"))
    W = best["W"]
    best["D_i"] = feature_dimensionality(W)
    best["feature_norm"] = feature_norms(W)
    angles = neighbour_angles(W.values)
    best["neighbour_angle"] = xr.DataArray(angles, dims="gap", attrs={"long_name": "angle between adjacent columns", "units": "degree"})
    save_dataset(best, out_dir / "pentagon.nc")
    figure = _plot(W.values, out_dir / "pentagon.png")
    D = best["D_i"].values
    norms = best["feature_norm"].values
    finding = (f"The best of {ds.sizes['seed']} seeds (seed {int(best.best_seed)}, loss {float(best.loss):.5f}) "
               f"{'is' if _is_regular(D, angles) else 'is not'} a regular pentagon: D_i lies within "
               f"{np.abs(D - 0.4).max():.3f} of 2/5 and the neighbouring angles within "
               f"{np.abs(angles - 72).max():.1f} degrees of 72; the columns have norms "
               f"{norms.min():.3f} to {norms.max():.3f}.")
    rows = [("D_i", ", ".join(f"{d:.3f}" for d in D), "0.400 each"),
            ("neighbour angles (deg)", ", ".join(f"{a:.1f}" for a in angles), "72.0 each"),
            ("||W_i||", ", ".join(f"{v:.3f}" for v in norms), "about 1")]
    (out_dir / "report.md").write_text(
        header(NAME, NAME, out_dir, size, finding)
        + markdown.table(("measure", "this run", "paper (regular pentagon)"), rows)
        + f"\n\n![columns of W]({figure.name})\n"
    )
    print(f"{NAME}: D_i = {[round(float(d), 3) for d in D]}, neighbour angles = {[round(float(a), 1) for a in angles]} deg")
    return best


def _is_regular(D: np.ndarray, angles: np.ndarray, tol_D: float = 0.02, tol_angle: float = 3.0) -> bool:
    """Regular pentagon: every D_i within `tol_D` of 2/5 and every neighbour angle within `tol_angle` of 72."""
    return bool(np.abs(D - 0.4).max() <= tol_D and np.abs(angles - 72).max() <= tol_angle)


def figure(W: np.ndarray):
    """The columns of W (2, 5) in the hidden plane, with the unit circle and a feature legend."""
    from analysis.plots import column_legend, draw_columns
    from slt_superposition import figure_style as fs

    with fs.style():
        fig, axes = fs.subplots(1, 1, width=fs.COLUMN * 0.8, panel_aspect=1.0)
        ax = axes[0, 0]
        draw_columns(ax, W)
        ax.set(xlabel="hidden unit 1", ylabel="hidden unit 2", title="columns of W (n = 5, m = 2, p = 0.05)")
        column_legend(fig, W.shape[1])
    return fig


def _plot(W: np.ndarray, path: Path) -> Path:
    from slt_superposition import figure_style as fs

    return fs.save(figure(W), path)
