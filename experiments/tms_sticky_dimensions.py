"""Elhage et al. 2022: n=200 features, m=20 hidden, a sweep over sparsity.

Feature dimensionality D_i of every feature against 1/D* (features per dimension), with
the sticky values 1, 3/4, 2/3, 1/2, 2/5, 3/8 drawn. Trained with the resumable sweep
(one chunk per feature probability). Uniform importance (I = 1).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import xarray as xr

from analysis.measures import STICKY_VALUES, dimensions_per_feature, feature_dimensionality
from slt_superposition import markdown
from slt_superposition.experiments import command_line
from slt_superposition.io import save_dataset
from slt_superposition.sweep import run_sweep
from toy_models.train import TrainConfig, select_best_seed, train_grid

NAME = "tms-sticky-dimensions"


def settings(quick: bool) -> TrainConfig:
    k = 8 if quick else 24
    return TrainConfig(
        n_features=200, n_hidden=20, feature_probabilities=tuple(np.round(np.logspace(0, -2.5, k), 6)),
        seeds=1 if quick else 2, steps=3000 if quick else 20_000, batch_size=256 if quick else 1024,
        learning_rate=3e-3 if quick else 1e-3, eval_samples=4096,
    )


def run(out_dir: Path, *, quick: bool = False) -> xr.Dataset:
    config = settings(quick)
    chunks = [{"feature_probabilities": list(config.feature_probabilities[i:i + 4])}
              for i in range(0, len(config.feature_probabilities), 4)]
    compute = lambda c: train_grid(dataclasses.replace(config, feature_probabilities=tuple(c["feature_probabilities"])), progress=False)
    ds = select_best_seed(run_sweep(NAME, config.to_dict(), chunks, compute, out_dir / "sweep")).squeeze("importance_decay")
    ds["D_i"] = feature_dimensionality(ds["W"])
    ds["D_star"] = dimensions_per_feature(ds["W"])
    # nearest sticky value of each represented feature (D_i > 0.1)
    D = ds["D_i"].values
    sticky = np.array(STICKY_VALUES)
    near = np.abs(D[..., None] - sticky).min(-1)
    share = float((near[D > 0.1] < 0.05).mean()) if (D > 0.1).any() else float("nan")
    ds.attrs["share_within_0.05_of_sticky"] = share
    save_dataset(ds, out_dir / "sticky_dimensions.nc")
    figure = _plot(ds, out_dir / "sticky_dimensions.png")
    finding = (f"With n = 200 features in m = 20 dimensions, trained {config.steps} steps at "
               f"{ds.sizes['feature_probability']} feature probabilities from {config.feature_probabilities[0]} to "
               f"{config.feature_probabilities[-1]}, {share:.1%} of the represented features (D_i > 0.1) lie within "
               "0.05 of one of Elhage et al.'s sticky values (1, 3/4, 2/3, 1/2, 2/5, 3/8).")
    (out_dir / "report.md").write_text(
        markdown.opening(NAME, command_line(NAME, out_dir, quick), finding)
        + f"- share of features with D_i > 0.1 lying within 0.05 of a sticky value: **{share:.1%}**\n"
        f"- 1/D* per feature probability: {', '.join(f'{1 / v:.2f}' for v in ds['D_star'].values)}\n\n"
        f"![D_i against 1/D*]({figure.name})\n"
    )
    print(f"{NAME}: {share:.1%} of represented features within 0.05 of a sticky value")
    return ds


def figure(ds: xr.Dataset):
    """D_i of every feature against 1/D* of its feature probability, sticky values dashed."""
    from slt_superposition import figure_style as fs

    with fs.style():
        fig, axes = fs.subplots(1, 1, width=fs.COLUMN, panel_aspect=0.8)
        ax = axes[0, 0]
        x = 1 / ds["D_star"].values
        colours, mappable = fs.probability_colours(ds.feature_probability.values)
        for i in range(ds.sizes["feature_probability"]):
            ax.scatter(np.full(ds.sizes["feature"], x[i]), ds["D_i"].values[i], s=4, alpha=0.4, color=colours[i], lw=0)
        for v in STICKY_VALUES:
            ax.axhline(v, lw=0.5, ls="--", color="0.5")
            ax.text(1.0, v, f" {v:.3g}", transform=ax.get_yaxis_transform(), va="center", fontsize=6, color="0.4")
        fig.colorbar(mappable, ax=ax, label=fs.label("feature_probability"))
        ax.set(xlabel="1 / D* (features per dimension)", ylabel="feature dimensionality $D_i$",
               title="n = 200, m = 20: one point per feature; dashed: sticky values")
    return fig


def _plot(ds: xr.Dataset, path: Path) -> Path:
    from slt_superposition import figure_style as fs

    return fs.save(figure(ds), path)
