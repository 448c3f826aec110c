"""`tms_loss`'s layouts: the same loss and gradient whichever way the arithmetic is arranged, and
"auto" taking the feature layout exactly where it is the faster form (small models on a CPU)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slt_superposition.errors import InputError
from toy_models.tms import loss_layout, tms_init_params, tms_loss


def _inputs(n_features: int, n_hidden: int):
    params = tms_init_params(jax.random.key(0), n_features, n_hidden)
    params["b"] = 0.1 * jax.random.normal(jax.random.key(1), (n_features,))
    x = jax.random.uniform(jax.random.key(2), (300, n_features))
    x = jnp.where(jax.random.uniform(jax.random.key(3), x.shape) < 0.3, x, 0.0)
    return params, x


@pytest.mark.parametrize("shape", [(6, 2), (20, 5)])
@pytest.mark.parametrize("relu_hidden", [False, True])
@pytest.mark.parametrize("importance", ["scalar", "per feature", "per row"])
def test_layouts_agree_on_loss_and_gradient(shape, relu_hidden, importance):
    params, x = _inputs(*shape)
    decay = 0.9 ** jnp.arange(shape[0], dtype=jnp.float32)
    weight = {"scalar": 1.0, "per feature": decay, "per row": jnp.broadcast_to(decay, x.shape)}[importance]
    value_and_grad = {layout: jax.value_and_grad(lambda p, layout=layout: tms_loss(
        p, x, weight, relu_hidden=relu_hidden, layout=layout))(params) for layout in ("rows", "features")}
    (rows, g_rows), (features, g_features) = value_and_grad["rows"], value_and_grad["features"]
    assert float(rows) > 0.01
    np.testing.assert_allclose(float(features), float(rows), rtol=1e-6)
    for name in ("W", "b"):
        np.testing.assert_allclose(g_features[name], g_rows[name], rtol=1e-5, atol=1e-6)


def test_auto_takes_the_feature_layout_only_for_small_models_on_one_batch():
    on_cpu = jax.default_backend() == "cpu"
    small, x_small = _inputs(6, 2)
    wide, x_wide = _inputs(20, 5)
    assert loss_layout(small["W"], x_small) == ("features" if on_cpu else "rows")
    assert loss_layout(wide["W"], x_wide) == "rows"  # 5 x 20 products stay library GEMMs
    assert loss_layout(small["W"], x_small[None]) == "rows"  # not one (batch, features) batch
    # "auto" is then the feature layout's number, bit for bit
    auto = tms_loss(small, x_small)
    chosen = tms_loss(small, x_small, layout=loss_layout(small["W"], x_small))
    assert np.array_equal(np.asarray(auto), np.asarray(chosen))


def test_unknown_layout_is_one_line_error():
    params, x = _inputs(6, 2)
    with pytest.raises(InputError, match="layout must be one of"):
        tms_loss(params, x, layout="columns")
