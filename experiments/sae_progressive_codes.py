"""Progressive codes: TopK, Multi-TopK and Matryoshka SAEs against a TMS's ground truth.

    slt-superposition reproduce sae-progressive-codes [--quick] --out DIR

The TMS: n = 20 features, m = 5 hidden, feature probability 0.05 (n p = 1 active feature per
sample on average), importance I_i = 0.9^i, trained as `slt-superposition train` does. On its
hidden activations, three SAEs with n_rep latents (the represented features) and k = 1 (b_pre
fixed at the activations' median, 0; `analysis.sae`): TopK, Multi-TopK (L(k) + L(4k)/8) and
Matryoshka (every nested prefix). For each:

- the progressive-code curve: FVU and the code correlation with the matched true feature
  (`analysis.sae_codes`) when encoding with TopK(k') for k' = 1 .. 2m, k' != k included;
- the latent order: Spearman correlation of latent index with the matched feature's p I_i
  (and with its activation variance p E[x^2] ||W_i||^2);
- the information outside the TopK: R^2 of the true feature values from the codes, from the
  pre-activations of the latents outside the TopK, and from the negative pre-activations only.

Writes `sae_progressive_codes.nc`, `sae_progressive_codes.png`, `report.md`.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import xarray as xr

from analysis.measures import represented_features
from analysis.sae import train_sae
from analysis.sae_codes import code_correlation, fvu_at, order_correlation, outside_topk_r2
from analysis.sae_match import assignment, matched_cosine
from analysis.sae_meta import trained_sae_params
from experiments.registry import header
from slt_superposition import markdown
from slt_superposition.io import save_dataset, write_text
from slt_superposition.provenance import provenance_attrs
from toy_models.data import sparse_uniform
from toy_models.train import TrainConfig, train_grid

NAME = "sae-progressive-codes"
KINDS = ("topk", "multi-topk", "matryoshka")
N, M, P, DECAY = 20, 5, 0.05, 0.9


# train steps, SAE steps, samples, restarts
SIZES = {"quick": (3000, 2000, 16_384, 4), "default": (10_000, 5000, 65_536, 8)}


def run(out_dir: Path, *, size: str = "default", progress: bool = True) -> xr.Dataset:
    """The three SAE kinds on the TMS at `size` (`SIZES`); writes the dataset, figure and report."""
    out_dir = Path(out_dir)
    train_steps, sae_steps, samples, restarts = SIZES[size]
    train = train_grid(TrainConfig(n_features=N, n_hidden=M, feature_probabilities=(P,), importance_decays=(DECAY,),
                                   seeds=1, steps=train_steps, batch_size=1024), progress=False)
    W = train["W"].squeeze(drop=True).transpose("hidden", "feature").values
    importance = train["importance"].squeeze(drop=True).values
    represented = represented_features(train["W"]).squeeze(drop=True).values
    n_rep = int(represented.sum())
    x = np.asarray(sparse_uniform(jax.random.key(7), samples, N, P))
    h = (x @ W.T).astype(np.float32)
    k_values = np.arange(1, 2 * M + 1)
    value = P * importance  # p_i I_i
    variance = P / 3 * np.sum(W**2, axis=0)  # p_i E[x_i^2] ||W_i||^2

    rows, curves = [], {"fvu": [], "code_correlation": []}
    for i, kind in enumerate(KINDS):
        sae = train_sae(h, dict_sizes=[n_rep], k=1, kind=kind, steps=sae_steps, key=jax.random.key(10 + i),
                        restarts=restarts, schedule="decay", train_b_pre=False)
        params = trained_sae_params(sae, n_rep)
        features, latents = assignment(W, params["W_dec"], represented)
        curves["fvu"].append([fvu_at(params, h, k) for k in k_values])
        curves["code_correlation"].append([code_correlation(params, h, x, k, features, latents) for k in k_values])
        info = outside_topk_r2(params, h, x, 1, features)
        rows.append({
            "matched_cosine": matched_cosine(W, params["W_dec"], feature_mask=represented),
            "order_vs_p_importance": order_correlation(latents, value[features]),
            "order_vs_variance": order_correlation(latents, variance[features]),
            "r2_codes": info["codes"], "r2_outside_topk": info["outside"], "r2_negative": info["negative"],
        })
    ds = xr.Dataset(
        {
            "fvu_at_k": (("kind", "k_eval"), np.array(curves["fvu"]),
                         {"long_name": "FVU with TopK(k') codes", "units": "1"}),
            "code_correlation_at_k": (("kind", "k_eval"), np.array(curves["code_correlation"]),
                                      {"long_name": "mean correlation of matched codes with the true features",
                                       "units": "1"}),
            **{name: ("kind", np.array([r[name] for r in rows]), {"long_name": name.replace("_", " "), "units": "1"})
               for name in rows[0]},
            "W": (("hidden", "feature"), W, {"long_name": "TMS columns", "units": "1"}),
        },
        coords={"kind": list(KINDS), "k_eval": k_values},
        attrs=provenance_attrs("sae_progressive_codes", {"size": size, "train_steps": train_steps,
                                                         "sae_steps": sae_steps, "samples": samples,
                                                         "restarts": restarts, "n_represented": n_rep}),
    )
    save_dataset(ds, out_dir / "sae_progressive_codes.nc")
    from slt_superposition import figure_style as fs

    figure_path = fs.save(figure(ds), out_dir / "sae_progressive_codes.png")
    write_report(ds, out_dir, figure_path, size, n_rep)
    return ds


def figure(ds: xr.Dataset):
    """FVU and code correlation against the k' used to encode, one line per SAE kind (trained at k = 1)."""
    from slt_superposition import figure_style as fs

    with fs.style():
        fig, axes = fs.subplots(1, 2, width=fs.PAGE, panel_aspect=0.7)
        for i, kind in enumerate(ds["kind"].values):
            for ax, name in zip(axes[0], ("fvu_at_k", "code_correlation_at_k")):
                ax.plot(ds["k_eval"].values, ds[name].sel(kind=kind).values, marker="o", color=fs.PALETTE[i],
                        label=str(kind))
        axes[0, 0].set(xlabel="k' used to encode (trained at k = 1)", ylabel="FVU", yscale="log")
        axes[0, 1].set(xlabel="k' used to encode (trained at k = 1)",
                       ylabel="code correlation with the matched feature")
        axes[0, 0].legend()
    return fig


