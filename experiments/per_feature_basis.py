"""Per-feature weight basis: each feature's weight-refined LLC next to its activation-basis numbers.

    slt-superposition reproduce per-feature-basis [--quick] --out DIR

For n6_m2 and n20_m5 (TMS, uniform importance), a grid of feature probabilities is trained in one
program per model, then `analysis.per_feature.per_feature_dataset` estimates, for every instance
and every feature, the weight-refined LLC of the feature's column (all columns of all instances
in one program), the data-refined LLC (data where the feature is always active), and the
measures D_i, ||W_i||, interference, represented. Writes `per_feature.nc` (dims model,
feature_probability, importance_decay, seed, feature; n6_m2's features 6..19 are padding, marked
by `feature_exists`), `per_feature.png` and `report.md` (the medians per model and feature
probability, and the ranges the docs quote).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import numpy as np
import xarray as xr

from analysis.per_feature import PerFeatureSettings, per_feature_dataset
from analysis.per_feature_plots import plot_per_feature
from experiments.registry import command_line, header
from slt_superposition import markdown
from slt_superposition.figure_style import save
from slt_superposition.io import save_dataset, write_text
from slt_superposition.progress import progress_bar
from slt_superposition.provenance import provenance_attrs
from toy_models.train import TrainConfig, train_grid

NAME = "per-feature-basis"


@dataclasses.dataclass(frozen=True)
class Settings:
    models: tuple[tuple[int, int], ...] = ((6, 2), (20, 5))
    feature_probabilities: tuple[float, ...] = (0.3, 0.1, 0.03, 0.01)
    seeds: int = 2
    train_steps: int = 5000
    estimates: PerFeatureSettings = PerFeatureSettings()
    seed: int = 0


QUICK = Settings(feature_probabilities=(0.3, 0.1, 0.03), seeds=1, train_steps=3000,
                 estimates=PerFeatureSettings(n_samples=2048, num_chains=4, max_steps=3000, data_num_chains=2,
                                              data_max_steps=1000))


def compute_model(n: int, m: int, settings: Settings) -> xr.Dataset:
    """Train one model's grid and build its per-feature dataset (with a leading `model` dim)."""
    train = train_grid(TrainConfig(n_features=n, n_hidden=m, feature_probabilities=settings.feature_probabilities,
                                   seeds=settings.seeds, steps=settings.train_steps), progress=False)
    key = jax.random.fold_in(jax.random.key(settings.seed), n * 1000 + m)
    ds = per_feature_dataset(train, settings.estimates, key=key)
    ds["W"] = train["W"]
    ds["b"] = train["b"]
    ds["feature_exists"] = xr.Variable("feature", np.ones(n, bool))
    return ds.drop_attrs(deep=False).expand_dims(model=np.array([f"n{n}_m{m}"], dtype=object))


def combine(parts: list[xr.Dataset]) -> xr.Dataset:
    """Stack models along `model`, padding the feature axis (feature_exists False there)."""
    out = xr.concat(parts, "model", join="outer", fill_value=np.nan, coords="different", compat="equals")
    out["feature_exists"] = out["feature_exists"].fillna(False).astype(bool)
    out["represented"] = out["represented"].fillna(False).astype(bool)
    if "llc_weight_checked" in out:
        out["llc_weight_checked"] = out["llc_weight_checked"].fillna(False).astype(bool)
    per_block = out["column_parameters"]
    out["column_parameters"] = per_block.max([d for d in per_block.dims if d != "model"])
    return out


def summary_rows(ds: xr.Dataset) -> list[tuple]:
    """Per model and feature probability: the median 2 llc_i / (m + 1) of represented and of
    unrepresented features, the median D_i of represented ones, and the full LLC against the sum
    of column LLCs."""
    rows = []
    for model in ds["model"].values:
        part = ds.sel(model=model)
        part = part.isel(feature=np.flatnonzero(part["feature_exists"].values))
        frac = 2 * part["llc_weight"] / float(part["column_parameters"])
        for p in part["feature_probability"].values:
            sel = part.sel(feature_probability=p)
            rep = sel["represented"].values.astype(bool)
            f = frac.sel(feature_probability=p).values
            D = sel["feature_dimensionality"].values
            med = lambda a: f"{np.nanmedian(a):.2f}" if np.size(a) and np.isfinite(a).any() else "-"
            rows.append((str(model), f"{p:g}", f"{int(rep.sum())} / {rep.size}", med(f[rep]), med(f[~rep]), med(D[rep]),
                         f"{float(np.nanmean(sel['llc'])):.2f}", f"{float(np.nansum(sel['llc_weight']) / sel.sizes.get('seed', 1)):.2f}",
                         med(sel["llc_data"].values[rep])))
    return rows


