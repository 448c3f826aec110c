"""Exact learning coefficients (Aoyagi) and the Chen et al. k-gon critical points."""

import jax
import numpy as np
import pytest

from slt_superposition.errors import InputError
from slt_superposition.theory import (
    KGON_THEORETICAL_LLC,
    dln_learning_coefficient,
    dln_parameter_count,
    kgon_critical_point,
    kgon_params,
    kgon_population_loss,
    tms_population_loss,
)
from toy_models.data import high_sparsity_limit
from toy_models.tms import tms_loss

# ANCHORS.md: reduced-rank regression (r = 0) and the public validation panel
AOYAGI_CHECKS = [
    ((5, 3, 5), 0, 6.5),
    ((5, 4, 5), 0, 8.0),
    ((4, 3, 8), 0, 6.0),
    ((8, 3, 4), 0, 6.0),
    ((3, 8, 4), 0, 6.0),
    ((10, 10, 10), 0, 37.5),
    ((4, 3, 4), 1, 6.0),
    ((5, 4, 3, 5), 2, 9.0),
    ((6, 6, 6, 6), 3, 16.5),
    ((8, 5, 7), 3, 22.0),
    ((3, 10, 10, 3), 2, 4.5),
    ((7, 3, 3, 7), 1, 8.5),
]


@pytest.mark.parametrize("widths,rank,expected", AOYAGI_CHECKS)
def test_aoyagi_matches_anchors(widths, rank, expected):
    assert dln_learning_coefficient(widths, rank) == expected


@pytest.mark.parametrize("h0,h1", [(3, 5), (4, 4), (1, 7)])
@pytest.mark.parametrize("rank", [0, 1])
def test_one_layer_is_regular(h0, h1, rank):
    # a single linear layer is a regular model: lambda = d / 2 whatever the rank
    assert dln_learning_coefficient((h0, h1), rank) == h0 * h1 / 2


@pytest.mark.parametrize("widths", [(5, 3, 5), (4, 6, 2, 3), (3, 8, 4), (2, 9, 9, 2)])
def test_aoyagi_bounded_by_half_dimension(widths):
    # lambda <= d/2, and for full rank of a minimal-width bottleneck it is at least r (H0+HL-r)/2
    for rank in range(min(widths) + 1):
        lam = dln_learning_coefficient(widths, rank)
        assert 0 <= lam <= dln_parameter_count(widths) / 2
        assert lam >= rank * (widths[0] + widths[-1] - rank) / 2


def test_aoyagi_bad_input():
    with pytest.raises(InputError):
        dln_learning_coefficient((3,), 0)
    with pytest.raises(InputError):
        dln_learning_coefficient((3, 2, 3), 3)


@pytest.mark.parametrize(
    "k,length,bias,loss",
    [(5, 1.17046, -0.28230, 0.06874), (6, 1.32053, -0.61814, 0.04819)],
)
def test_kgon_critical_points(k, length, bias, loss):
    cp = kgon_critical_point(k)
    assert cp.length == pytest.approx(length, abs=1e-5)
    assert cp.bias == pytest.approx(bias, abs=1e-5)
    assert cp.loss == pytest.approx(loss, abs=1e-5)
    assert cp.theoretical_llc == KGON_THEORETICAL_LLC[k]
    # a critical point: the loss does not go down in any direction of (l, b)
    for dl, db in [(1e-3, 0), (-1e-3, 0), (0, 1e-3), (0, -1e-3)]:
        assert kgon_population_loss(k, cp.length + dl, cp.bias + db) > cp.loss


def test_kgon_params_layout():
    p = kgon_params(5, 1.2, -0.3)
    assert p["W"].shape == (2, 6) and p["b"].shape == (6,)
    np.testing.assert_allclose(np.linalg.norm(p["W"], axis=0), [1.2] * 5 + [0.0], atol=1e-6)
    np.testing.assert_allclose(p["b"], [-0.3] * 5 + [0.0], atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_population_loss_matches_monte_carlo(seed):
    # random W, b (the closed form is for any parameters, not only k-gons)
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(2, 6))
    b = rng.normal(scale=0.5, size=6)
    exact = tms_population_loss(W, b)
    x = high_sparsity_limit(jax.random.key(seed), 400_000, 6)
    params = {"W": jax.numpy.asarray(W, jax.numpy.float32), "b": jax.numpy.asarray(b, jax.numpy.float32)}
    per_sample = np.asarray(jax.vmap(lambda xi: tms_loss(params, xi[None]))(x))
    mc, se = per_sample.mean(), per_sample.std() / np.sqrt(len(per_sample))
    assert abs(mc - exact) < 4 * se + 1e-5, (mc, exact, se)


def test_kgon_population_loss_matches_monte_carlo():
    cp = kgon_critical_point(6)
    p = kgon_params(6, cp.length, cp.bias)
    x = high_sparsity_limit(jax.random.key(7), 400_000, 6)
    per_sample = np.asarray(jax.vmap(lambda xi: tms_loss(p, xi[None]))(x))
    mc, se = per_sample.mean(), per_sample.std() / np.sqrt(len(per_sample))
    assert abs(mc - cp.loss) < 4 * se + 1e-5