def write_report(ds: xr.Dataset, out_dir: Path, figure_path: Path, size: str, n_rep: int) -> None:
    k = ds["k_eval"].values
    rows = [[kind, f"{float(ds['matched_cosine'].sel(kind=kind)):.3f}",
             *[f"{v:.4f}" for v in ds["fvu_at_k"].sel(kind=kind).values[[0, 1, 3, -1]]],
             f"{float(ds['order_vs_p_importance'].sel(kind=kind)):+.2f}",
             f"{float(ds['order_vs_variance'].sel(kind=kind)):+.2f}",
             f"{float(ds['r2_codes'].sel(kind=kind)):.3f}", f"{float(ds['r2_outside_topk'].sel(kind=kind)):.3f}",
             f"{float(ds['r2_negative'].sel(kind=kind)):.3f}"] for kind in ds["kind"].values]
    headers = ["SAE", "matched cosine", *[f"FVU k'={k[j]}" for j in (0, 1, 3, -1)], "Spearman(index, p I)",
               "Spearman(index, p E[x^2] ||W||^2)", "R^2 codes", "R^2 outside TopK", "R^2 negative pre-act."]
    finding = (f"TMS n = {N}, m = {M}, p = {P}, I_i = {DECAY}^i ({n_rep} represented features); SAEs with {n_rep} "
               "latents trained at k = 1 and encoded at k' = 1..10.")
    text = (header(NAME, NAME, out_dir, size, finding) + markdown.table(headers, rows)
            + f"\n\n![progressive codes]({figure_path.name})\n")
    write_text(out_dir / "report.md", text)
    print(text)
