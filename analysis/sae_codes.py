"""An SAE's codes against the true features: progressive codes (k' != k), latent order, and the
information left outside the TopK.

All functions take one SAE's parameter dict (`analysis.sae_meta.trained_sae_params`), activations
`h: (sample, hidden)` and, where needed, the true feature values `x: (sample, feature)` with the
matching `(features, latents)` from `analysis.sae_match.assignment`.
"""

from __future__ import annotations

import numpy as np

from analysis.sae import _topk_codes, sae_decode, sae_preactivations


def codes_at(params: dict, h: np.ndarray, k: int) -> np.ndarray:
    """TopK(k) codes `(sample, latent)` of the SAE's encoder, for any k (the progressive code)."""
    import jax.numpy as jnp

    return np.asarray(_topk_codes(sae_preactivations(params, jnp.asarray(h)), k))


def fvu_at(params: dict, h: np.ndarray, k: int) -> float:
    """FVU of `h` reconstructed from the TopK(k) codes."""
    h_hat = np.asarray(sae_decode(params, codes_at(params, h, k)))
    return float(np.sum((h - h_hat) ** 2) / np.sum((h - h.mean(axis=0)) ** 2))


def code_correlation(params: dict, h: np.ndarray, x: np.ndarray, k: int, features, latents) -> float:
    """Mean over matched (feature, latent) pairs of the correlation between x_i and the latent's
    TopK(k) code (SAELens's mean correlation coefficient on codes); a code that never fires counts 0."""
    z = codes_at(params, h, k)
    values = []
    for i, j in zip(features, latents):
        a, b = x[:, i], z[:, j]
        values.append(0.0 if a.std() == 0 or b.std() == 0 else float(np.corrcoef(a, b)[0, 1]))
    return float(np.mean(values))


def _r2(design: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """R^2 of the least-squares fit (with intercept) of each column of `targets: (sample, target)`
    from `design: (sample, regressor)`, all columns in one solve; NaN for a constant column."""
    design = np.column_stack([design, np.ones(len(design))])
    coef, *_ = np.linalg.lstsq(design, targets, rcond=None)
    residual = targets - design @ coef
    variance = targets.var(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(variance > 0, 1 - residual.var(axis=0) / variance, np.nan)


def outside_topk_r2(params: dict, h: np.ndarray, x: np.ndarray, k: int, features) -> dict[str, float]:
    """How well the true feature values are predicted (linear least squares, R^2, mean over
    `features`) from parts of the pre-activations `(sample, latent)`:

    - `codes`: the TopK(k) codes themselves (what the SAE passes on);
    - `outside`: the pre-activations of the latents *not* in the TopK of that sample (0 for those in it);
    - `negative`: the negative parts min(pre, 0) of all latents (what a ReLU reader discards).
    """
    import jax.numpy as jnp

    pre = np.asarray(sae_preactivations(params, jnp.asarray(h)))
    z = codes_at(params, h, k)
    in_topk = np.asarray(_topk_codes(jnp.asarray(pre - pre.min() + 1.0), k)) > 0  # the k largest, whatever their sign
    parts = {"codes": z, "outside": np.where(in_topk, 0.0, pre), "negative": np.minimum(pre, 0.0)}
    targets = np.asarray(x)[:, np.asarray(features)]
    return {name: float(np.mean(_r2(design, targets))) for name, design in parts.items()}


def order_correlation(latents, feature_values) -> float:
    """Spearman correlation between latent index and the matched feature's value (`feature_values`
    in the order of `latents`): negative when early latents carry the large values."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(latents), np.asarray(feature_values))[0])
