"""Where an LLC estimate's chains ended on a TMS, against w*: how far, and in which configuration.

At localization 1 the chains on some trained TMS leave w*'s neighbourhood: they end 0.4 to 1 times
|w*| away (the flat rotation orbit removed) with other features live than at w*, and those chains
read other values than the ones that stayed (docs/experiments/tms_llc_vs_n.md, "Where the chains
go"). Such an estimate averages over more than w*'s configuration. These measures read every
chain's final position (the `final_position` of an `llc` dataset) and say so per instance. The
live set is the sharper sign: a distance of order |w*| can also be the localized posterior's own
spread, about 1 / sqrt(gamma) along each direction that the localization alone holds.

Distances are relative to |w*| = |(W*, b*)| and minimised over the orthogonal maps R of the hidden
space (W -> R W leaves the TMS loss unchanged); a feature is live when its column norm is above
`LIVE_FRACTION` of the largest column norm of W* (until 2026-12-07 of the median one, which is about
0 where most features are dead, as on the dense feature probabilities: every column then counted as
live, and a chain whose dead columns only jittered counted as one that left w*'s live set).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

LIVE_FRACTION = 0.5


def rotation_aligned_distance(W: np.ndarray, b: np.ndarray, W0: np.ndarray, b0: np.ndarray) -> np.ndarray:
    """min over orthogonal R of |(R W, b) - (W0, b0)| / |(W0, b0)|.

    W: `(..., hidden, feature)`, b: `(..., feature)`; W0, b0 broadcast against them. Returns `(...)`.
    (|R W - W0|^2 = |W|^2 + |W0|^2 - 2 tr(R W W0^T), whose maximum over R is the nuclear norm of
    W0 W^T: orthogonal Procrustes.)"""
    W, b, W0, b0 = (np.asarray(x, np.float64) for x in (W, b, W0, b0))
    nuclear = np.linalg.svd(W0 @ np.swapaxes(W, -1, -2), compute_uv=False).sum(-1)
    squared = (W ** 2).sum((-2, -1)) + (W0 ** 2).sum((-2, -1)) - 2 * nuclear + ((b - b0) ** 2).sum(-1)
    scale = np.sqrt((W0 ** 2).sum((-2, -1)) + (b0 ** 2).sum(-1))
    return np.sqrt(np.maximum(squared, 0.0)) / scale


def live_features(W: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`(..., feature)` bool: column norm of W `(..., hidden, feature)` above `LIVE_FRACTION` of the
    largest column norm of `reference` (broadcast against W): the scale of a live feature, whatever
    share of the features is dead."""
    threshold = LIVE_FRACTION * np.max(np.linalg.norm(np.asarray(reference), axis=-2), axis=-1)
    return np.linalg.norm(np.asarray(W), axis=-2) > threshold[..., None]


def chain_ends(llc: xr.Dataset, hidden: int, features: int) -> tuple[np.ndarray, np.ndarray]:
    """Every chain's final (W, b) from an `llc` dataset of a TMS with parameters {"W", "b"}, whose
    `final_position (inst..., chain, parameter)` is flattened as `jax.flatten_util.ravel_pytree`
    flattens them (W row-major, then b): `(inst..., chain, hidden, feature)` and `(inst..., chain, feature)`,
    the instance dims in `llc_mean`'s order."""
    inst = llc["llc_mean"].dims
    ends = np.asarray(llc["final_position"].transpose(*inst, "chain", "parameter").values, np.float64)
    W = ends[..., : hidden * features].reshape(ends.shape[:-1] + (hidden, features))
    return W, ends[..., hidden * features:]


def chain_excursions(llc: xr.Dataset, W_star: np.ndarray, b_star: np.ndarray) -> xr.Dataset:
    """Per instance of `llc` (see `chain_ends`), at w* = (`W_star (inst..., hidden, feature)`,
    `b_star (inst..., feature)`): the largest chain distance from w* and the count of chains that
    ended with another set of live features. Divergent chains are left out."""
    W_star, b_star = np.asarray(W_star, np.float64), np.asarray(b_star, np.float64)
    inst = llc["llc_mean"].dims
    W, b = chain_ends(llc, *W_star.shape[-2:])
    finite = np.isfinite(W).all((-2, -1)) & np.isfinite(b).all(-1)
    healthy = ~llc["diverged"].transpose(*inst, "chain").values & finite
    # a divergent chain's end (NaN) is read as w* and then left out: the SVD takes finite input only
    W = np.where(healthy[..., None, None], W, W_star[..., None, :, :])
    b = np.where(healthy[..., None], b, b_star[..., None, :])
    distance = rotation_aligned_distance(W, b, W_star[..., None, :, :], b_star[..., None, :])
    changed = (live_features(W, W_star[..., None, :, :]) != live_features(W_star, W_star)[..., None, :]).any(-1)
    with np.errstate(invalid="ignore"):
        largest = np.where(healthy.any(-1), np.max(np.where(healthy, distance, -np.inf), axis=-1), np.nan)
    coords = {d: llc[d] for d in inst if d in llc.coords}
    return xr.Dataset({
        "llc_chain_distance_max": xr.DataArray(largest, dims=inst, coords=coords, attrs={
            "long_name": "largest distance of a chain's end from w*, rotation removed, relative to |w*|", "units": "1"}),
        "llc_chains_left": xr.DataArray((changed & healthy).sum(-1), dims=inst, coords=coords, attrs={
            "long_name": "chains that ended with another set of live features than w* (the estimate then "
                         "averages over more than w*'s configuration)", "units": "chains"}),
    })
