"""Elhage et al. 2022: n=5 features, m=2 hidden, I=1, feature probability 0.05 -> a pentagon.

Several seeds; the lowest final loss is kept. Reports D_i (2/5 for a regular pentagon),
the angles between neighbouring columns (72 degrees) and draws the columns of W.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from analysis.measures import feature_dimensionality, feature_norms
from slt_superposition.experiments import command_line
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


def run(out_dir: Path, *, quick: bool = False) -> xr.Dataset:
    ds = train_grid(settings(quick))
    best = select_best_seed(ds).squeeze(("feature_probability", "importance_decay"))
    W = best["W"]
    best["D_i"] = feature_dimensionality(W)
    best["feature_norm"] = feature_norms(W)
    angles = neighbour_angles(W.values)
    best["neighbour_angle"] = xr.DataArray(angles, dims="gap", attrs={"long_name": "angle between adjacent columns", "units": "degree"})
    save_dataset(best, out_dir / "pentagon.nc")
    figure = _plot(W.values, out_dir / "pentagon.png")
    D = best["D_i"].values
    (out_dir / "report.md").write_text(
        f"# {NAME}\n\nCommand: `{command_line(NAME, out_dir, quick)}`\n\n"
        f"Best of {ds.sizes['seed']} seeds (seed {int(best.best_seed)}, loss {float(best.loss):.5f}).\n\n"
        f"| measure | this run | paper (regular pentagon) |\n|---|---|---|\n"
        f"| D_i | {', '.join(f'{d:.3f}' for d in D)} | 0.400 each |\n"
        f"| neighbour angles (deg) | {', '.join(f'{a:.1f}' for a in angles)} | 72.0 each |\n"
        f"| ||W_i|| | {', '.join(f'{v:.3f}' for v in best['feature_norm'].values)} | about 1 |\n\n"
        f"![columns of W]({figure.name})\n"
    )
    print(f"{NAME}: D_i = {[round(float(d), 3) for d in D]}, neighbour angles = {[round(float(a), 1) for a in angles]} deg")
    return best


def _plot(W: np.ndarray, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    for i in range(W.shape[1]):
        ax.plot([0, W[0, i]], [0, W[1, i]], "-o", label=f"W_{i}")
    ax.set(aspect="equal", xlim=(-1.5, 1.5), ylim=(-1.5, 1.5), title="columns of W (n=5, m=2, p=0.05)")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
