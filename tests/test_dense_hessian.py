"""`curvature.dense_hessian` (Hessian columns a few at a time) is `jax.hessian`, symmetrised."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from slt_superposition import curvature
from toy_models.data import sparse_uniform
from toy_models.tms import tms_init_params, tms_loss


@pytest.mark.parametrize("columns", [1, 4, 15, None])  # d = 15: one at a time, a short last batch, all, the rule's
def test_dense_hessian_is_jax_hessian(columns, monkeypatch):
    n, m = 5, 2
    w, unravel = ravel_pytree(tms_init_params(jax.random.key(0), n, m))
    w = w + 0.1 * jax.random.normal(jax.random.key(1), w.shape)  # b != 0: rows on both sides of the kink
    x = sparse_uniform(jax.random.key(2), 512, n, 0.3)
    if columns is not None:
        monkeypatch.setattr(curvature, "HESSIAN_CACHE_BYTES", columns * x.nbytes)
    assert curvature.hessian_columns(w.size, x) == (columns or w.size)  # 40 kB of data: every column at once
    f = lambda v, data: tms_loss(unravel(v), data)
    H = np.asarray(jax.jit(lambda v, data: curvature.dense_hessian(f, v, data))(w, x))
    expected = np.asarray(jax.hessian(f)(w, x))
    np.testing.assert_array_equal(H, H.T)
    np.testing.assert_allclose(H, 0.5 * (expected + expected.T), rtol=0, atol=1e-6 * np.abs(expected).max())
    assert np.abs(expected).max() > 0.1


def test_columns_shrink_as_the_data_grows():
    assert curvature.hessian_columns(120, np.zeros((16_384, 20), np.float32)) == 1  # 1.3 MB
    assert curvature.hessian_columns(120, np.zeros((2048, 20), np.float32)) == 12  # 164 kB
    assert curvature.hessian_columns(18, (np.zeros((6, 3)), np.zeros((6, 3)))) == 18  # tiny: all at once


@pytest.mark.parametrize("spectrum, top", [((2.0, -5.0) + (0.1,) * 62, 2.0),  # the most negative outweighs the top
                                           ((2.0, -1.0) + (0.1,) * 62, 2.0),
                                           ((-1.0, -3.0) + (-0.5,) * 62, -0.5)])  # every direction negative
def test_power_iteration_gives_the_largest_eigenvalue_not_the_largest_magnitude(spectrum, top):
    """Beyond `MAX_DENSE_PARAMETERS` the top eigenvalue (and with it the step-size bound) comes from
    power iteration, which finds the largest magnitude: a saddle's -5 was stored as the top, and the
    bound from it was 2000x too large."""
    import jax.numpy as jnp

    h = jnp.asarray(spectrum)  # a diagonal quadratic, d = 64
    loss = lambda p, batch: 0.5 * jnp.sum(h * p["w"] ** 2) + 0.0 * jnp.mean(batch)
    found = curvature.top_hessian_eigenvalue(loss, {"w": jnp.zeros(64)}, jnp.zeros(4), jax.random.key(0))
    assert float(found) == pytest.approx(top, rel=1e-4)
