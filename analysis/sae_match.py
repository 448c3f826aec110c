"""Matching an SAE's decoder against ground-truth feature directions (the columns of a TMS's W).

Two scores, both 1.0 exactly when every true direction appears among the decoder columns:

- MMCS (`analysis.sae.mmcs`): mean over true features of the best cosine with *any* latent; two
  features may share one latent.
- Hungarian-matched cosine (`matched_cosine`): a one-to-one assignment of latents to features
  maximising the summed cosine (`scipy.optimize.linear_sum_assignment`), averaged over the
  features, as in SAELens's synthetic-data evaluations (O'Neill et al., arXiv 2411.13117). A
  latent serves at most one feature; a feature left without a latent (fewer latents than
  features) scores 0. So a dictionary that covers two features with one latent reaches a high
  MMCS but not a high matched cosine.

`feature_mask` restricts both to some features (e.g. the represented ones: a zero column has no
direction); NaN decoder columns (the padding of `train_sae`) are not latents.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy.optimize import linear_sum_assignment


def _unit_columns(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=0, keepdims=True), 1e-30)


def cosine_matrix(true_directions, decoder) -> np.ndarray:
    """Cosines `(feature, latent)` between the columns of `true_directions: (hidden, feature)` and
    `decoder: (hidden, latent)`; NaN for NaN (padding) decoder columns."""
    t = _unit_columns(np.asarray(true_directions, np.float64))
    d = np.asarray(decoder, np.float64)
    d = d / np.linalg.norm(d, axis=0, keepdims=True)
    return t.T @ d


def _latent_columns(decoder) -> np.ndarray:
    """`(latent,)` bool: the decoder columns that are latents, neither NaN (padding) nor zero (no
    direction: it matches no feature, and its feature, if any, is left unmatched)."""
    d = np.asarray(decoder, np.float64)
    return np.isfinite(d).all(axis=0) & (np.linalg.norm(np.nan_to_num(d), axis=0) > 0)


def assignment(true_directions, decoder, feature_mask=None) -> tuple[np.ndarray, np.ndarray]:
    """The matching itself: `(feature_index, latent_index)` arrays of the one-to-one assignment that
    maximises the summed cosine (2-D inputs as in `cosine_matrix`; masked-out features and columns
    that are no latents take no part; empty where no matching is defined, see `_assignment`)."""
    pairs = _assignment(cosine_matrix(true_directions, decoder), decoder, feature_mask)
    empty = np.zeros(0, np.int64)
    return (empty, empty) if pairs is None else pairs


def _assignment(cos: np.ndarray, decoder, feature_mask) -> tuple[np.ndarray, np.ndarray] | None:
    """`assignment` from the cosines `cos (feature, latent)` already computed; None where it is
    undefined: the decoder has no latent (`_latent_columns`), or a selected feature has no
    direction (a NaN column)."""
    features = np.flatnonzero(np.ones(cos.shape[0], bool) if feature_mask is None else np.asarray(feature_mask))
    latents = np.flatnonzero(_latent_columns(decoder))
    block = cos[np.ix_(features, latents)]
    if latents.size == 0 or np.isnan(block).any():
        return None
    rows, cols = linear_sum_assignment(block, maximize=True)
    return features[rows], latents[cols]


def _matched_2d(true_directions, decoder, feature_mask=None) -> float:
    cos = cosine_matrix(true_directions, decoder)
    n_features = cos.shape[0] if feature_mask is None else int(np.sum(feature_mask))
    pairs = _assignment(cos, decoder, feature_mask)
    if n_features == 0 or pairs is None:  # unknown, not 0
        return float("nan")
    rows, cols = pairs
    return float(cos[rows, cols].sum() / n_features)  # unmatched features add 0


def matched_cosine(true_directions, decoder, *, feature_mask=None):
    """Hungarian-matched cosine: mean over (masked) true features of the cosine with its latent
    in the best one-to-one assignment (0 for a feature left unmatched).

    `true_directions: (..., hidden, feature)`, `decoder: (..., hidden, latent)`, `feature_mask:
    (..., feature)`. DataArrays (dims `hidden`, `feature`, `latent`) broadcast over their other
    dims and give a DataArray; numpy arrays broadcast as numpy does (leading dims aligned from the
    right, as in `analysis.sae.mmcs`), 2-D arrays give a float. NaN where no feature is selected,
    a selected feature's direction is NaN, or the decoder has no latent (every column NaN).
    """
    if not (isinstance(true_directions, xr.DataArray) or isinstance(decoder, xr.DataArray)):
        t, d = np.asarray(true_directions), np.asarray(decoder)
        if t.ndim == 2 and d.ndim == 2:
            return _matched_2d(t, d, feature_mask)
        # the leading dims broadcast as numpy's (and mmcs's einsum) do: aligned from the right
        fm = None if feature_mask is None else np.asarray(feature_mask)
        lead = np.broadcast_shapes(t.shape[:-2], d.shape[:-2], () if fm is None else fm.shape[:-1])
        names = tuple(f"dim_{i}" for i in range(len(lead)))
        t = xr.DataArray(np.broadcast_to(t, lead + t.shape[-2:]), dims=names + ("hidden", "feature"))
        d = xr.DataArray(np.broadcast_to(d, lead + d.shape[-2:]), dims=names + ("hidden", "latent"))
        if fm is not None:
            feature_mask = xr.DataArray(np.broadcast_to(fm, lead + fm.shape[-1:]), dims=names + ("feature",))
        return matched_cosine(t, d, feature_mask=feature_mask).transpose(*names).values
    t = true_directions if isinstance(true_directions, xr.DataArray) else xr.DataArray(
        np.asarray(true_directions), dims=("hidden", "feature"))
    d = decoder if isinstance(decoder, xr.DataArray) else xr.DataArray(np.asarray(decoder), dims=("hidden", "latent"))
    mask = xr.ones_like(t.isel(hidden=0, drop=True), dtype=bool) if feature_mask is None else feature_mask
    out = xr.apply_ufunc(
        lambda a, b, f: _matched_2d(a, b, f),
        t, d, mask.astype(bool),
        input_core_dims=[["hidden", "feature"], ["hidden", "latent"], ["feature"]],
        vectorize=True, output_dtypes=[float],
    )
    return out.assign_attrs(long_name="Hungarian-matched cosine similarity", units="1")


def recovered(true_directions, decoder, *, feature_mask=None, threshold: float = 0.95):
    """True where both the matched cosine and the MMCS reach `threshold` (same inputs as `matched_cosine`)."""
    from analysis.sae import mmcs

    return (matched_cosine(true_directions, decoder, feature_mask=feature_mask) >= threshold) & (
        mmcs(true_directions, decoder, feature_mask=feature_mask) >= threshold)
