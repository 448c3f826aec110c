"""Meta-SAEs on a TMS with heterogeneous feature probabilities: what a narrower meta-SAE loses first.

    slt-superposition reproduce meta-sae [--quick] --out DIR

The TMS: n = 8 features in m = 2 dimensions, columns W_i at the angles of a regular octagon with
norms from 0.6 to 1.3, feature probabilities from 0.2 down to 0.002 (log-spaced, shuffled around
the circle), x_i ~ U[0, 1] when active. Two SAEs: the idealized one (decoder = W's unit columns,
codes = the true x_i ||W_i||) and a trained TopK SAE (8 latents, k = 1). On each, meta-SAEs
(`analysis.sae_meta`: TopK k = 1 on the decoder directions as used) of every width 7..2 below n.
For every width: which features the meta-decoder still has (cosine >= 0.95), the meta-SAE's own
FVU, and the activation-space FVU when every SAE decoder direction is replaced by its meta
reconstruction. The order in which features are lost is compared with the cost of dropping
feature i, p_i E[x_i^2] ||W_i||^2. Feature splitting: a 16-latent SAE against the 8-latent one.
Writes `meta_sae.nc`, `meta_sae.png`, `report.md`.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import xarray as xr
from scipy.optimize import nnls
from scipy.stats import spearmanr

from analysis.sae import sae_encode, train_sae
from analysis.sae_match import assignment, cosine_matrix
from analysis.sae_meta import (
    activation_fvu,
    best_subsets,
    drop_cost,
    idealized_contributions,
    kept_features,
    meta_reconstruct,
    sae_contributions,
    train_meta_sae,
    trained_sae_params,
)
from experiments.registry import header
from slt_superposition import markdown
from slt_superposition.io import save_dataset, write_text
from slt_superposition.provenance import provenance_attrs
from toy_models.data import sparse_uniform

NAME = "meta-sae"
N, M = 8, 2


def tms() -> tuple[np.ndarray, np.ndarray]:
    """W `(2, 8)` and the feature probabilities `(8,)` of the constructed TMS."""
    rng = np.random.default_rng(0)
    angles = 2 * np.pi * np.arange(N) / N
    norms = np.linspace(0.6, 1.3, N)[rng.permutation(N)]
    W = np.stack([np.cos(angles), np.sin(angles)]) * norms
    p = np.geomspace(0.2, 0.002, N)[rng.permutation(N)]
    return W.astype(np.float32), p


def lost_at_width(kept: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """For each feature, the largest width at which it is not kept (0 if kept at every width).
    `kept: (width, feature)`."""
    out = np.zeros(kept.shape[1])
    for j in range(kept.shape[1]):
        lost = widths[~kept[:, j]]
        out[j] = lost.max() if lost.size else 0
    return out


def sweep(contributions, directions, codes, h, b_pre, widths, key, *, steps, restarts, feature_of_direction):
    """Meta-SAEs of every width on one SAE; per width: kept features, meta FVU, activation FVU."""
    meta = train_meta_sae(contributions, list(widths), key=key, steps=steps, restarts=restarts)
    kept, act_fvu = [], []
    for w in widths:
        decoder = meta.decoder.sel(dict_size=w).values
        kept_dir = kept_features(directions, decoder)
        kept.append(np.array([kept_dir[feature_of_direction == i].any() for i in range(N)]))
        act_fvu.append(activation_fvu(h, codes, meta_reconstruct(directions, decoder), b_pre))
    return np.array(kept), meta.fvu.values, np.array(act_fvu)


SIZES = {"quick": (40_000, 2000, 4), "default": (100_000, 4000, 8)}  # samples, steps, restarts


def run(out_dir: Path, *, size: str = "default", progress: bool = True) -> xr.Dataset:
    """Meta-SAE sweeps on the idealized and the trained SAE at `size` (`SIZES`); writes the dataset,
    figure and report."""
    out_dir = Path(out_dir)
    samples, steps, restarts = SIZES[size]
    W, p = tms()
    x = np.asarray(sparse_uniform(jax.random.key(0), samples, N, p))
    h = x @ W.T
    cost = drop_cost(W, p)
    widths = np.arange(N - 1, 1, -1)
    norms = np.linalg.norm(W, axis=0)

    # idealized SAE: unit columns of W, codes x_i ||W_i||
    unit = W / norms
    contributions, _ = idealized_contributions(W, x)
    ideal = sweep(contributions, unit, x * norms, h, np.zeros(M), widths, jax.random.key(1), steps=steps,
                  restarts=restarts, feature_of_direction=np.arange(N))

    # trained SAE: TopK, 8 latents, k = 1, b_pre fixed at the median (0)
    sae = train_sae(h, dict_sizes=[N, 2 * N], k=1, steps=steps, key=jax.random.key(2), restarts=restarts,
                    schedule="decay", train_b_pre=False)
    params = trained_sae_params(sae, N)
    features, latents = assignment(W, params["W_dec"])
    feature_of_latent = np.full(N, -1)
    feature_of_latent[latents] = features
    z = np.asarray(sae_encode(params, h, 1))
    contributions, _ = sae_contributions(params, h, 1)
    trained = sweep(contributions, params["W_dec"], z, h, params["b_pre"], widths, jax.random.key(3), steps=steps,
                    restarts=restarts, feature_of_direction=feature_of_latent)
    trained_fvu = float(sae.fvu.sel(dict_size=N))
    oracle_kept, oracle_lost = best_subsets(W, cost, widths)
    oracle_fvu = oracle_lost / float(np.sum((h - h.mean(axis=0)) ** 2) / len(h))
    trained_matched = float(np.mean(cosine_matrix(W, params["W_dec"])[features, latents]))

    # feature splitting: the 16-latent SAE's decoder against the 8-latent one's
    wide = trained_sae_params(sae, 2 * N)
    fired = np.asarray(sae_encode(wide, h, 1)).astype(bool).any(axis=0)
    cos_wide = cosine_matrix(params["W_dec"], wide["W_dec"])  # (narrow, wide)
    best_narrow = cos_wide.max(axis=0)
    residual = np.array([nnls(params["W_dec"].astype(np.float64), wide["W_dec"][:, j].astype(np.float64))[1]
                         for j in range(2 * N)])
    used = np.array([np.sum(nnls(params["W_dec"].astype(np.float64), wide["W_dec"][:, j].astype(np.float64))[0]
                            > 0.05) for j in range(2 * N)])

    ds = xr.Dataset(
        {
            "W": (("hidden", "feature"), W, {"long_name": "TMS columns", "units": "1"}),
            "feature_probability": ("feature", p, {"long_name": "feature probability p_i", "units": "1"}),
            "drop_cost": ("feature", cost, {"long_name": "p_i E[x_i^2] ||W_i||^2", "units": "activation^2"}),
            "kept": (("sae", "width", "feature"), np.stack([ideal[0], trained[0], oracle_kept]),
                     {"long_name": "meta-decoder has the feature (cosine >= 0.95)", "units": "1"}),
            "meta_fvu": (("sae", "width"), np.stack([ideal[1], trained[1], np.full(len(widths), np.nan)]),
                         {"long_name": "meta-SAE FVU on the used decoder directions", "units": "1"}),
            "activation_fvu": (("sae", "width"), np.stack([ideal[2], trained[2], oracle_fvu]),
                               {"long_name": "activation FVU with meta-reconstructed decoder", "units": "1"}),
            "split_best_cosine": ("wide_latent", best_narrow,
                                  {"long_name": "16-latent SAE: best cosine with an 8-latent decoder direction",
                                   "units": "1"}),
            "split_fires": ("wide_latent", fired, {"long_name": "16-latent SAE latent fires on the data", "units": "1"}),
            "split_nnls_residual": ("wide_latent", residual,
                                    {"long_name": "residual of the wide direction as a nonnegative combination "
                                                  "of the narrow decoder", "units": "1"}),
            "split_nnls_used": ("wide_latent", used, {"long_name": "narrow latents with weight > 0.05", "units": "1"}),
        },
        coords={"sae": ["idealized", "trained", "best subset of W"], "width": widths, "feature": np.arange(N),
                "wide_latent": np.arange(2 * N)},
        attrs=provenance_attrs("meta_sae", {"size": size, "samples": samples, "steps": steps,
                                            "restarts": restarts}),
    )
    save_dataset(ds, out_dir / "meta_sae.nc")
    from slt_superposition import figure_style as fs

    figure_path = fs.save(figure(ds), out_dir / "meta_sae.png")
    write_report(ds, out_dir, figure_path, size, trained_fvu, trained_matched)
    return ds


def order_summary(ds: xr.Dataset, sae: str) -> tuple[list[int], float, bool]:
    """(features in the order they are lost, Spearman of lost-at-width with cost, first lost = cheapest)."""
    kept = ds["kept"].sel(sae=sae).values
    lost = lost_at_width(kept, ds["width"].values)
    order = list(np.argsort(-lost, kind="stable"))
    rho = float(spearmanr(lost, ds["drop_cost"].values)[0])
    first = lost == lost.max()
    cheapest = int(np.argmin(ds["drop_cost"].values))
    return order, rho, bool(first[cheapest] and first.sum() == 1)


def figure(ds: xr.Dataset):
    """Kept features (rows, cheapest to drop at the top) against meta-SAE width: meta-SAEs on the
    idealized and the trained SAE, and the best subset of W's columns (enumerated). Right:
    activation-space FVU against width."""
    from slt_superposition import figure_style as fs

    order = np.argsort(ds["drop_cost"].values)
    with fs.style():
        fig, axes = fs.subplots(1, 4, width=fs.PAGE, panel_aspect=0.9)
        for ax, sae in zip(axes[0, :3], ds["sae"].values):
            kept = ds["kept"].sel(sae=sae).values[:, order].T  # (feature by cost, width)
            ax.imshow(kept, cmap="Greys", vmin=0, vmax=1.6, aspect="auto")
            ax.set_xticks(range(ds.sizes["width"]), [str(w) for w in ds["width"].values])
            ax.set_yticks(range(N), [f"{ds['drop_cost'].values[i]:.1e}" for i in order])
            ax.set(xlabel="meta-SAE width", title=f"{sae}\n(dark: kept)")
        axes[0, 0].set_ylabel("feature: cost p E[x^2] ||W||^2")
        ax = axes[0, 3]
        for i, sae in enumerate(ds["sae"].values):
            ax.plot(ds["width"].values, ds["activation_fvu"].sel(sae=sae).values, marker="o", color=fs.PALETTE[i],
                    label=str(sae))
        ax.set(xlabel="meta-SAE width", ylabel="activation FVU", yscale="log")
        ax.legend()
    return fig


def write_report(ds, out_dir: Path, figure_path: Path, size: str, trained_fvu: float, trained_matched: float):
    rows = []
    for sae in ds["sae"].values:
        order, rho, first = order_summary(ds, sae)
        rows.append((sae, ", ".join(str(i) for i in order), f"{rho:+.2f}", "yes" if first else "no",
                     ", ".join(f"{v:.4f}" for v in ds["activation_fvu"].sel(sae=sae).values)))
    cost_order = ", ".join(str(i) for i in np.argsort(ds["drop_cost"].values))
    split = ds["split_best_cosine"].values
    fires = ds["split_fires"].values
    finding = (f"On a TMS of 8 features in 2 dimensions with feature probabilities 0.2 to 0.002, meta-SAEs narrower "
               f"than the dictionary lose features in the order in the table (cost order, cheapest first: "
               f"{cost_order}).")
    text = (header(NAME, NAME, out_dir, size, finding)
            + markdown.table(["SAE", "features in the order lost (first = lost at the widest meta-SAE)",
                              "Spearman(lost-at-width, cost)", "cheapest lost first alone",
                              f"activation FVU at widths {', '.join(str(w) for w in ds['width'].values)}"], rows)
            + f"\n\nThe trained SAE (8 latents, k = 1): FVU {trained_fvu:.4f}, matched cosine {trained_matched:.3f}.\n\n"
            + f"Feature splitting (16-latent against 8-latent SAE): {int(fires.sum())} of 16 wide latents fire; of "
            f"those, {int(np.sum(split[fires] >= 0.99))} have a narrow latent at cosine >= 0.99, and the median "
            f"nonnegative-least-squares residual of a firing wide direction on the narrow decoder is "
            f"{np.median(ds['split_nnls_residual'].values[fires]):.3f} with a median of "
            f"{np.median(ds['split_nnls_used'].values[fires]):.0f} narrow latents used.\n\n"
            + f"![meta-SAE]({figure_path.name})\n")
    write_text(out_dir / "report.md", text)
    print(text)
