"""Figures for 'sae' datasets (`slt-superposition sae`): decoder directions over W's columns, and the
ground-truth matching against dictionary size.

Each `*_figure(ds)` returns its `matplotlib.figure.Figure`; `plot_sae(ds, out_dir) -> list[Path]`
saves them (`slt-superposition plot` dispatches here for kind 'sae').
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from analysis.measures import REPRESENTED_THRESHOLD
from analysis.plots import _facets, _title, draw_columns
from analysis.sae_match import cosine_matrix
from slt_superposition import figure_style as fs


def _decoder_at_n_rep(ds: xr.Dataset, cell: dict) -> tuple[np.ndarray, int]:
    """The decoder `(hidden, latent)` of the dictionary with n_rep latents (or the largest trained
    size if that one was not trained), and its size."""
    one = ds.isel(cell)
    sizes = one["dict_size"].values
    n_rep = int(one["n_represented"]) if "n_represented" in one else int(sizes.max())
    size = n_rep if n_rep in sizes else int(sizes.max())
    decoder = one["decoder"].sel(dict_size=size).transpose("hidden", "latent").values
    return decoder[:, ~np.isnan(decoder).any(axis=0)], size


def decoder_figure(ds: xr.Dataset):
    """One panel per instance. m = 2: W's columns (coloured, as `analysis.plots`) with the unit
    decoder directions of the n_rep-latent SAE drawn over them (black dashed). m > 2: the cosine
    between every represented feature and every latent, latents in the order of the Hungarian
    matching (a recovered dictionary is a bright diagonal)."""
    rows, n_instances = _facets(ds)
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    m = ds.sizes["hidden"]
    W_all = ds["W"].transpose(..., "hidden", "feature")
    with fs.style():
        fig, axes = fs.subplots(n_rows, n_cols, width=min(fs.PAGE, 1.35 * n_cols + 0.4), panel_aspect=1.0,
                                squeeze=False)
        image = None
        for r, c, ax, cell in fs.facet_cells(axes, rows):
            W = W_all.isel(cell).values
            decoder, size = _decoder_at_n_rep(ds, cell)
            score = float(ds["sae_matched_cosine"].isel(cell)) if "sae_matched_cosine" in ds else float("nan")
            if m == 2:
                draw_columns(ax, W, ticks=(r == n_rows - 1 and c == 0))
                for j in range(decoder.shape[1]):
                    ax.plot([0, decoder[0, j]], [0, decoder[1, j]], color="black", lw=0.8, ls="--", zorder=4)
            else:
                from analysis.sae_match import assignment

                represented = np.linalg.norm(W, axis=0) > REPRESENTED_THRESHOLD  # `measures.represented_features`' rule
                features, latents = assignment(W, decoder, represented)
                order = list(latents[np.argsort(features)]) + [j for j in range(decoder.shape[1]) if j not in latents]
                cos = cosine_matrix(W[:, represented], decoder[:, order])
                image = ax.imshow(cos, vmin=-1, vmax=1, cmap="RdBu_r", aspect="auto")
                ax.set(xticks=[], yticks=[])
            ax.set_title(f"{_title(ds, cell)}\n{size} latents, matched {score:.2f}", fontsize=6)
        if m == 2:
            from matplotlib.lines import Line2D

            handles = [Line2D([], [], color=fs.PALETTE[0], lw=1.3), Line2D([], [], color="black", lw=0.8, ls="--")]
            fs.legend_below(fig, handles, ["column W_i of the TMS", "SAE decoder direction (n_rep latents)"])
        elif image is not None:
            fig.colorbar(image, ax=axes, label="cos(W_i, decoder latent)", shrink=0.6)
        shown = sum(len(r) for r in rows)
        fig.suptitle("SAE decoders over the true features"
                     + (f" ({shown} of {n_instances} instances)" if shown < n_instances else ""))
    return fig


def matching_figure(ds: xr.Dataset):
    """Matched cosine, MMCS and FVU against dictionary size, one line per instance (colour: feature
    probability); the dotted line marks 0.95."""
    stacked = [d for d in ("feature_probability", "importance_decay", "seed") if d in ds.dims]
    flat = ds[["matched_cosine", "mmcs", "fvu"]].stack(instance=stacked) if stacked else ds.expand_dims(instance=[0])
    fps = flat["feature_probability"].values if "feature_probability" in flat.coords else np.ones(flat.sizes["instance"])
    colours, mappable = fs.probability_colours(fps)
    sizes = ds["dict_size"].values
    with fs.style():
        fig, axes = fs.subplots(1, 3, width=fs.PAGE, panel_aspect=0.8)
        for ax, name, ylabel in zip(axes[0], ("matched_cosine", "mmcs", "fvu"),
                                    ("Hungarian-matched cosine", "MMCS", "FVU")):
            for i in range(flat.sizes["instance"]):
                ax.plot(sizes, flat[name].isel(instance=i).values, color=colours[i], lw=0.8, marker="o", ms=2)
            if name != "fvu":
                ax.axhline(0.95, color=fs.REFERENCE, lw=0.5, ls=":")
            else:
                ax.set_yscale("log")
            ax.set(xlabel="dictionary size (latents)", ylabel=ylabel)
        fig.colorbar(mappable, ax=axes[0, -1], label=fs.label("feature_probability"))
    return fig


def plot_sae(ds: xr.Dataset, out_dir) -> list[Path]:
    """Save `decoder_figure` and `matching_figure` into `out_dir`; returns the paths."""
    out_dir = Path(out_dir)
    return [fs.save(decoder_figure(ds), out_dir / "sae_decoders.png"),
            fs.save(matching_figure(ds), out_dir / "sae_matching.png")]
