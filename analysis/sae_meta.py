"""Meta-SAEs (Leask, Bussmann et al. 2025, arXiv 2502.04878) on a TMS: compress an SAE's dictionary.

A meta-SAE is an SAE whose data are the decoder directions of another SAE. Leask et al. train it
on the decoder matrix itself (each latent once). Here the data are the directions *as used*: for
every activation sample and every active latent j, the contribution z_j d_j (code times unit
decoder direction), so latent j appears in proportion to how often it fires and with the size it
has there. A meta-SAE of width w < n (TopK, k = 1, b_pre fixed at 0) then has to give up some
directions, and the ones it gives up are those whose loss costs the least reconstruction:
dropping feature i from a TMS's activations costs about p_i E[x_i^2] ||W_i||^2 (its share of the
activation variance, less what the nearest kept direction still explains). `uniform=True` uses
one copy of every decoder direction instead (Leask et al.'s data; frequency plays no part).

The idealized SAE has decoder = the unit columns of W and codes = the true x_i ||W_i||, so its
contributions are exactly x_i W_i.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from analysis.sae import sae_encode, train_sae
from analysis.sae_match import cosine_matrix
from slt_superposition.errors import require


def idealized_contributions(W: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contributions x_i W_i `(n_active, hidden)` of every nonzero x_i in `x: (sample, feature)`, and
    the feature index of each. `W: (hidden, feature)`."""
    samples, features = np.nonzero(x)
    return (x[samples, features][:, None] * W.T[features]).astype(np.float32), features


