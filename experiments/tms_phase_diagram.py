"""Elhage et al. 2022, n=2, m=1: which of two features a single neuron keeps.

Grid: importance of feature 2, r = importance_decay (I = (1, r)), from 0.1 to 10, and
feature probability s = 1 - S from 1 to 0.01, both log-spaced; several seeds, the lowest
loss kept. Each point is classified from the trained W (1, 2) and compared with the phase
of lowest analytic loss (docs/references.md):

    feature 1 only:  r (s/3 - s^2/4)     (feature 2 ignored, its bias at the mean)
    feature 2 only:  s/3 - s^2/4
    antipodal pair:  (1 + r) s^2 / 6

Trained with the resumable sweep (one chunk per feature probability).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import xarray as xr

from analysis.measures import feature_norms
from experiments.registry import header
from slt_superposition import markdown
from slt_superposition.io import save_dataset
from slt_superposition.sweep import run_sweep
from toy_models.train import TrainConfig, select_best_seed, train_grid

NAME = "tms-phase-diagram"
PHASES = ("feature 1 only", "feature 2 only", "antipodal pair", "other")


def settings(quick: bool) -> TrainConfig:
    k = 7 if quick else 15
    return TrainConfig(
        n_features=2, n_hidden=1,
        feature_probabilities=tuple(np.round(np.logspace(0, -2, k), 6)),
        importance_decays=tuple(np.round(np.logspace(-1, 1, k), 6)),
        seeds=3 if quick else 5, steps=3000 if quick else 10_000, batch_size=1024,
        learning_rate=1e-2 if quick else 3e-3, eval_samples=16_384,
    )


def analytic_phase(s, r) -> np.ndarray:
    """Index into PHASES of the lowest analytic loss; s, r broadcast."""
    s, r = np.broadcast_arrays(np.asarray(s, float), np.asarray(r, float))
    ignore = s / 3 - s**2 / 4
    losses = np.stack([r * ignore, ignore, (1 + r) * s**2 / 6])
    return np.argmin(losses, axis=0)


def trained_phase(W: xr.DataArray) -> xr.DataArray:
    """Index into PHASES from W (..., hidden=1, feature=2): represented = ||W_i|| > 0.5."""
    on = (feature_norms(W) > 0.5).values
    sign = np.sign(W.isel(hidden=0).values)
    phase = np.full(on.shape[:-1], 3)
    phase[on[..., 0] & ~on[..., 1]] = 0
    phase[~on[..., 0] & on[..., 1]] = 1
    phase[on[..., 0] & on[..., 1] & (sign[..., 0] != sign[..., 1])] = 2
    dims = tuple(d for d in W.dims if d not in ("hidden", "feature"))
    return xr.DataArray(phase, dims=dims, coords={d: W[d] for d in dims})


def run(out_dir: Path, *, size: str = "default", progress: bool = True) -> xr.Dataset:
    """Train the grid (resumable, one chunk per feature probability) and classify every point; write
    phase_diagram.nc, phase_diagram.png and report.md under `out_dir`."""
    config = settings(size == "quick")
    chunks = [{"feature_probability": p} for p in config.feature_probabilities]
    compute = lambda c: train_grid(dataclasses.replace(config, feature_probabilities=(c["feature_probability"],)), progress=False)
    ds = run_sweep(NAME, config.to_dict(), chunks, compute, out_dir / "sweep", progress=progress)
    best = select_best_seed(ds)
    phase = trained_phase(best["W"])
    s, r = np.meshgrid(best.feature_probability.values, best.importance_decay.values, indexing="ij")
    predicted = xr.DataArray(analytic_phase(s, r), dims=phase.dims, coords=phase.coords)
    best["phase"] = phase.assign_attrs(long_name="trained phase: " + ", ".join(f"{i} {p}" for i, p in enumerate(PHASES)), units="1")
    best["phase_predicted"] = predicted.assign_attrs(long_name="phase of lowest analytic loss (same codes)", units="1")
    agreement = float((phase == predicted).mean())
    best.attrs["agreement_fraction"] = agreement
    save_dataset(best, out_dir / "phase_diagram.nc")
    figure = _plot(best, out_dir / "phase_diagram.png")
    _report(out_dir, best, agreement, figure, size)
    print(f"{NAME}: trained phase agrees with the analytic phase at {agreement:.1%} of {phase.size} points")
    return best


def figure(ds: xr.Dataset):
    """Trained and analytic phase side by side over (importance of feature 2, feature probability)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from slt_superposition import figure_style as fs

    cmap = ListedColormap([fs.PALETTE[0], fs.PALETTE[1], fs.PALETTE[2], "0.85"])
    with fs.style():
        fig, axes = fs.subplots(1, 2, width=fs.PAGE * 0.75, panel_aspect=1.0, sharey=True)
        for ax, var, title in zip(axes[0], ("phase", "phase_predicted"), ("trained (best seed)", "analytic losses")):
            ax.pcolormesh(ds.importance_decay, ds.feature_probability, ds[var].values, cmap=cmap, vmin=-0.5,
                          vmax=3.5, shading="nearest")
            ax.set(xscale="log", yscale="log", xlabel="importance of feature 2 (r)", title=title)
        axes[0, 0].set_ylabel(fs.label("feature_probability"))
        handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(4)]
        fs.legend_below(fig, handles, list(PHASES), ncol=4)
    return fig


def _plot(ds: xr.Dataset, path: Path) -> Path:
    from slt_superposition import figure_style as fs

    return fs.save(figure(ds), path)


def _report(out_dir: Path, ds: xr.Dataset, agreement: float, figure: Path, size: str) -> None:
    rows = [(p, int((ds.phase == i).sum()), int((ds.phase_predicted == i).sum()) if i < 3 else "-")
            for i, p in enumerate(PHASES)]
    seeds = len(json.loads(ds.attrs["config"])["seeds"])
    disagree = ds.phase != ds.phase_predicted
    where = ""
    if bool(disagree.any()):
        p_off = ds.feature_probability.values[disagree.any("importance_decay").values]
        where = (f" The {int(disagree.sum())} disagreeing points lie at feature probabilities "
                 f"{p_off.min():.3g} to {p_off.max():.3g}.")
    finding = (f"On an n = 2, m = 1 grid of {ds.sizes['feature_probability']} feature probabilities x "
               f"{ds.sizes['importance_decay']} importances (best of {seeds} seeds per point), the trained "
               f"phase agrees with the phase of lowest analytic loss at {agreement:.1%} of the points.{where}")
    (out_dir / "report.md").write_text(
        header(NAME, NAME, out_dir, size, finding)
        + markdown.table(("phase", "trained (points)", "analytic (points)"), rows)
        + f"\n\nDataset: `phase_diagram.nc`; figure: `{figure.name}`\n\n![phase diagram]({figure.name})\n"
    )