def range_rows(ds: xr.Dataset) -> list[tuple]:
    """Per model and feature probability: the range of 2 llc_i / (m + 1) over represented and
    over unrepresented features, the unrepresented features' biases, and |grad| of the
    data-refined losses at w*."""
    rows = []
    span = lambda a: f"{np.nanmin(a):.2f} to {np.nanmax(a):.2f}" if np.size(a) else "-"
    for model in ds["model"].values:
        part = ds.sel(model=model)
        part = part.isel(feature=np.flatnonzero(part["feature_exists"].values))
        per_parameter = 2 / float(np.nanmax(part["column_parameters"].values))
        for p in part["feature_probability"].values:
            sel = part.sel(feature_probability=p)
            rep = sel["represented"].values.astype(bool)
            f = per_parameter * sel["llc_weight"].values
            rows.append((str(model), f"{p:g}", span(f[rep]), span(f[~rep]), span(sel["b"].values[~rep]),
                         span(sel["data_gradient_norm"].values)))
    return rows


def run(out_dir: Path, *, size: str = "default", progress: bool = True,
        settings: Settings | None = None) -> xr.Dataset:
    """Train and measure every model of `size` ("quick" or "default"; `settings` overrides);
    writes per_feature.nc, per_feature.png and report.md under `out_dir`."""
    settings = settings or (QUICK if size == "quick" else Settings())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    parts = []
    with progress_bar(len(settings.models), desc=NAME, enabled=progress) as bar:
        for n, m in settings.models:
            parts.append(compute_model(n, m, settings))
            bar.update()
    ds = combine(parts)
    command = command_line(NAME, out_dir, size)
    ds.attrs.update(provenance_attrs("per_feature_basis", dataclasses.asdict(settings)))
    ds.attrs["command"] = command
    save_dataset(ds, out_dir / "per_feature.nc")
    figure = save(plot_per_feature(ds), out_dir / "per_feature.png")
    minutes = (time.time() - start) / 60
    headers = ("model", "p", "represented", "median 2 llc_i/(m+1), represented", "same, not represented",
               "median D_i, represented", "LLC (whole model)", "sum of column LLCs", "median data-refined LLC, represented")
    exists = ds["feature_exists"].broadcast_like(ds["llc_weight_checked"])
    checked, total = int((ds["llc_weight_checked"] & exists).sum()), int(exists.sum())
    finding = (f"Per-feature weight-refined LLCs for {', '.join(map(str, ds['model'].values))} "
               f"({minutes:.1f} min). Each column's LLC is in units of its m + 1 parameters: 1 where every one is "
               f"curved. Per instance, the sum of the column LLCs against the whole model's LLC shows they do not add. "
               f"{checked} of {total} column estimates pass the checks a masked estimate carries (no divergent chain, "
               f"R-hat <= 1.1; no paired step-size or batch check).")
    ranges = markdown.table(("model", "p", "2 llc_i / (m + 1), represented", "same, not represented",
                             "biases of the unrepresented", "data-refined |grad L_i(w*)|"), range_rows(ds))
    write_text(out_dir / "report.md", header(NAME, NAME, out_dir, size, finding)
               + markdown.table(headers, summary_rows(ds)) + "\n\nRanges over the features:\n\n" + ranges
               + f"\n\n![per-feature LLC against D_i]({figure.name})\n")
    if progress:
        print(f"{NAME}: {minutes:.1f} min; wrote {out_dir / 'per_feature.nc'}, {figure}, report.md")
    return ds