def sae_contributions(params: dict, h: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Contributions z_j d_j `(n_active, hidden)` of every active latent of a trained SAE on `h:
    (sample, hidden)`, and the latent index of each."""
    import jax.numpy as jnp

    z = np.asarray(sae_encode(params, jnp.asarray(h), k))
    samples, latents = np.nonzero(z)
    return (z[samples, latents][:, None] * np.asarray(params["W_dec"]).T[latents]).astype(np.float32), latents


def train_meta_sae(contributions: np.ndarray, widths, *, key, steps: int = 2000, restarts: int = 4,
                   batch_size: int = 256) -> xr.Dataset:
    """TopK (k = 1) meta-SAEs of every width on `contributions: (sample, hidden)`, b_pre fixed at 0.

    `restarts` initialisations from random directions and as many from random contributions
    (`train_sae`'s `init_from_data`); per width the lowest training FVU is kept. Both are needed:
    on a hexagon with one rare feature (p 0.005 against 0.1), 4 random starts of a width-5
    meta-SAE all merged two common features (FVU 0.10-0.20, against 0.008 for dropping the rare
    one), while starts from data rarely put a latent on the rare feature, so at width 6 they
    dropped it too (FVU 0.008 against 0 from a random start).
    """
    import jax

    runs = [train_sae(contributions, dict_sizes=list(widths), k=1, steps=steps, key=jax.random.fold_in(key, i),
                      restarts=restarts, batch_size=batch_size, schedule="decay", train_b_pre=False,
                      zero_b_pre=True, init_from_data=bool(i))
            for i in range(2)]
    best_of = lambda run: run["restart_train_fvu"].min("restart")
    data_better = best_of(runs[1]) < best_of(runs[0])  # (dict_size,)
    out = xr.where(data_better, runs[1], runs[0], keep_attrs=True)
    out["init_from_data"] = data_better.assign_attrs(long_name="kept meta-SAE started from data samples",
                                                     units="1")
    return out


def kept_features(directions: np.ndarray, meta_decoder: np.ndarray, threshold: float = 0.95) -> np.ndarray:
    """Which directions `(hidden, n)` a meta decoder `(hidden, width)` still has (max cosine >= threshold)."""
    cos = cosine_matrix(directions, meta_decoder)
    return np.nanmax(np.where(np.isnan(cos), -np.inf, cos), axis=1) >= threshold


def meta_reconstruct(directions: np.ndarray, meta_decoder: np.ndarray) -> np.ndarray:
    """Each unit direction `(hidden, n)` replaced by its k = 1 meta-SAE reconstruction with b_pre = 0:
    the projection onto the meta latent of largest positive overlap (0 if none). `(hidden, n)`."""
    d = directions / np.linalg.norm(directions, axis=0, keepdims=True)
    meta = meta_decoder[:, ~np.isnan(meta_decoder).any(axis=0)]
    if meta.shape[1] == 0:  # no meta latent (an all-NaN meta decoder, e.g. a NaN meta-SAE): none overlaps
        return np.zeros_like(d)
    overlap = meta.T @ d  # (width, n)
    best = np.argmax(overlap, axis=0)
    scale = np.maximum(overlap[best, np.arange(d.shape[1])], 0.0)
    return meta[:, best] * scale


def activation_fvu(h: np.ndarray, codes: np.ndarray, decoder: np.ndarray, b_pre: np.ndarray) -> float:
    """FVU of `h: (sample, hidden)` reconstructed as b_pre + codes @ decoder.T (`codes: (sample, n)`)."""
    x_hat = codes @ decoder.T + b_pre
    return float(np.sum((h - x_hat) ** 2) / np.sum((h - h.mean(axis=0)) ** 2))


def drop_cost(W: np.ndarray, feature_probability: np.ndarray, second_moment: float = 1 / 3) -> np.ndarray:
    """p_i E[x_i^2] ||W_i||^2: the activation variance feature i carries (E[x^2] = 1/3 for U[0, 1])."""
    return np.asarray(feature_probability) * second_moment * np.sum(np.asarray(W) ** 2, axis=0)


def trained_sae_params(sae: xr.Dataset, dict_size: int) -> dict:
    """The parameter dict (numpy, padding dropped) of a single-instance `train_sae` result."""
    one = sae.sel(dict_size=dict_size)
    keep = ~np.isnan(one["decoder"].values).any(axis=0)
    return {"W_dec": one["decoder"].values[:, keep], "W_enc": one["encoder"].values[keep],
            "b_enc": one["b_enc"].values[keep], "b_pre": one["b_pre"].values}



def best_subsets(W: np.ndarray, cost: np.ndarray, widths) -> tuple[np.ndarray, np.ndarray]:
    """The exact optimum of a width-w meta-dictionary restricted to the true directions: for every
    width, the subset S of w columns of `W: (hidden, n)` that minimises the variance lost,
    sum_{i not in S} cost_i (1 - max_{j in S} max(cos(W_i, W_j), 0)^2) (each dropped feature falls
    on its best kept neighbour), by enumeration. Returns (kept `(width, n)` bool, lost variance
    `(width,)`); divide by the total variance for an FVU. A zero column has no direction: kept,
    it explains no other column, and dropped, it loses its whole cost (0 when the cost is the
    variance the column carries). Non-finite `W` or `cost`: `InputError`."""
    from itertools import combinations

    W = np.asarray(W, np.float64)
    require(np.isfinite(W).all() and np.isfinite(cost).all(), "best_subsets needs finite W and cost")
    norm = np.linalg.norm(W, axis=0, keepdims=True)
    unit = np.divide(W, norm, out=np.zeros_like(W), where=norm > 0)
    cos = np.maximum(unit.T @ unit, 0.0)
    n = W.shape[1]
    kept, lost = [], []
    for w in widths:
        best, best_set = np.inf, None
        for subset in combinations(range(n), int(w)):
            explained = (cos[:, list(subset)] ** 2).max(axis=1)
            value = float(np.sum(cost * (1 - explained)))
            if value < best:
                best, best_set = value, subset
        row = np.zeros(n, bool)
        row[list(best_set)] = True
        kept.append(row)
        lost.append(best)
    return np.array(kept), np.array(lost)
