"""Where the chains end: their final positions, the curvature there and the bias it predicts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slt_superposition import SGLDConfig, estimate_llc
from slt_superposition.curvature import hessian_eigenvalues, predicted_step_bias, quadratic_llc, step_size_bound
from linear_regression import regression_loss, regression_problem  # tests/linear_regression.py


def test_predicted_step_bias():
    nbeta, gamma = 100.0, 1.0
    a = nbeta * 4.0 + gamma
    eps = 0.5 / a
    # one direction: the spectrum's prediction is that direction's own bias, eps a / (4 - eps a)
    assert predicted_step_bias(np.array([4.0]), eps, gamma, nbeta) == pytest.approx(eps * a / (4 - eps * a))
    assert predicted_step_bias(None, eps, gamma, nbeta, top=4.0) == pytest.approx(eps * a / (4 - eps * a))
    # a spectrum: the relative bias of quadratic_llc, and tol at step_size_bound
    h = np.array([0.0, 1.0, 4.0])
    assert predicted_step_bias(h, eps, gamma, nbeta) == pytest.approx(
        quadratic_llc(h, eps, gamma, nbeta) / quadratic_llc(h, 0.0, gamma, nbeta) - 1)
    assert predicted_step_bias(h, step_size_bound(h, gamma, nbeta, tol=0.02), gamma, nbeta) == pytest.approx(0.02)
    # the top eigenvalue alone bounds the spectrum's bias from above
    assert predicted_step_bias(None, eps, gamma, nbeta, top=4.0) > predicted_step_bias(h, eps, gamma, nbeta)
    # unstable: inf; nothing curved: 0; a NaN spectrum: NaN
    assert predicted_step_bias(h, 4.5 / a, gamma, nbeta) == np.inf
    assert predicted_step_bias(None, 4.5 / a, gamma, nbeta, top=4.0) == np.inf
    assert predicted_step_bias(np.zeros(3), eps, gamma, nbeta) == 0.0
    assert np.isnan(predicted_step_bias(np.array([np.nan, 1.0]), eps, gamma, nbeta))
    assert np.isnan(predicted_step_bias(None, eps, gamma, nbeta, top=np.nan))
    # so are the quadratic LLC and the step-size bound: an unknown eigenvalue is not a flat one (it read 0)
    assert np.isnan(quadratic_llc(np.array([np.nan, 1.0]), eps, gamma, nbeta))
    assert np.isnan(quadratic_llc(np.array([np.nan, np.nan]), eps, gamma, nbeta))
    bounds = step_size_bound(np.array([[np.nan, np.nan], [np.nan, 1.0], [0.5, 1.0]]), gamma, nbeta)
    assert np.isnan(bounds[:2]).all() and np.isfinite(bounds[2]) and bounds[2] > 0


def test_final_positions_are_posterior_draws():
    """On a regular quadratic the chains' final positions scatter around w* with the localized
    posterior's variance along each Hessian direction, 1 / (a (1 - eps a / 4)), a = nbeta h + gamma."""
    params, data = regression_problem()
    nbeta, gamma, eps = 400 / np.log(400), 1.0, 1e-3
    config = SGLDConfig(step_size=eps, localization=gamma, num_chains=256, num_steps=3000, num_burnin=1000,
                        trace_every=100)
    ds = estimate_llc(regression_loss, params, data, config=config, key=jax.random.key(5), checks=False)
    positions = ds["final_position"].values.astype(np.float64)  # (chain, parameter)
    assert positions.shape == (256, 3)
    h, v = np.linalg.eigh(np.asarray(jax.hessian(lambda w: regression_loss({"w": w}, data))(params["w"])))
    a = nbeta * h + gamma
    offsets = (positions - np.asarray(params["w"])) @ v  # in the Hessian's eigenbasis
    expected = 1 / (a * (1 - eps * a / 4))
    # 256 draws: the sample variance is within about 3 x sqrt(2 / 256) = 27% of the truth
    np.testing.assert_allclose(offsets.var(axis=0), expected, rtol=0.27)
    assert np.all(np.abs(offsets.mean(axis=0)) <= 4 * np.sqrt(expected / 256))


def curving_loss(params, x):
    """(1 + v^2) u^2 / 2 times the mean of x^2 (= 1): v is flat at u = 0, and the curvature across
    u grows as v moves away from w* = (0, 0)."""
    return 0.5 * (1 + params["v"] ** 2) * params["u"] ** 2 * jnp.mean(x ** 2)


def test_the_check_at_the_chains_ends_sees_curvature_that_w_star_does_not():
    """Weak localization lets the chains drift along v, where u is more curved than at w*; the step size
    that the bound at w* allows is biased there, and `trusted` says so. Strong localization keeps them
    near w*, and the same step size passes."""
    w_star, x = {"u": jnp.float32(0.0), "v": jnp.float32(0.0)}, jnp.ones(8)
    # sampler time 40 = 2 / gamma: v's spread relaxes; with 8 chains keys 6 to 10 all read a bias of 23-45%
    nbeta, eps, steps = 1000.0, 5e-5, 800_000
    config = lambda gamma: SGLDConfig(step_size=eps, localization=gamma, nbeta=nbeta, num_chains=8, num_steps=steps,
                                      num_burnin=steps // 2, trace_every=steps // 100)
    drifted, held = (estimate_llc(curving_loss, w_star, x, config=config(gamma), key=jax.random.key(6),
                                  check_steps=2000) for gamma in (0.05, 100.0))
    for ds in (drifted, held):
        assert float(ds.hessian_top_eigenvalue) == pytest.approx(1.0)  # at w*: u's curvature alone
        assert eps < float(ds.step_size_bound)  # the bound at w* allows this step size
    u_curvature = 1 + drifted["final_position"].values[:, 1].astype(np.float64) ** 2  # per chain
    assert float(drifted.hessian_top_eigenvalue_end) > 3.0
    assert float(drifted.hessian_top_eigenvalue_end) == pytest.approx(u_curvature.max(), rel=0.05)
    assert int(drifted.n_diverged) == 0 and float(drifted.step_bias_end) > 0.05 and not bool(drifted.trusted)
    assert float(held.hessian_top_eigenvalue_end) < 2.5 and float(held.step_bias_end) < 0.05
    assert float(held.step_bias_end) == pytest.approx(
        float(predicted_step_bias(np.asarray(hessian_eigenvalues(curving_loss, w_star, x)), eps, 100.0, nbeta)),
        abs=0.01)
