"""Deep linear networks: forward, loss, true parameters, data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from slt_superposition.errors import InputError
from toy_models.dln import (
    DeepLinearNetwork,
    dln_compressed_data,
    dln_data,
    dln_end_to_end,
    dln_forward,
    dln_init_params,
    dln_loss,
    dln_true_params,
    matrix_ranks,
)


def test_forward_is_product_of_layers():
    params = dln_init_params(jax.random.key(0), (4, 3, 5, 2))
    assert [W.shape for W in params] == [(3, 4), (5, 3), (2, 5)]
    x = jax.random.normal(jax.random.key(1), (7, 4))
    expected = x @ (params[2] @ params[1] @ params[0]).T
    np.testing.assert_allclose(dln_forward(params, x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dln_end_to_end(params), params[2] @ params[1] @ params[0], rtol=1e-6)


def test_bias_and_module():
    model = DeepLinearNetwork((3, 4, 2), rngs=nnx.Rngs(0), bias=True)
    params = model.params
    assert params[0]["W"].shape == (4, 3) and params[1]["b"].shape == (2,)
    params[1]["b"] = jnp.array([1.0, -2.0])
    np.testing.assert_allclose(dln_forward(params, jnp.zeros((1, 3))), [[1.0, -2.0]])
    x = jnp.ones((5, 3))
    np.testing.assert_allclose(model(x), dln_forward(model.params, x))


def test_loss_is_mse_over_batch_and_outputs():
    params = [jnp.zeros((2, 3))]
    x = jnp.ones((4, 3))
    y = jnp.arange(8.0).reshape(4, 2)
    assert dln_loss(params, (x, y)) == pytest.approx(np.mean(np.arange(8.0) ** 2))


@pytest.mark.parametrize("widths,rank", [((5, 4, 3, 5), 2), ((4, 3, 4), 1), ((6, 6, 6, 6), 3), ((3, 8, 4), 0)])
def test_singular_true_params_have_rank_r_in_every_layer(widths, rank):
    params = dln_true_params(jax.random.key(3), widths, rank, "singular")
    assert matrix_ranks(params) == [rank] * (len(widths) - 1)
    assert matrix_ranks([dln_end_to_end(params)]) == [rank]


def test_less_singular_true_params_one_reduced_layer():
    widths = (7, 3, 3, 7)
    params = dln_true_params(jax.random.key(3), widths, 1, "less_singular")
    assert matrix_ranks(params) == [3, 1, 3]
    assert matrix_ranks([dln_end_to_end(params)]) == [1]


def test_data_furman_lau_and_deterministic():
    params = dln_true_params(jax.random.key(0), (4, 3, 4), 1)
    x, y = dln_data(jax.random.key(1), params, 10_000)
    assert x.shape == (10_000, 4) and y.shape == (10_000, 4)
    assert float(x.min()) >= -10 and float(x.max()) <= 10 and float(x.std()) == pytest.approx(20 / np.sqrt(12), rel=0.02)
    assert float(dln_loss(params, (x, y))) == 0.0
    x2, _ = dln_data(jax.random.key(1), params, 10_000)
    np.testing.assert_array_equal(x, x2)


def test_bad_input():
    with pytest.raises(InputError):
        dln_true_params(jax.random.key(0), (4,), 0)
    with pytest.raises(InputError):
        dln_true_params(jax.random.key(0), (4, 3, 4), 4)
    with pytest.raises(InputError):
        dln_true_params(jax.random.key(0), (4, 3, 4), 1, "weird")


def test_compressed_data_has_the_same_loss_and_gradient_at_every_w():
    """H_0 + H_L rows stand for the n samples exactly: the full-batch loss and its gradient agree
    (float32 rounding) near w*, where the LLC's chains go, and far from it."""
    k_true, k_data, k_w = jax.random.split(jax.random.key(0), 3)
    params = dln_true_params(k_true, (4, 4, 2, 4), 1)
    x, y = dln_data(k_data, params, 20_000)
    y = y + 0.1 * jax.random.normal(jax.random.key(5), y.shape)  # noise: L_n(w*) > 0 is covered too
    rows = dln_compressed_data(x, y)
    assert rows[0].shape == (8, 4) and rows[1].shape == (8, 4)
    for scale in (1e-3, 1e-1, 1.0):
        noise = jax.random.split(k_w, len(params))
        w = [p + scale * jax.random.normal(k, p.shape) for p, k in zip(params, noise)]
        np.testing.assert_allclose(float(dln_loss(w, rows)), float(dln_loss(w, (x, y))), rtol=1e-4)
        for g_rows, g_all in zip(jax.grad(dln_loss)(w, rows), jax.grad(dln_loss)(w, (x, y))):
            np.testing.assert_allclose(g_rows, g_all, rtol=1e-3, atol=1e-5 * float(jnp.max(jnp.abs(g_all))))
    with pytest.raises(InputError, match="n >= H_0 \\+ H_L"):
        dln_compressed_data(x[:5], y[:5])
