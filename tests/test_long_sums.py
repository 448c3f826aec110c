"""long_sums: the gradient's sums over long axes rewritten for XLA:CPU give the same values as
jnp.sum (to float32 rounding), under jit and vmap, and the rewrite reaches the sums of a gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slt_superposition.long_sums import LONG, long_sum, long_sums_rewritten
from slt_superposition.small_dots import small_dots_as_elementwise
from toy_models.tms import tms_loss


@pytest.mark.parametrize("shape, axes", [
    ((500, 2, 6), (0,)),        # an outer product's sum over rows: split along the axis of 2
    ((500, 6, 2), (0,)),        # the same, transposed
    ((500, 6), (0, 1)),         # the loss: over rows and features
    ((500,), (0,)),             # a plain long sum
    ((3, 100, 7), (1,)),        # a short leading axis kept
    ((40, 50, 3), (0, 1)),      # two long axes
    ((33, 9, 10), (0,)),        # kept axes too long to split: the barrier only
])
def test_long_sum_matches_sum(shape, axes):
    x = jax.random.normal(jax.random.key(0), shape)
    expected = np.sum(np.asarray(x, np.float64), axis=axes)
    got = jax.jit(lambda a: long_sum(a, axes))(x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_tms_value_and_gradient_agree_under_vmap():
    params = {"W": jax.random.normal(jax.random.key(2), (4, 2, 6)), "b": jnp.full((4, 6), -0.3)}
    x = jax.random.uniform(jax.random.key(3), (4, 500, 6))
    plain = jax.value_and_grad(small_dots_as_elementwise(tms_loss))
    fast = long_sums_rewritten(plain)
    (value, grad), (value0, grad0) = (jax.jit(jax.vmap(f))(params, x) for f in (fast, plain))
    np.testing.assert_allclose(value, value0, rtol=1e-6)
    for name in ("W", "b"):
        np.testing.assert_allclose(grad[name], grad0[name], rtol=1e-5, atol=1e-6)
    text = jax.jit(fast).lower(jax.tree_util.tree_map(lambda a: a[0], params), x[0]).as_text()
    assert "optimization_barrier" in text  # the loss's sum over rows was rewritten


def test_short_and_integer_sums_are_left_alone():
    short = jnp.arange(LONG, dtype=jnp.float32)
    integers = jnp.arange(100, dtype=jnp.int32)
    f = long_sums_rewritten(lambda a, b: (jnp.sum(a), jnp.sum(b)))
    text = jax.jit(f).lower(short, integers).as_text()
    assert "optimization_barrier" not in text
    assert [int(v) for v in f(short, integers)] == [int(short.sum()), int(integers.sum())]
