"""Elhage et al. 2022: n=200 features, m=20 hidden, a sweep over sparsity.

Feature dimensionality D_i of every feature against 1/D* (features per dimension), with
the sticky values 1, 3/4, 2/3, 1/2, 2/5, 3/8 drawn. Trained with the resumable sweep
(one chunk per feature probability). Uniform importance (I = 1).

The share of represented features within 0.05 of a sticky value is compared with the share a
uniform spread of D_i over the same range would give (`uniform_share`): about half of [0.1, 1]
lies within 0.05 of some sticky value, so a share well below that means D_i avoids the sticky
values, not that it is merely spread out.

    slt-superposition reproduce tms-sticky-dimensions [--quick] --out DIR [--set chunks_only=True]

(default: 24 probabilities, 2 seeds, 20,000 steps; quick: 8, 1, 3000; `chunks_only`: only the
per-probability table of the sweep chunks finished in DIR, `chunk_table`). `study(out_dir)`:
the share near sticky values and the spread of D_i around D* at three feature probabilities
under several training settings (length, learning-rate schedule, weight decay, n and m), to
find what the clustering depends on.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import xarray as xr

from analysis.measures import STICKY_VALUES, dimensions_per_feature, feature_dimensionality, represented_features
from experiments.registry import header
from slt_superposition import markdown
from slt_superposition.errors import InputError, require
from slt_superposition.io import save_dataset, write_text
from slt_superposition.sweep import MANIFEST, run_sweep
from toy_models.train import TrainConfig, select_best_seed, train_grid

NAME = "tms-sticky-dimensions"
STICKY_RANGE_LOW = 0.325  # 3/8 - 0.05: below this D* no represented feature can sit near a sticky value


def settings(size: str = "default") -> TrainConfig:
    """The sweep of `size` ("quick" or "default", the full one: 24 probabilities, 2 seeds, 20,000 steps)."""
    quick = size == "quick"
    k = 8 if quick else 24
    return TrainConfig(
        n_features=200, n_hidden=20, feature_probabilities=tuple(np.round(np.logspace(0, -2.5, k), 6)),
        seeds=1 if quick else 2, steps=3000 if quick else 20_000, batch_size=256 if quick else 1024,
        learning_rate=3e-3 if quick else 1e-3, eval_samples=4096,
    )


def near_sticky(D: np.ndarray, tolerance: float = 0.05) -> np.ndarray:
    """True where D_i lies within `tolerance` of a sticky value."""
    return np.abs(np.asarray(D)[..., None] - np.array(STICKY_VALUES)).min(-1) < tolerance


def uniform_share(low: float = 0.1, high: float = 1.0, tolerance: float = 0.05, points: int = 100_001) -> float:
    """The share of a uniform spread of D_i over [low, high] that lies within `tolerance` of a sticky value."""
    return float(near_sticky(np.linspace(low, high, points), tolerance).mean())


def sticky_summary(W: xr.DataArray) -> dict[str, float]:
    """Share of represented features (||W_i|| >= 0.5) near a sticky value, the share a uniform
    spread over their range [min D_i, 1] would give, and the median |D_i - D*| over them (0: every
    feature at the uniform D*)."""
    D = feature_dimensionality(W)
    D_star = dimensions_per_feature(W)
    rep = represented_features(W).values & (D > 0.1).values
    d = D.values[rep]
    return {"share_near_sticky": float(near_sticky(d).mean()) if d.size else float("nan"),
            "uniform_share": uniform_share(max(0.1, float(d.min())), 1.0) if d.size else float("nan"),
            "median_abs_D_minus_D_star": float(np.median(np.abs((D - D_star).values[rep]))) if d.size else float("nan"),
            "represented": int(rep.sum())}


def run(out_dir: Path, *, size: str = "default", progress: bool = True, chunks_only: bool = False) -> xr.Dataset:
    """The sweep at `size` (`settings`), its shares and figure; `chunks_only`: print `chunk_table` of
    the chunks finished in `out_dir` and return them, without computing any."""
    out_dir = Path(out_dir)
    if chunks_only:
        chunk_table(out_dir)
        return _finished_chunks(out_dir)
    config = settings(size)
    chunks = [{"feature_probabilities": list(config.feature_probabilities[i:i + 4])}
              for i in range(0, len(config.feature_probabilities), 4)]
    compute = lambda c: train_grid(dataclasses.replace(config, feature_probabilities=tuple(c["feature_probabilities"])), progress=False)
    ds = select_best_seed(run_sweep(NAME, config.to_dict(), chunks, compute, out_dir / "sweep",
                                    progress=progress)).squeeze("importance_decay")
    ds["D_i"] = feature_dimensionality(ds["W"])
    ds["D_star"] = dimensions_per_feature(ds["W"])
    # nearest sticky value of each represented feature (||W_i|| >= 0.5; a weak column can have any D_i)
    D = ds["D_i"].values
    rep = represented_features(ds["W"]).transpose("feature_probability", "feature").values & (D > 0.1)
    sticky = np.array(STICKY_VALUES)
    near = np.abs(D[..., None] - sticky).min(-1)
    share = float((near[rep] < 0.05).mean()) if rep.any() else float("nan")
    ds.attrs["share_within_0.05_of_sticky"] = share
    ds.attrs["uniform_spread_share"] = uniform_share(0.1, 1.0)
    # where a sticky value can be reached at all: D* >= 3/8 - 0.05 (sparser, every feature sits near D* < 0.325)
    in_range = (ds["D_star"] >= STICKY_RANGE_LOW).values[:, None] & rep
    share_in_range = float((near[in_range] < 0.05).mean()) if in_range.any() else float("nan")
    ds.attrs["share_within_0.05_of_sticky_where_D_star_at_least_0.325"] = share_in_range
    spread_in_range = np.abs(D - ds["D_star"].values[:, None])[in_range]
    save_dataset(ds, out_dir / "sticky_dimensions.nc")
    figure = _plot(ds, out_dir / "sticky_dimensions.png")
    finding = (f"With n = 200 features in m = 20 dimensions, trained {config.steps} steps at "
               f"{ds.sizes['feature_probability']} feature probabilities from {config.feature_probabilities[0]} to "
               f"{config.feature_probabilities[-1]}, {share:.1%} of the represented features (||W_i|| >= 0.5) lie within "
               "0.05 of one of Elhage et al.'s sticky values (1, 3/4, 2/3, 1/2, 2/5, 3/8); where D* >= 0.325 (a "
               f"sticky value is within reach), {share_in_range:.1%}.")
    write_text(out_dir / "report.md",
        header(NAME, NAME, out_dir, size, finding)
        + f"- share of represented features lying within 0.05 of a sticky value: **{share:.1%}** (a uniform "
        f"spread of D_i over [0.1, 1] would give {uniform_share(0.1, 1.0):.1%})\n"
        f"- the same where D* >= {STICKY_RANGE_LOW} ({int(in_range.sum())} features at "
        f"{int((ds['D_star'] >= STICKY_RANGE_LOW).sum())} feature probabilities): **{share_in_range:.1%}** (uniform "
        f"spread over [{STICKY_RANGE_LOW}, 1]: {uniform_share(STICKY_RANGE_LOW, 1.0):.1%}); median |D_i - D*| there "
        f"{np.median(spread_in_range) if spread_in_range.size else float('nan'):.3f}\n"
        f"- 1/D* per feature probability: {', '.join(f'{1 / v:.2f}' for v in ds['D_star'].values)}\n\n"
        f"![D_i against 1/D*]({figure.name})\n"
    )
    print(f"{NAME}: {share:.1%} of represented features within 0.05 of a sticky value; {share_in_range:.1%} where "
          f"D* >= {STICKY_RANGE_LOW}")
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


# where the sticky values can show: 1/D* from about 1.5 to 3 at n = 200, m = 20 (the quick run); at
# sparser p, D* < 3/8 and every represented feature sits near D*, below all sticky values but 0
STUDY_PROBABILITIES = (0.45, 0.3, 0.2)
STUDY = {  # name: TrainConfig changes from the quick setting
    "quick (3000 steps, lr 3e-3, batch 256)": {},
    "3.3x longer (10,000 steps)": {"steps": 10_000},
    "cosine decay to 0": {"schedule": "cosine"},
    "weight decay 0.01 (the notebook's AdamW)": {"weight_decay": 0.01},
    "n = 80, m = 8": {"n_features": 80, "n_hidden": 8},
}


def study(out_dir: Path, *, size: str = "default", progress: bool = True) -> list[dict]:
    """Every STUDY setting at STUDY_PROBABILITIES (1 seed; one size): share near a sticky value, against
    the uniform-spread share, and the median |D_i - D*|; writes `study.md` and returns the rows."""
    from slt_superposition.io import write_text

    base = dataclasses.replace(settings("quick"), feature_probabilities=STUDY_PROBABILITIES)
    rows = []
    for name, change in STUDY.items():
        ds = train_grid(dataclasses.replace(base, **change), progress=False).squeeze(("importance_decay", "seed"))
        for p in STUDY_PROBABILITIES:
            W = ds["W"].sel(feature_probability=p, method="nearest")
            row = {"setting": name, "p": p, "inverse_D_star": float(1 / dimensions_per_feature(W)),
                   **sticky_summary(W)}
            rows.append(row)
            if progress:
                print(row, file=sys.stderr, flush=True)
    table = markdown.table(
        ["setting", "p", "1/D*", "represented", "share near sticky", "uniform-spread share", "median |D_i - D*|"],
        [[r["setting"], f"{r['p']:g}", f"{r['inverse_D_star']:.2f}", r["represented"], f"{r['share_near_sticky']:.1%}",
          f"{r['uniform_share']:.1%}", f"{r['median_abs_D_minus_D_star']:.3f}"] for r in rows])
    write_text(Path(out_dir) / "study.md", "# tms-sticky-dimensions: what the clustering depends on\n\n"
               f"Made by `study` in experiments/tms_sticky_dimensions.py with out_dir {out_dir}.\n\n" + table + "\n")
    print(table)
    return rows


def _finished_chunks(out_dir: Path) -> xr.Dataset:
    """The sweep chunks finished in `out_dir/sweep`, best seed per probability (empty if none).
    `InputError` where `out_dir/sweep` holds no sweep of this experiment (no manifest, or another's)."""
    import json

    manifest = Path(out_dir) / "sweep" / MANIFEST
    try:
        name = json.loads(manifest.read_text()).get("name")
    except (OSError, ValueError):
        raise InputError(f"{out_dir} holds no {NAME} sweep (no readable {manifest.relative_to(out_dir)})") from None
    require(name == NAME, f"{out_dir}/sweep holds a sweep of {name}, not of {NAME}")
    paths = sorted((Path(out_dir) / "sweep").glob("chunk-*.nc"))
    if not paths:
        return xr.Dataset()
    return select_best_seed(xr.concat([xr.load_dataset(path) for path in paths], "feature_probability",
                                      combine_attrs="override")).squeeze("importance_decay")


def chunk_table(out_dir: Path) -> str:
    """Per feature probability (best seed), from the sweep chunks finished so far in `out_dir/sweep`
    (a run stopped; or, called from Python, a run still going: `reproduce ... --set chunks_only=True`
    refuses a folder whose lock another run holds): 1/D*, represented features, share near a sticky value, the
    uniform-spread share over their range, median |D_i - D*|. Returns (and prints) a markdown table."""
    ds = _finished_chunks(out_dir)
    if not ds.data_vars:
        print("no finished chunks")
        return "no finished chunks"
    rows = []
    for p in ds["feature_probability"].values:
        W = ds["W"].sel(feature_probability=p)
        summary = sticky_summary(W)
        rows.append([f"{p:.4g}", f"{float(1 / dimensions_per_feature(W)):.2f}", summary["represented"],
                     f"{summary['share_near_sticky']:.1%}", f"{summary['uniform_share']:.1%}",
                     f"{summary['median_abs_D_minus_D_star']:.3f}"])
    table = markdown.table(["p", "1/D*", "represented", "share near sticky", "uniform-spread share",
                            "median |D_i - D*|"], rows)
    print(table)
    return table
