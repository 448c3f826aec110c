"""`toy_models.one_hot`: the closed-form loss on one-hot data equals `tms_loss` on the rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toy_models.data import high_sparsity_limit
from toy_models.one_hot import one_hot_moments, one_hot_tms_loss
from toy_models.tms import tms_loss


@pytest.fixture(scope="module")
def rows():
    x = np.array(high_sparsity_limit(jax.random.key(0), 20_000, 6))
    x[:7] = 0.0  # rows of zeros are samples too (mu = 0)
    x[7] = 0.0
    x[7, 5] = np.nextafter(np.float32(1), np.float32(0))  # the last feature's largest mu: rounds to 6 in 5 + mu
    return jnp.asarray(x)


def test_closed_form_equals_the_row_loss_and_its_gradient(rows):
    moments = one_hot_moments(rows)
    rng = np.random.default_rng(0)
    for trial in range(12):
        params = {"W": jnp.asarray(rng.normal(size=(2, 6)) * 0.7, jnp.float32),
                  "b": jnp.asarray(rng.normal(size=6) * 0.3, jnp.float32)}
        if trial == 0:  # a zero column: slope 0, its outputs all on or all off by the bias sign
            params["W"] = params["W"].at[:, 3].set(0.0)
        want, got = tms_loss(params, rows), one_hot_tms_loss(params, moments)
        assert float(got) == pytest.approx(float(want), rel=2e-6)
        g_want, g_got = jax.grad(tms_loss)(params, rows), jax.grad(one_hot_tms_loss)(params, moments)
        for name in params:
            np.testing.assert_allclose(g_got[name], g_want[name], rtol=1e-4, atol=1e-5)


def test_moments_refuse_rows_with_two_features_or_mu_out_of_range():
    with pytest.raises(ValueError, match="at most one nonzero"):
        one_hot_moments(np.array([[0.5, 0.5, 0.0]]))
    with pytest.raises(ValueError, match=r"mu in \[0, 1\)"):
        one_hot_moments(np.array([[0.0, 1.5, 0.0]]))
