"""Weight-refined LLCs: exact values at regular blocks (Chen et al. k-gons on the exact population
loss, deep linear networks per layer), the flat dead column of the 5^- point, and the mask plumbing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis.per_feature import conditional_feature_data
from analysis.refined_checks import BURNIN, population_loss, refined_columns
from slt_superposition import InputError
from slt_superposition.curvature import step_size_bound
from slt_superposition.llc import SGLDConfig, estimate_llc
from slt_superposition.refined import block_spectra, estimate_refined_llc, estimate_refined_llc_batched, feature_masks
from slt_superposition.theory import _population_loss, class_critical_point
from toy_models.dln import dln_data, dln_loss, dln_true_params

NBETA = 1e4  # as analysis.refined_checks


@pytest.fixture(scope="module")
def weak():
    return refined_columns(1.0)


@pytest.fixture(scope="module")
def strong():
    return refined_columns(1000.0)


def test_live_columns_give_three_halves(weak):
    """Every live column (W_:,i, b_i) of the 6-gon and of both 5-gons: 3/2 within 10%."""
    for point, live in (("6-gon", 6), ("5-", 5), ("5-gon+1", 5)):
        llc = weak["llc_mean"].sel(point=point).values[:live]
        assert np.all(np.abs(llc - 1.5) <= 0.15), (point, llc)
        assert np.all(weak["block_hessian_rank"].sel(point=point).values[:live] == 3)


def test_positive_dead_bias_column_is_curved(weak):
    """5-gon with a positive dead bias: the dead column's three parameters are curved, 3/2."""
    llc = float(weak["llc_mean"].sel(point="5-gon+1", mask=5))
    assert abs(llc - 1.5) <= 0.15, llc
    assert int(weak["block_hessian_rank"].sel(point="5-gon+1", mask=5)) == 3


def test_negative_dead_bias_column_is_flat_under_strong_localization(strong, weak):
    """5^-: the dead column is exactly flat inside its bounded region. At localization 1000 (OU
    spread 1/sqrt(1000) per coordinate) no draw leaves it: the loss never moves, the estimate is 0.
    At localization 1 chains leave it (the region has radius ~0.24 in W_6); the loss rises slowly past
    its edge, so the estimate stays near 0 there too (0.09 +- 0.11), but no longer samples the flat
    region alone."""
    dead = strong.sel(point="5-", mask=5)
    assert int(dead["block_hessian_rank"]) == 0
    assert abs(float(dead["llc_mean"])) <= 0.15
    excess = dead["loss_trace"].values[:, BURNIN:] - float(dead["init_loss"])
    assert np.all(excess == 0.0)  # every post-burn-in draw inside the flat region
    loose = weak.sel(point="5-", mask=5)
    outside = loose["loss_trace"].values[:, BURNIN:] > float(loose["init_loss"])
    assert outside.mean() > 0.01  # 44% at this key (python -m analysis.refined_checks)


def test_quadratic_prediction_matches_estimate(weak):
    """At these regular blocks the stored quadratic prediction is the estimate's target."""
    for point, live in (("6-gon", 6), ("5-gon+1", 6)):
        sel = weak.sel(point=point)
        llc, quad, se = (sel[v].values[:live] for v in ("llc_mean", "llc_quadratic", "llc_se"))
        assert np.all(np.abs(llc - quad) <= 4 * se + 0.05 * quad), (point, llc, quad, se)


@pytest.mark.parametrize("rank", [2, 1])
def test_deep_linear_network_per_layer(rank):
    """Two-layer linear network y = W2 W1 x at a true parameter: holding W1 fixed the loss is a
    quadratic in W2 whose Hessian has rank rank(W1) H_2 (and rank(W2) H_0 for W1), so the layer
    LLCs are rank(W1) H_2 / 2 and rank(W2) H_0 / 2, within 10%; their sum exceeds the full LLC."""
    widths = (3, 2, 4)
    k_true, k_data = jax.random.split(jax.random.key(rank))
    true = dln_true_params(k_true, widths, rank)
    x, y = dln_data(k_data, true, 2000, input_range=1.0)
    params = [jnp.asarray(w) for w in true]
    masks = [np.stack([np.ones(true[0].shape, bool), np.zeros(true[0].shape, bool)]),
             np.stack([np.zeros(true[1].shape, bool), np.ones(true[1].shape, bool)])]
    stacked = jax.tree_util.tree_map(lambda a: a[None], params)
    flat = np.stack([np.concatenate([np.ravel(masks[0][j]), np.ravel(masks[1][j])]) for j in range(2)])
    spectra, _ = block_spectra(dln_loss, stacked, (x, y), flat, data_batched=False)
    nbeta = 2000 / np.log(2000)
    eps = float(np.min(step_size_bound(spectra[0], 1.0, nbeta)))
    config = SGLDConfig(step_size=eps, localization=1.0, num_chains=8, num_steps=6000, num_burnin=1000)
    ds = estimate_refined_llc_batched(dln_loss, stacked, (x, y), masks=masks, config=config, key=jax.random.key(3),
                                      data_batched=False, mask_coords=["W1", "W2"])
    expected = np.array([rank * widths[0], rank * widths[2]]) / 2
    got = ds["llc_mean"].values[0]
    assert np.all(np.abs(got - expected) <= 0.1 * expected), (got, expected)
    assert list(ds["block_hessian_rank"].values[0]) == [rank * widths[0], rank * widths[2]]


