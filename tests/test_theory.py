"""Exact learning coefficients (Aoyagi) and the Chen et al. k-gon critical points."""

import jax
import numpy as np
import pytest

from slt_superposition.errors import InputError
from slt_superposition.theory import (
    KGON_THEORETICAL_LLC,
    class_critical_point,
    critical_point_class,
    derived_classes,
    dln_learning_coefficient,
    dln_parameter_count,
    kgon_critical_point,
    kgon_params,
    kgon_population_loss,
    population_hessian,
    population_loss_is_smooth,
    tms_population_loss,
)
from toy_models.data import high_sparsity_limit
from toy_models.tms import tms_loss

# docs/references.md: reduced-rank regression (r = 0) and the public validation panel
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


# ---------------------------------------------------------------------------------------
# Critical-point classes (docs/references.md: 5-gon 0.06874 lambda 7; 6-gon 0.04819 lambda 8.5;
# 5-gon with one positive dead bias 0.06180, 17 curved directions, lambda 8.5; each positive
# dead bias lowers the loss by 1/144: 4-gon 1/9, 0.10417, 0.09722)
# ---------------------------------------------------------------------------------------

CLASS_ANCHORS = [  # (k, positive dead, population loss, curved directions or None, lambda or None)
    (4, 0, 1 / 9, None, None),
    (4, 1, 0.10417, None, None),
    (4, 2, 0.09722, None, None),
    (5, 0, 0.06874, 14, 7.0),
    (5, 1, 0.06180, 17, 8.5),
    (6, 0, 0.04819, 17, 8.5),
]


def _scrambled(W, b, seed, noise=0.0):
    """The same configuration rotated, with its features permuted and W jittered by `noise`."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, 2 * np.pi)
    R = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    perm = rng.permutation(W.shape[1])
    return (R @ W)[:, perm] + noise * rng.normal(size=W.shape), b[perm]


@pytest.mark.parametrize("k,positive,loss,curved,lam", CLASS_ANCHORS)
def test_class_of_constructed_kgons(k, positive, loss, curved, lam):
    W, b = class_critical_point(k, positive)
    for seed, noise in [(0, 0.0), (1, 0.02)]:
        c = critical_point_class(*_scrambled(W, b, seed, noise))
        assert (c.k, c.positive_dead, c.nonpositive_dead, c.polygon) == (k, positive, 6 - k - positive, True)
        assert c.critical_loss == pytest.approx(loss, abs=1e-5)
        assert c.curved_directions == curved and c.llc == lam and c.minimum
        if lam is None:
            assert "no theory" in c.reason
    # at the class point itself the given loss is the class's
    assert critical_point_class(W, b).loss == pytest.approx(loss, abs=1e-5)


@pytest.mark.parametrize("c", derived_classes(), ids=lambda c: c.label)
def test_theoretical_llc_is_half_the_curved_directions(c):
    if c.smooth:
        assert c.curved_directions + c.flat_directions + c.negative_directions == 18
    if c.llc is not None:
        assert c.llc == c.curved_directions / 2
        assert c.flat_directions == c.expected_flat and c.negative_directions == 0
    else:
        assert c.reason


def test_positive_dead_bias_lowers_loss_by_1_144():
    for k in (4, 5):
        losses = [tms_population_loss(*class_critical_point(k, p)) for p in range(6 - k + 1)]
        np.testing.assert_allclose(np.diff(losses), -1 / 144, atol=1e-12)


def test_population_hessian_matches_finite_differences():
    # a generic smooth point: the autodiff Hessian of the closed form is the loss's Hessian
    rng = np.random.default_rng(3)
    W, b = rng.normal(size=(2, 6)), rng.normal(scale=0.3, size=6)
    theta = np.concatenate([W.ravel(), b])
    f = lambda t: tms_population_loss(t[:12].reshape(2, 6), t[12:])
    h, eye = 1e-4, np.eye(18)
    fd = np.array([[(f(theta + h * (ei + ej)) - f(theta + h * (ei - ej)) - f(theta - h * (ei - ej))
                     + f(theta - h * (ei + ej))) / (4 * h * h) for ej in eye] for ei in eye])
    np.testing.assert_allclose(population_hessian(W, b), fd, atol=1e-5)


def test_non_polygon_and_zero_dead_bias_have_no_theory():
    W, b = class_critical_point(5, 0)
    bunched = W.copy()
    bunched[:, 1] = bunched[:, 0] * 1.01 + [0.0, 0.05]  # two live columns nearly on top of each other
    c = critical_point_class(bunched, b)
    assert not c.polygon and c.llc is None and "no theory" in c.reason
    zero = b.copy()
    zero[5] = 0.0  # W_5 = 0 with b_5 = 0: its ReLU switches on everywhere at once, the loss is only C^1
    c = critical_point_class(W, zero)
    assert c.positive_dead == 0 and c.zero_dead == 1 and c.llc is None and "no theory" in c.reason
    assert not population_loss_is_smooth(W, zero) and population_loss_is_smooth(W, b)


def test_critical_point_class_bad_input():
    with pytest.raises(InputError):
        critical_point_class(np.zeros((3, 6)), np.zeros(6))
    with pytest.raises(InputError):
        critical_point_class(np.full((2, 6), np.nan), np.zeros(6))


def test_dead_feature_flat_region_includes_the_cross_terms():
    from slt_superposition.theory import dead_features_active

    W, b = (np.asarray(a, np.float64) for a in class_critical_point(5, 0))  # the 5-gon, feature 5 dead, b_5 < 0
    dead = np.arange(6) == 5
    assert not dead_features_active(W, b, dead).any()  # at w*: flat
    live = W[:, 0] / np.linalg.norm(W[:, 0])
    for scale, active in [(0.2, False), (0.3, True)]:  # live column length 1.17, live bias -0.28: edge at 0.24
        moved = W.copy()
        moved[:, 5] = scale * live
        assert (moved[:, 5] ** 2).sum() < -b[5]  # inside |W_5|^2 < -b_5 both times
        assert dead_features_active(moved, b, dead)[5] == active  # output 0 on input e_5 turns on at 0.3
    raised = b.copy()
    raised[5] = 0.01  # a positive bias turns the dead feature's own output on for every input
    assert dead_features_active(W, raised, dead)[5]
    assert not dead_features_active(W, raised, np.zeros(6, bool)).any()  # only features flagged dead are reported
    # batched and traceable
    import jax.numpy as jnp

    stack = np.stack([W, moved])
    flags = dead_features_active(jnp.asarray(stack), jnp.asarray(np.stack([b, b])), dead, xp=jnp)
    np.testing.assert_array_equal(np.asarray(flags)[:, 5], [False, True])
