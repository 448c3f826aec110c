"""Susceptibilities chi = -nbeta Cov(phi, Delta L): (a) a linear-Gaussian model against its closed
form; (b) a TMS against finite differences of E_h[phi] from chains at h = +-delta."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis.tms_susceptibility import (feature_loss, feature_norm, importance_delta, paired_data,
                                         probability_delta, tms_data_loss)
from slt_superposition import InputError
from slt_superposition.llc import SGLDConfig
from slt_superposition.susceptibility import estimate_susceptibilities, finite_difference
from slt_superposition.theory import kgon_params

# ----------------------------------------------------------------------------- (a) linear-Gaussian

N, DIM, SHIFT = 500, 3, 0.2
NBETA, GAMMA, EPS = 100.0, 1.0, 1e-3


def _regression():
    k1, k2 = jax.random.split(jax.random.key(0))
    X = jax.random.normal(k1, (N, DIM))
    y = X @ jnp.array([1.0, -0.5, 0.25]) + 0.3 * jax.random.normal(k2, (N,))
    # the perturbed distribution: targets shifted by SHIFT x_0 (paired with the same x and noise)
    return {"x": X, "y": y, "y_shifted": y + SHIFT * X[:, 0]}


def _mse(p, b, target="y"):
    return 0.5 * jnp.mean((b[target] - b["x"] @ p["w"]) ** 2)


def _delta(p, b):
    return _mse(p, b, "y_shifted") - _mse(p, b)


OBSERVABLES = {"w0": lambda p, b: p["w"][0], "w1": lambda p, b: p["w"][1]}
LINEAR = SGLDConfig(step_size=EPS, localization=GAMMA, nbeta=NBETA, num_chains=16, num_steps=10_000, num_burnin=1000)


@pytest.fixture(scope="module")
def regression():
    data = _regression()
    w_star = jnp.linalg.lstsq(data["x"], data["y"])[0]
    ds = estimate_susceptibilities(_mse, {"w": w_star}, data, delta_loss_fns={"shift": _delta},
                                   observables=OBSERVABLES, config=LINEAR, key=jax.random.key(1))
    return data, w_star, ds


def _closed_form(data, step_size):
    """Delta L(w) = c . w + const, L(w) quadratic with Hessian A: the localized posterior is
    Gaussian with precision P = nbeta A + gamma I, and the Euler chain at step size eps samples
    covariance (P (I - eps P / 4))^-1 exactly; chi = -nbeta e_k . Sigma c."""
    X = np.asarray(data["x"], np.float64)
    A = X.T @ X / N
    c = -SHIFT * X.T @ X[:, 0] / N
    P = NBETA * A + GAMMA * np.eye(DIM)
    sigma = np.linalg.inv(P @ (np.eye(DIM) - step_size * P / 4))
    return -NBETA * sigma[:2] @ c


def test_linear_gaussian_closed_form(regression):
    data, _, ds = regression
    chi = ds["susceptibility"].sel(perturbation="shift").values
    se = ds["susceptibility_se"].sel(perturbation="shift").values
    exact = _closed_form(data, EPS)
    assert np.all(np.abs(chi - exact) <= 2 * se), (chi, exact, se)
    assert abs(exact[0]) > 10 * se[0]  # the response is resolved, not zero within noise


def test_linear_gaussian_finite_difference_is_the_continuous_response(regression):
    """A linear tilt moves the Euler chain's stationary mean by exactly -nbeta h P^-1 c (no
    step-size factor), so paired chains at +-delta give the eps -> 0 closed form to rounding;
    the covariance estimator carries the chain's (1 - eps P / 4)^-1 instead."""
    data, w_star, _ = regression
    fd = finite_difference(_mse, {"w": w_star}, data, delta_loss_fn=_delta, observables=OBSERVABLES, delta=0.05,
                           config=LINEAR, key=jax.random.key(1))
    continuous = _closed_form(data, 0.0)
    np.testing.assert_allclose(fd["finite_difference"].values, continuous, rtol=1e-3, atol=1e-5)


