"""small_dots: small matrix products rewritten as multiply-and-sum give the same values and
gradients as the library products (to float32 rounding), under jit, vmap and grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slt_superposition.small_dots import dot_as_elementwise, small_dots_as_elementwise
from toy_models.tms import tms_loss


@pytest.mark.parametrize("lhs_shape, rhs_shape, dims", [
    ((7, 6), (6, 2), (((1,), (0,)), ((), ()))),           # x @ W.T
    ((7, 6), (7, 2), (((0,), (0,)), ((), ()))),           # contraction over the batch rows (a gradient)
    ((3, 7, 6), (3, 2, 6), (((2,), (2,)), ((0,), (0,)))),  # batched, rhs transposed
    ((4, 5, 3), (5, 3, 2), (((1, 2), (0, 1)), ((), ()))),  # two contracted axes
    ((2, 3, 4, 5), (3, 5, 2, 6), (((3,), (1,)), ((1,), (0,)))),  # batch axis not leading
])
def test_dot_as_elementwise_matches_dot_general(lhs_shape, rhs_shape, dims):
    lhs = jax.random.normal(jax.random.key(0), lhs_shape)
    rhs = jax.random.normal(jax.random.key(1), rhs_shape)
    expected = jax.lax.dot_general(lhs, rhs, dims, precision=jax.lax.Precision.HIGHEST)
    got = dot_as_elementwise(lhs, rhs, dims)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def _tms_inputs():
    params = {"W": jax.random.normal(jax.random.key(2), (2, 6)), "b": jnp.full((6,), -0.3)}
    x = jax.random.uniform(jax.random.key(3), (50, 6))
    return params, x


def test_tms_loss_and_gradient_agree():
    params, x = _tms_inputs()
    fast = small_dots_as_elementwise(tms_loss)
    (value, grad), (value0, grad0) = jax.value_and_grad(fast)(params, x), jax.value_and_grad(tms_loss)(params, x)
    np.testing.assert_allclose(value, value0, rtol=1e-6)
    for name in ("W", "b"):
        np.testing.assert_allclose(grad[name], grad0[name], rtol=1e-5, atol=1e-6)
    text = jax.jit(jax.grad(fast)).lower(params, x).as_text()
    assert "dot_general" not in text  # every product of the TMS was rewritten


def test_large_products_are_left_alone():
    a = jax.random.normal(jax.random.key(4), (40, 40))
    fast = small_dots_as_elementwise(lambda m: jnp.sum(m @ m), limit=16)
    assert "dot_general" in jax.jit(fast).lower(a).as_text()
    np.testing.assert_allclose(fast(a), jnp.sum(a @ a), rtol=1e-5)


def test_wider_tms_keeps_library_products():
    # TMS 20x5: every product has two sizes multiplying to 100 > SMALL, so none is rewritten
    # (written elementwise its chain step ran 2-3x slower: benchmarks/small_dots_rule.py)
    params = {"W": jax.random.normal(jax.random.key(5), (5, 20)), "b": jnp.full((20,), -0.3)}
    x = jax.random.uniform(jax.random.key(6), (50, 20))
    fast = small_dots_as_elementwise(tms_loss)
    text = jax.jit(jax.grad(fast)).lower(params, x).as_text()
    assert text.count("dot_general") == jax.jit(jax.grad(tms_loss)).lower(params, x).as_text().count("dot_general") > 0


def test_tiny_products_are_rewritten_whatever_their_widths():
    # a deep linear network on its 6 compressed rows: (6, 3) @ (3, 10), (6, 10) @ (10, 10), ...;
    # two sizes multiply to more than SMALL, but M N K <= TINY, where a GEMM call costs ~3x
    from toy_models.dln import dln_compressed_data, dln_data, dln_loss, dln_true_params

    params = dln_true_params(jax.random.key(7), (3, 10, 10, 3), 2, "singular")
    data = dln_compressed_data(*dln_data(jax.random.key(8), params, 1000))
    assert data[0].shape[0] == 6
    fast = small_dots_as_elementwise(dln_loss)
    assert "dot_general" not in jax.jit(jax.grad(fast)).lower(params, data).as_text()
    moved = jax.tree_util.tree_map(lambda w: w + 0.1, params)  # away from w*, where the loss is rounding
    np.testing.assert_allclose(fast(moved, data), dln_loss(moved, data), rtol=1e-5)


def test_nested_jit_custom_jvp_and_closed_over_tracers_under_vmap():
    params, x = _tms_inputs()

    @jax.jit
    def inner(w, batch):  # a nested jit holding a product and relu's custom derivative
        return jax.nn.relu(batch @ w.T)

    def loss(p, batch, mask, anchor):  # closes over nothing, but gets vmapped tracers
        w = jnp.where(mask, p["W"], anchor)
        return jnp.mean(inner(w, batch) ** 2) + jnp.sum(p["b"] ** 2)

    masks = jnp.stack([jnp.ones((2, 6), bool), jnp.zeros((2, 6), bool).at[0].set(True)])
    anchor = params["W"] * 0.5

    def run(f):
        per_mask = lambda m: jax.value_and_grad(lambda p: f(p, x, m, anchor))(params)
        return jax.jit(jax.vmap(per_mask))(masks)

    (v, g), (v0, g0) = run(small_dots_as_elementwise(loss)), run(loss)
    np.testing.assert_allclose(v, v0, rtol=1e-5)
    np.testing.assert_allclose(g["W"], g0["W"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g["W"][1, 1], 0.0)  # the masked-out row has no gradient


def test_integer_products_are_left_alone():
    a = jnp.arange(12, dtype=jnp.int32).reshape(3, 4)
    fast = small_dots_as_elementwise(lambda m: m @ m.T)
    np.testing.assert_array_equal(fast(a), a @ a.T)
