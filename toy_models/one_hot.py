"""The TMS loss on one-hot data (x = mu e_i, `high_sparsity_limit`) in closed form.

With one active feature i per sample, output k is ReLU(mu G_ki + b_k) (G = W^T W): a piecewise
quadratic in the sample's scalar mu whose kink sits at mu = -b_k / G_ki. So the loss over all n
samples needs, per feature, only the sorted mu and running sums of 1, mu and mu^2: every
evaluation is `features^2` binary searches, whatever n. It equals `tms_loss` (unit importance)
on the same rows up to float32 rounding, with the same gradient almost everywhere (the sums
are continuous in the kink's position), and makes full-batch SGLD at n = 1e5 cheaper than a
minibatch of the rows.

Valid at full batch only: a minibatch of these arrays is not a minibatch of samples.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class OneHotMoments(NamedTuple):
    """Samples sorted by (feature, mu), all `(n,)`: the sort key feature + mu (float32, nondecreasing),
    and running sums (inclusive, over the whole sorted order) of mu and mu^2."""

    key: jax.Array
    sum_mu: jax.Array
    sum_mu2: jax.Array


def one_hot_moments(x) -> OneHotMoments:
    """`x: (n, features)` with at most one nonzero entry per row, in [0, 1) -> `OneHotMoments`.

    A row of zeros is mu = 0 on feature 0: the same sample.
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or (np.count_nonzero(x, axis=1) > 1).any():
        raise ValueError("one_hot_moments needs (n, features) rows with at most one nonzero entry")
    feature = np.argmax(np.abs(x), axis=1)
    mu = x[np.arange(len(x)), feature]
    if ((mu < 0) | (mu >= 1)).any():
        raise ValueError("one_hot_moments needs mu in [0, 1)")
    order = np.lexsort((mu, feature))
    feature, mu = feature[order], mu[order]
    # monotone rounding keeps the key sorted; a mu within rounding of 1 must not round up into
    # the next feature's range
    top = np.nextafter((feature + 1).astype(np.float32), np.float32(0))
    key = np.minimum(feature.astype(np.float32) + mu.astype(np.float32), top)
    return OneHotMoments(jnp.asarray(key), jnp.asarray(np.cumsum(mu), jnp.float32),
                         jnp.asarray(np.cumsum(mu**2), jnp.float32))


def _prefix(running: jax.Array, index: jax.Array) -> jax.Array:
    """Sum of the first `index` sorted samples from an inclusive running sum."""
    return jnp.where(index > 0, running[jnp.maximum(index - 1, 0)], 0.0)


def one_hot_tms_loss(params, moments: OneHotMoments) -> jax.Array:
    """Mean over the n samples of ||x - ReLU(W^T W x + b)||^2 (a scalar), from `one_hot_moments(x)`.

    params: {"W": (hidden, features), "b": (features,)}.
    """
    W, b = params["W"], params["b"]
    F = W.shape[1]
    n = moments.key.shape[0]
    a = (W.T @ W)  # a[i, k]: output k's slope in mu when feature i is active (symmetric)
    bias = jnp.broadcast_to(b[None, :], (F, F))
    feature = jnp.arange(F, dtype=jnp.float32)[:, None]
    start = jnp.searchsorted(moments.key, feature, side="left")  # (F, 1): first sample of feature i
    end = jnp.searchsorted(moments.key, feature + 1.0, side="left")
    safe = jnp.where(a == 0, 1.0, a)
    # a kink outside [0, 1) sits half a unit outside, so that no mu of the feature is on it
    kink = jax.lax.stop_gradient(jnp.clip(-bias / safe, -0.5, 1.5))
    at_kink_right = jnp.clip(jnp.searchsorted(moments.key, feature + kink, side="right"), start, end)
    at_kink_left = jnp.clip(jnp.searchsorted(moments.key, feature + kink, side="left"), start, end)
    # the samples where output k is active: mu above the kink (a > 0), below it (a < 0), all or none (a = 0)
    lo = jnp.where(a > 0, at_kink_right, start)
    hi = jnp.where(a < 0, at_kink_left, end)
    hi = jnp.where((a == 0) & (bias <= 0), lo, hi)

    def over(running, lo, hi):
        return _prefix(running, hi) - _prefix(running, lo)

    count = (hi - lo).astype(jnp.float32)
    m1, m2 = over(moments.sum_mu, lo, hi), over(moments.sum_mu2, lo, hi)
    # active terms (s mu + b)^2 with s = a off the diagonal and a - 1 on it (the target mu), and on
    # the diagonal minus the mu^2 that the all-samples sum below counts for inactive ones too
    eye = jnp.eye(F, dtype=a.dtype)
    slope = a - eye
    active = slope**2 * m2 + 2 * slope * bias * m1 + bias**2 * count - eye * m2
    all_mu2 = over(moments.sum_mu2, start[:, 0], end[:, 0])  # (F,): each feature's sum of mu^2
    return (jnp.sum(active) + jnp.sum(all_mu2)) / n


def one_hot_moments_batched(x) -> OneHotMoments:
    """`x: (instances..., n, features)` -> `OneHotMoments` with leaves `(instances..., n)`: each
    instance's own moments (`one_hot_moments`), for `estimate_llc_batched` at full batch."""
    x = np.asarray(x)
    lead = x.shape[:-2]
    rows = [one_hot_moments(one) for one in x.reshape((-1,) + x.shape[-2:])]
    return OneHotMoments(*(jnp.stack([getattr(r, f) for r in rows]).reshape(lead + (x.shape[-2],))
                           for f in OneHotMoments._fields))