def test_result_layout(regression):
    _, _, ds = regression
    assert ds["susceptibility"].dims == ("perturbation", "observable")
    assert ds["susceptibility_per_chain"].dims == ("chain", "perturbation", "observable")
    assert list(ds["observable"].values) == ["w0", "w1"]
    assert "llc_mean" in ds and np.isfinite(float(ds["llc_mean"]))


def test_the_chains_are_the_llc_chains(regression):
    # same key, same chains: the LLC variables equal estimate_llc's (the observables ride along)
    from slt_superposition.llc import estimate_llc

    data, w_star, ds = regression
    llc = estimate_llc(_mse, {"w": w_star}, data, config=LINEAR, key=jax.random.key(1), checks=False)
    for name in ("llc_per_chain", "mala_acceptance", "loss_trace", "llc_mean", "llc_se"):
        np.testing.assert_array_equal(ds[name].values, llc[name].values, err_msg=name)


def test_sampled_chains_give_the_llc_and_its_checks_without_sampling_again():
    """`estimate_llc_batched(..., sampled=chains)` with chains from `estimate_susceptibilities`
    (same inputs, config, key) equals sampling them itself, checks included; other chains are
    refused."""
    from slt_superposition.llc import estimate_llc_batched

    data = _regression()
    w_star = jnp.linalg.lstsq(data["x"], data["y"])[0]
    grid = {"w": jnp.stack([w_star, w_star + 0.01])}
    config = SGLDConfig(step_size=EPS, localization=GAMMA, nbeta=NBETA, num_chains=4, num_steps=600, num_burnin=100,
                        batch_size=100)
    run = dict(config=config, key=jax.random.key(5), data_batched=False)
    chains = estimate_susceptibilities(_mse, grid, data, delta_loss_fns={"shift": _delta}, observables=OBSERVABLES,
                                       instance_dims=("instance",), **run)
    direct = estimate_llc_batched(_mse, grid, data, check_steps=200, **run)
    reused = estimate_llc_batched(_mse, grid, data, check_steps=200, sampled=chains, **run)
    assert set(reused.data_vars) == set(direct.data_vars)
    for name in direct.data_vars:
        np.testing.assert_array_equal(reused[name].values, direct[name].values, err_msg=name)
    with pytest.raises(InputError, match="key"):
        estimate_llc_batched(_mse, grid, data, check_steps=200, sampled=chains,
                             **{**run, "key": jax.random.key(6)})
    with pytest.raises(InputError, match="step_size"):
        estimate_llc_batched(_mse, grid, data, check_steps=200, sampled=chains,
                             **{**run, "config": SGLDConfig(**{**config.to_dict(), "step_size": 2 * EPS})})


# ----------------------------------------------------------------------------- (b) TMS, finite differences

TMS_N, TMS_FEATURES, TMS_P = 500, 5, 0.2
TMS = SGLDConfig(step_size=1e-4, localization=1.0, num_chains=16, num_steps=4000, num_burnin=1000)


@pytest.fixture(scope="module")
def tms():
    data = paired_data(jax.random.key(2), TMS_N, TMS_FEATURES, TMS_P, probability_features=(0,))
    params = {k: jnp.asarray(v) for k, v in kgon_params(5, 1.1, -0.2, n_features=TMS_FEATURES).items()}
    grad = jax.jit(jax.grad(tms_data_loss))

    def descend(p, _):
        return jax.tree_util.tree_map(lambda a, g: a - 0.05 * g, p, grad(p, data)), None

    params, _ = jax.lax.scan(descend, params, None, length=2000)  # refine to a minimum of L_n
    return params, data


TMS_OBSERVABLES = {"loss_0": feature_loss(0), "norm_0": feature_norm(0), "loss_1": feature_loss(1)}