# ----------------------------------------------------------------------------- plumbing


def _small():
    params = {k: jnp.asarray(v, jnp.float32) for k, v in zip(("W", "b"), class_critical_point(6, 0))}
    return params, jnp.zeros((1, 1))


SMALL = SGLDConfig(step_size=1e-5, localization=1.0, nbeta=NBETA, num_chains=2, num_steps=200)


def test_all_true_mask_is_the_ordinary_estimate():
    params, x = _small()
    mask = jax.tree_util.tree_map(lambda a: np.ones(a.shape, bool), params)
    refined = estimate_refined_llc(population_loss, params, x, mask=mask, config=SMALL, key=jax.random.key(5))
    plain = estimate_llc(population_loss, params, x, config=SMALL, key=jax.random.key(5), checks=False)
    np.testing.assert_allclose(refined["llc_per_chain"].values, plain["llc_per_chain"].values, rtol=1e-4, atol=1e-4)
    assert int(refined["n_sampled"]) == 18


def test_unmasked_parameters_leave_the_loss_alone():
    """A mask on b alone: W never enters the loss, so the estimate is that of a model whose W is
    a constant (closure) and only b is sampled."""
    params, x = _small()
    mask = {"W": np.zeros((2, 6), bool), "b": np.ones(6, bool)}
    refined = estimate_refined_llc(population_loss, params, x, mask=mask, config=SMALL, key=jax.random.key(5))
    W = params["W"]
    only_b = lambda p, batch: _population_loss(W, p["b"], jnp)
    # the same chains on b: the masked program draws noise for all 18 coordinates, so compare
    # the values, not the bits: both are the LLC of b alone
    direct = estimate_llc(only_b, {"b": params["b"]}, x, config=SMALL, key=jax.random.key(5), checks=False)
    assert int(refined["n_sampled"]) == 6
    assert abs(float(refined["llc_mean"]) - float(direct["llc_mean"])) < 1.0


def test_batched_mask_equals_single_call_with_its_key():
    params, x = _small()
    masks = feature_masks(params)
    stacked = jax.tree_util.tree_map(lambda a: a[None], params)
    key = jax.random.key(9)
    batched = estimate_refined_llc_batched(population_loss, stacked, x, masks=masks, config=SMALL, key=key,
                                           data_batched=False)
    mask_key = jax.random.split(jax.random.split(key, 1)[0], 6)[2]
    one = estimate_refined_llc(population_loss, params, x, mask=jax.tree_util.tree_map(lambda m: m[2], masks),
                               config=SMALL, key=mask_key)
    np.testing.assert_allclose(batched["llc_per_chain"].values[0, 2], one["llc_per_chain"].values, rtol=1e-4,
                               atol=1e-5)
    assert batched["llc_mean"].dims == ("instance", "mask")


@pytest.mark.parametrize("mask, message", [
    ({"W": np.ones((2, 5), bool), "b": np.ones(6, bool)}, "shape"),
    ({"W": np.ones((2, 6)), "b": np.ones(6, bool)}, "booleans"),
    ({"W": np.zeros((2, 6), bool), "b": np.zeros(6, bool)}, "at least one"),
    ({"W": np.ones((2, 6), bool)}, "structure"),
])
def test_bad_masks_are_one_line_errors(mask, message):
    params, x = _small()
    with pytest.raises(InputError, match=message):
        estimate_refined_llc(population_loss, params, x, mask=mask, config=SMALL, key=jax.random.key(0))


def test_conditional_feature_data_keeps_the_feature_on():
    x = conditional_feature_data(jax.random.key(0), 4000, 5, 0.1, 3)
    x = np.asarray(x)
    assert np.all(x[:, 3] > 0)
    active = (x > 0).mean(axis=0)
    assert np.all(np.abs(np.delete(active, 3) - 0.1) < 0.03)


def test_estimate_llc_mask_keyword_is_the_refined_estimate():
    """`estimate_llc(..., mask=)` and `estimate_llc_batched(..., masks=)` are the refined estimators."""
    params, x = _small()
    mask = {"W": np.zeros((2, 6), bool), "b": np.ones(6, bool)}
    via_llc = estimate_llc(population_loss, params, x, config=SMALL, key=jax.random.key(5), mask=mask)
    direct = estimate_refined_llc(population_loss, params, x, mask=mask, config=SMALL, key=jax.random.key(5))
    np.testing.assert_array_equal(via_llc["llc_per_chain"].values, direct["llc_per_chain"].values)
    from slt_superposition.llc import estimate_llc_batched

    stacked = jax.tree_util.tree_map(lambda a: a[None], params)
    batched = estimate_llc_batched(population_loss, stacked, x, config=SMALL, key=jax.random.key(5),
                                   data_batched=False, masks=feature_masks(params))
    assert batched["llc_mean"].dims == ("instance", "mask") and batched.sizes["mask"] == 6
