"""Activation-basis measures of superposition (Elhage et al. 2022), on W: (hidden, feature).

Every measure takes an `xarray.DataArray` with dims `hidden` and `feature` (any other dims
are carried along, e.g. the training grid) and returns a DataArray with named dims. The
`*_array` functions are the same definitions on plain arrays `W: (..., hidden, feature)`,
usable inside jit/vmap. This file is the one place that defines each measure:

    ||W_i||                      feature_norms           column norm of feature i
    represented                  ||W_i|| > threshold     (default 0.5; trained columns sit near 0 or 1)
    D*  = m / ||W||_F^2          dimensions_per_feature  (Elhage's "dimensions per feature")
    D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2            feature_dimensionality, 0 for a zero column
    interference_i = sum_{j != i} (W_i_hat . W_j)^2      ("superposition" in Elhage et al.)
    overcompleteness = k / m     k represented features per hidden dimension
"""

from __future__ import annotations

import numpy as np
import xarray as xr

REPRESENTED_THRESHOLD = 0.5
# Below this norm a column counts as zero when normalising W_i_hat (D_i := 0, interference := 0).
ZERO_NORM = 1e-6
STICKY_VALUES = (1.0, 3 / 4, 2 / 3, 1 / 2, 2 / 5, 3 / 8)


# ---------------------------------------------------------------------------------------
# plain arrays: W (..., hidden, feature); numpy or jax.numpy via `xp`


def _xp(W):
    """numpy for numpy arrays, jax.numpy otherwise (so the same code runs under jit)."""
    if isinstance(W, np.ndarray):
        return np
    import jax.numpy as jnp

    return jnp


def feature_norms_array(W):
    """||W_i||: (..., feature)."""
    xp = _xp(W)
    return xp.sqrt(xp.sum(W**2, axis=-2))


def _overlaps_sq(W):
    """(W_i_hat . W_j)^2 as (..., i, j), with W_i_hat = 0 for a (near-)zero column i."""
    xp = _xp(W)
    norms = feature_norms_array(W)
    safe = xp.where(norms > ZERO_NORM, norms, 1.0)
    W_hat = xp.where(norms[..., None, :] > ZERO_NORM, W / safe[..., None, :], 0.0)
    overlap = xp.einsum("...hi,...hj->...ij", W_hat, W)
    return overlap**2


def feature_dimensionality_array(W):
    """D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2: (..., feature); 0 for a zero column, NaN for a
    column holding NaN (unknown, not a zero column)."""
    xp = _xp(W)
    norms = feature_norms_array(W)
    denom = xp.sum(_overlaps_sq(W), axis=-1)  # includes j = i, which equals ||W_i||^2
    live = norms > ZERO_NORM
    return xp.where(xp.isnan(norms), xp.nan, xp.where(live, norms**2 / xp.where(live, denom, 1.0), 0.0))


def interference_array(W):
    """sum_{j != i} (W_i_hat . W_j)^2: (..., feature)."""
    xp = _xp(W)
    sq = _overlaps_sq(W)
    diagonal = xp.diagonal(sq, axis1=-2, axis2=-1)
    return xp.sum(sq, axis=-1) - diagonal


def dimensions_per_feature_array(W):
    """D* = m / ||W||_F^2: (...)."""
    xp = _xp(W)
    return W.shape[-2] / xp.sum(W**2, axis=(-2, -1))


# ---------------------------------------------------------------------------------------
# xarray: dims `hidden`, `feature`, any others carried along


def _check(W: xr.DataArray) -> xr.DataArray:
    missing = {"hidden", "feature"} - set(W.dims)
    if missing:
        from slt_superposition.errors import InputError

        raise InputError(f"W needs dims 'hidden' and 'feature', missing {sorted(missing)}")
    return W.transpose(..., "hidden", "feature")


def _per_feature(W: xr.DataArray, fn, name: str, long_name: str) -> xr.DataArray:
    W = _check(W)
    values = np.asarray(fn(np.asarray(W.values, np.float64)), np.float64)
    dims = tuple(d for d in W.dims if d != "hidden")
    coords = {k: v for k, v in W.coords.items() if "hidden" not in v.dims}
    return xr.DataArray(values, dims=dims, coords=coords, name=name, attrs={"long_name": long_name, "units": "1"})


def feature_norms(W: xr.DataArray) -> xr.DataArray:
    """||W_i||, dims (..., feature)."""
    return _per_feature(W, feature_norms_array, "feature_norm", "norm of feature i's column ||W_i||")


def represented_features(W: xr.DataArray, threshold: float = REPRESENTED_THRESHOLD) -> xr.DataArray:
    """Boolean (..., feature): ||W_i|| > threshold (default 0.5)."""
    out = feature_norms(W) > threshold
    return out.rename("represented").assign_attrs(long_name=f"feature represented (||W_i|| > {threshold})")


def n_represented(W: xr.DataArray, threshold: float = REPRESENTED_THRESHOLD) -> xr.DataArray:
    """Number of represented features k, dims (...)."""
    out = represented_features(W, threshold).sum("feature")
    return out.rename("n_represented").assign_attrs(long_name=f"represented features (||W_i|| > {threshold})", units="1")


def dimensions_per_feature(W: xr.DataArray) -> xr.DataArray:
    """D* = m / ||W||_F^2, dims (...)."""
    W = _check(W)
    values = dimensions_per_feature_array(np.asarray(W.values, np.float64))
    dims = W.dims[:-2]
    coords = {k: v for k, v in W.coords.items() if not ({"hidden", "feature"} & set(v.dims))}
    return xr.DataArray(values, dims=dims, coords=coords, name="dimensions_per_feature",
                        attrs={"long_name": "dimensions per feature D* = m / ||W||_F^2", "units": "1"})


def feature_dimensionality(W: xr.DataArray) -> xr.DataArray:
    """D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2, dims (..., feature); 0 for a zero column."""
    return _per_feature(W, feature_dimensionality_array, "feature_dimensionality",
                        "feature dimensionality D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2")


def interference(W: xr.DataArray) -> xr.DataArray:
    """sum_{j != i} (W_i_hat . W_j)^2, dims (..., feature)."""
    return _per_feature(W, interference_array, "interference",
                        "interference sum_{j != i} (W_i_hat . W_j)^2")


def overcompleteness(W: xr.DataArray, threshold: float = REPRESENTED_THRESHOLD) -> xr.DataArray:
    """k / m: represented features per hidden dimension, dims (...)."""
    m = _check(W).sizes["hidden"]
    out = n_represented(W, threshold) / m
    return out.rename("overcompleteness").assign_attrs(
        long_name=f"represented features per hidden dimension k/m (||W_i|| > {threshold})", units="1")