@pytest.mark.parametrize("name, delta_loss, h", [
    ("importance_0", importance_delta(0, 0.5), 0.02),
    ("probability_0", probability_delta(0), 0.02),
])
def test_tms_against_finite_differences(tms, name, delta_loss, h):
    params, data = tms
    ds = estimate_susceptibilities(tms_data_loss, params, data, delta_loss_fns={name: delta_loss},
                                   observables=TMS_OBSERVABLES, config=TMS, key=jax.random.key(4))
    fd = finite_difference(tms_data_loss, params, data, delta_loss_fn=delta_loss, observables=TMS_OBSERVABLES,
                           delta=h, config=TMS, key=jax.random.key(4))
    chi = ds["susceptibility"].sel(perturbation=name).values
    se = np.hypot(ds["susceptibility_se"].sel(perturbation=name).values, fd["finite_difference_se"].values)
    assert np.all(np.abs(chi - fd["finite_difference"].values) <= 2 * se), (chi, fd["finite_difference"].values, se)
    # the feature's own loss answers its own perturbation: resolved and negative
    assert chi[0] < 0 and abs(chi[0]) > 2 * float(ds["susceptibility_se"].sel(perturbation=name)[0])


def test_bad_functions_are_one_line_errors(regression):
    data, w_star, _ = regression
    small = SGLDConfig(step_size=EPS, localization=GAMMA, nbeta=NBETA, num_chains=2, num_steps=10)
    with pytest.raises(InputError, match="non-empty mapping"):
        estimate_susceptibilities(_mse, {"w": w_star}, data, delta_loss_fns={}, observables=OBSERVABLES,
                                  config=small, key=jax.random.key(0))
    with pytest.raises(InputError, match="must return a scalar"):
        estimate_susceptibilities(_mse, {"w": w_star}, data, delta_loss_fns={"d": _delta},
                                  observables={"w": lambda p, b: p["w"]}, config=small, key=jax.random.key(0))


def test_response_matrix_of_a_grid(tiny_grid):
    """The flagship's response matrix: every instance of a grid in one call, own and cross responses."""
    from analysis.susceptibility_report import own_and_cross, response_matrix, response_section

    config = SGLDConfig(step_size=1e-4, localization=1.0, num_chains=2, num_steps=40, num_burnin=10)
    ds = response_matrix(tiny_grid, config=config, key=jax.random.key(0), n_samples=64)
    assert ds["susceptibility"].dims == ("feature_probability", "importance_decay", "seed", "perturbation",
                                         "observable")
    assert ds.sizes["perturbation"] == 5 and ds.sizes["observable"] == 10
    own, cross = own_and_cross(ds, "loss")
    assert own.shape == (2, 1, 2, 5) and np.all(cross.values >= 0)
    assert "| p |" in response_section(ds)


def test_a_kept_chains_nan_observable_makes_its_mean_nan_not_a_mean_over_fewer_chains():
    # sqrt(w + 0.06) is NaN wherever a chain went below w = -0.06: the posterior mean of such an
    # observable is unknown, as its chi is (a NaN was left out of the sum but counted before)
    def loss(p, d):
        return 0.5 * jnp.mean(d) * p["w"][0] ** 2

    observables = {"sqrt": lambda p, d: jnp.sqrt(p["w"][0] + 0.06), "w": lambda p, d: p["w"][0]}
    config = SGLDConfig(step_size=2e-5, localization=1.0, nbeta=1000.0, num_chains=8, num_steps=500, num_burnin=100)
    ds = estimate_susceptibilities(loss, {"w": jnp.zeros(1)}, jnp.ones((50,)), delta_loss_fns={"lin": observables["w"]},
                                   observables=observables, config=config, key=jax.random.key(0))
    assert not ds["diverged"].values.any()
    per_chain = ds["observable_mean_per_chain"].sel(observable="sqrt").values
    assert np.isnan(per_chain).any() and np.isfinite(per_chain).any()
    assert np.isnan(float(ds["observable_mean"].sel(observable="sqrt")))
    assert np.isnan(float(ds["susceptibility"].sel(observable="sqrt", perturbation="lin")))
    w_chains = ds["observable_mean_per_chain"].sel(observable="w").values
    assert float(ds["observable_mean"].sel(observable="w")) == pytest.approx(w_chains.mean(), rel=1e-6)
