"""The minibatch-noise prediction (slt_superposition.minibatch_noise): its algebra against a direct
Lyapunov solve, its gradient spread against a closed form, and the sampler against it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from slt_superposition import SGLDConfig, estimate_llc
from slt_superposition.curvature import quadratic_llc
from slt_superposition.errors import InputError
from slt_superposition.llc import default_nbeta
from slt_superposition.minibatch_noise import (NoiseSpectrum, minibatch_factors, noise_spectrum,
                                               predicted_batch_bias, quadratic_llc_minibatch)

CURVATURES = np.array([1.0, 2.0, 4.0])


def row_quadratic(params, x):
    """Mean over the rows of (w - x_j)^T A (w - x_j) / 2, A = diag(CURVATURES): each row's gradient
    is A (w - x_j), so at w* = mean(x) the rows' gradient covariance is A Cov(x) A exactly."""
    diff = params["w"] - x
    return 0.5 * jnp.mean(jnp.sum(CURVATURES * diff ** 2, axis=-1))


def test_the_direction_sum_is_the_stationary_covariance_of_the_linear_chain():
    rng = np.random.default_rng(0)
    d, nbeta, eps, gamma, batch = 5, 300.0, 2e-3, 1.0, 50
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    h = np.array([0.0, 0.05, 0.3, 1.0, 2.5])
    H = Q @ np.diag(h) @ Q.T
    G = rng.normal(size=(d, 3 * d))
    C = G @ G.T / (3 * d)  # a full covariance: its off-diagonal part in the eigenbasis must not matter
    M = np.eye(d) - eps / 2 * (nbeta * H + gamma * np.eye(d))
    noise = eps * np.eye(d) + (eps * nbeta / 2) ** 2 * C / batch
    Sigma = scipy.linalg.solve_discrete_lyapunov(M, noise)
    direct = nbeta * np.trace(H @ Sigma) / 2
    spectrum = NoiseSpectrum(h, np.einsum("di,de,ei->i", Q, C, Q))
    assert quadratic_llc_minibatch(spectrum, eps, gamma, nbeta, batch) == pytest.approx(direct, rel=1e-9)
    # full batch is curvature.quadratic_llc, and the bias is the ratio
    assert quadratic_llc_minibatch(spectrum, eps, gamma, nbeta, None) == pytest.approx(
        float(quadratic_llc(h, eps, gamma, nbeta)), rel=1e-12)
    full_noise = scipy.linalg.solve_discrete_lyapunov(M, eps * np.eye(d))
    assert predicted_batch_bias(spectrum, eps, gamma, nbeta, batch) == pytest.approx(
        direct / (nbeta * np.trace(H @ full_noise) / 2) - 1, rel=1e-9)


def _epoch_share_by_lag_sums(h, c, eps, gamma, nbeta, batch, n, lags=4000):
    """One direction's share of E[lambda_hat] with epoch sampling, from the noise's covariances summed
    lag by lag (no closed form): batches of one epoch have variance (c / B)(n - B) / (n - 1) and
    covariance -c / (n - 1); batches of different epochs are independent."""
    a = nbeta * max(h, 0.0) + gamma
    rho, K = 1 - eps * a / 2, n // batch
    var, cov = c / batch * (n - batch) / (n - 1), -c / (n - 1)
    j = np.arange(lags)
    shares = []
    for q in range(K):  # the step's position in its epoch; lag j's batch is in the same epoch as lag k's ...
        epoch = np.where(j < q, 0, 1 + (j - q) // K)  # ... when both have the same epoch index
        w = rho ** j
        same = epoch[:, None] == epoch[None, :]
        noise = (np.outer(w, w) * np.where(np.eye(lags, dtype=bool), var, np.where(same, cov, 0.0))).sum()
        spread = eps / (1 - rho ** 2) + (eps * nbeta / 2) ** 2 * noise
        unseen = -(eps * nbeta / 2) * cov * w[j < q].sum()  # E[e_t u_t]: the epoch's earlier batches
        shares.append(nbeta * max(h, 0.0) * spread / 2 + nbeta * unseen)
    return np.mean(shares)


@pytest.mark.parametrize("h, c, eps, batch, n", [(1.0, 0.9, 1e-3, 500, 2000),  # 4 batches an epoch
                                                 (2.0, 3.7, 5e-4, 128, 3000),  # 23, and 56 rows left over
                                                 (0.0, 0.5, 1e-2, 300, 1000),  # flat: only the unseen rows' term
                                                 (1.0, 0.4, 1e-3, 600, 1000),  # one batch an epoch
                                                 (4.0, 1.0, 1.8e-2, 50, 400)])  # rho = -0.45: a direction that overshoots
def test_epoch_shares_are_the_lag_sums_of_the_noise_covariance(h, c, eps, batch, n):
    from slt_superposition.minibatch_noise import epoch_terms

    nbeta = 0.1 * n
    got = epoch_terms(NoiseSpectrum(np.array([h]), np.array([c])), eps, 1.0, nbeta, batch, n)[0]
    assert got == pytest.approx(_epoch_share_by_lag_sums(h, c, eps, 1.0, nbeta, batch, n), rel=1e-9)


def test_epoch_sampling_tends_to_iid_batches_as_epochs_grow_and_to_full_batch_as_the_step_shrinks():
    """Many batches an epoch: the covariance between batches of an epoch (-c / (n - 1)) fades, and the
    prediction is the i.i.d. one; eps -> 0: full batch's, whatever the sampling."""
    spectrum = NoiseSpectrum(np.array([0.0, 0.5, 1.0, 3.0]), np.array([0.2, 0.4, 1.0, 2.0]))
    n, batch, nbeta = 10 ** 7, 1, 50.0
    iid = quadratic_llc_minibatch(spectrum, 1e-2, 1.0, nbeta, batch)
    epoch = quadratic_llc_minibatch(spectrum, 1e-2, 1.0, nbeta, batch, sampling="epoch", n=n)
    assert epoch == pytest.approx(iid, rel=1e-4)
    full = float(quadratic_llc(spectrum.eigenvalues, 1e-9, 1.0, nbeta))
    tiny = quadratic_llc_minibatch(spectrum, 1e-9, 1.0, nbeta, 64, sampling="epoch", n=1000)
    assert tiny == pytest.approx(full, rel=1e-6)
    with pytest.raises(InputError, match="needs n"):
        quadratic_llc_minibatch(spectrum, 1e-3, 1.0, nbeta, 64, sampling="epoch")


def test_minibatch_factors_grow_with_step_size_over_batch_and_refuse_an_empty_batch():
    c = np.array([0.0, 1.0, 3.0])
    np.testing.assert_allclose(minibatch_factors(c, 1e-3, 100.0, 10), 1 + 1e-3 * 1e4 * c / 40)
    np.testing.assert_array_equal(minibatch_factors(c, 1e-3, 100.0, None), np.ones(3))
    with pytest.raises(InputError, match="batch_size"):
        minibatch_factors(c, 1e-3, 100.0, 0)


def test_noise_spectrum_reads_the_rows_gradient_covariance():
    x = jax.random.normal(jax.random.key(0), (3000, 3)) * jnp.array([1.0, 0.5, 2.0])
    params = {"w": x.mean(axis=0)}
    spectrum = noise_spectrum(row_quadratic, params, x)
    np.testing.assert_allclose(spectrum.eigenvalues, CURVATURES, rtol=1e-5)
    expected = CURVATURES ** 2 * np.var(np.asarray(x, np.float64), axis=0)
    np.testing.assert_allclose(spectrum.gradient_variance, expected, rtol=1e-4)
    # read along given directions (here the Hessian's own eigenvectors, the axes) and elsewhere than w*:
    # each row's gradient A (w - x_j) varies with x_j only, so its variance is the same at any w
    from slt_superposition.minibatch_noise import gradient_variance_along

    np.testing.assert_allclose(gradient_variance_along(row_quadratic, params, x, np.eye(3)), expected, rtol=1e-4)
    np.testing.assert_allclose(gradient_variance_along(row_quadratic, {"w": params["w"] + 1.0}, x, np.eye(3)[:, :2],
                                                       chunk=700), expected[:2], rtol=1e-4)


@pytest.mark.slow
def test_sampler_at_batch_b_reads_the_minibatch_prediction_not_full_batch():
    """On a loss that is exactly quadratic with exactly additive minibatch noise the prediction is
    exact: 8 chains at batch 500 of n = 2000 read it within 3 standard errors, and far above full
    batch's prediction (a 26% minibatch excess at this eps / B)."""
    n, batch, eps = 2000, 500, 1e-3
    x = jax.random.normal(jax.random.key(1), (n, 3))
    params = {"w": x.mean(axis=0)}
    spectrum = noise_spectrum(row_quadratic, params, x)
    nbeta = default_nbeta(n)
    mini = float(quadratic_llc_minibatch(spectrum, eps, 1.0, nbeta, batch))
    full = float(quadratic_llc_minibatch(spectrum, eps, 1.0, nbeta, None))
    assert mini / full - 1 > 0.2
    config = SGLDConfig(step_size=eps, localization=1.0, num_chains=8, num_steps=6000, num_burnin=1000,
                        batch_size=batch)
    est = estimate_llc(row_quadratic, params, x, config=config, key=jax.random.key(2), checks=False)
    mean, se = float(est["llc_mean"]), float(est["llc_se"])
    assert abs(mean - mini) < 3 * se, (mean, se, mini, full)
    assert mean - full > 6 * se, (mean, se, mini, full)


@pytest.mark.slow
def test_epoch_sampling_reads_its_own_prediction_above_iid_batches():
    """Without replacement the batch a step reads holds the rows its epoch has not fitted yet, so on
    the same exactly quadratic loss epoch sampling (batch 100 of n = 2000) reads its own prediction
    within 3 standard errors, and more than 6 standard errors above the i.i.d. batches' (9% above)."""
    n, batch, eps = 2000, 100, 1e-3
    x = jax.random.normal(jax.random.key(1), (n, 3))
    params = {"w": x.mean(axis=0)}
    spectrum = noise_spectrum(row_quadratic, params, x)
    nbeta = default_nbeta(n)
    epoch = float(quadratic_llc_minibatch(spectrum, eps, 1.0, nbeta, batch, sampling="epoch", n=n))
    iid = float(quadratic_llc_minibatch(spectrum, eps, 1.0, nbeta, batch))
    assert epoch / iid - 1 > 0.05
    config = SGLDConfig(step_size=eps, localization=1.0, num_chains=8, num_steps=6000, num_burnin=1000,
                        batch_size=batch, sampling="epoch")
    est = estimate_llc(row_quadratic, params, x, config=config, key=jax.random.key(2), checks=False)
    mean, se = float(est["llc_mean"]), float(est["llc_se"])
    assert abs(mean - epoch) < 3 * se, (mean, se, epoch, iid)
    assert mean - iid > 6 * se, (mean, se, epoch, iid)


def test_batched_spectra_are_each_instances_own():
    """Three instances with their own rows, and the same three sharing one set of rows, with a row count
    that is not a multiple of the chunk: each instance's spectrum is `noise_spectrum` of that instance
    alone (to float32 rounding and 1e-4 relative: other chunks, other summation order)."""
    from slt_superposition.minibatch_noise import noise_spectrum_batched

    x = jax.random.normal(jax.random.key(3), (3, 1000, 3)) * jnp.array([[[1.0, 0.5, 2.0]], [[2.0, 1.0, 1.0]],
                                                                          [[0.3, 0.3, 3.0]]])
    params = {"w": x.mean(axis=1) + jnp.array([0.0, 0.1, 0.0])[:, None]}  # one instance off its minimum
    batched = noise_spectrum_batched(row_quadratic, params, x, data_batched=True, chunk=300)
    shared = noise_spectrum_batched(row_quadratic, params, x[0], data_batched=False, chunk=300)
    for i in range(3):
        one = noise_spectrum(row_quadratic, {"w": params["w"][i]}, x[i], chunk=128)
        np.testing.assert_allclose(batched.eigenvalues[i], one.eigenvalues, rtol=1e-5)
        np.testing.assert_allclose(batched.gradient_variance[i], one.gradient_variance, rtol=1e-4)
        one_shared = noise_spectrum(row_quadratic, {"w": params["w"][i]}, x[0])
        np.testing.assert_allclose(shared.gradient_variance[i], one_shared.gradient_variance, rtol=1e-4)


def test_every_minibatch_estimate_stores_its_predicted_bias():
    """`estimate_llc`'s checks store `batch_bias_predicted`: the prediction from the rows at w* for the
    run's own eps, gamma, nbeta, batch and sampling; NaN at full batch."""
    n = 1000
    x = jax.random.normal(jax.random.key(4), (n, 3))
    params = {"w": x.mean(axis=0)}
    base = dict(step_size=5e-4, localization=2.0, num_chains=2, num_steps=300, num_burnin=100)
    est = estimate_llc(row_quadratic, params, x, config=SGLDConfig(**base, batch_size=100), key=jax.random.key(5))
    expected = predicted_batch_bias(noise_spectrum(row_quadratic, params, x), 5e-4, 2.0, default_nbeta(n), 100)
    assert float(est["batch_bias_predicted"]) == pytest.approx(float(expected), rel=1e-4)
    assert float(est["batch_bias_predicted"]) > 0.05  # large enough here that a wrong batch or eps would show
    full = estimate_llc(row_quadratic, params, x, config=SGLDConfig(**base), key=jax.random.key(5))
    epoch = estimate_llc(row_quadratic, params, x, config=SGLDConfig(**base, batch_size=100, sampling="epoch"),
                         key=jax.random.key(5))
    assert np.isnan(float(full["batch_bias_predicted"]))
    expected_epoch = predicted_batch_bias(noise_spectrum(row_quadratic, params, x), 5e-4, 2.0, default_nbeta(n), 100,
                                          sampling="epoch", n=n)
    assert float(epoch["batch_bias_predicted"]) == pytest.approx(float(expected_epoch), rel=1e-4)
    assert abs(float(expected_epoch) - float(expected)) > 0.01  # the sampling's own prediction, not the i.i.d. one
    assert "not part of trusted" in est["batch_bias_predicted"].attrs["long_name"]


def test_curvature_with_noise_is_curvature_batched_plus_the_gradient_variance():
    """The checks and the calibration of minibatch chains take both from one Hessian per instance: the
    eigenvalues and top eigenvalue of `curvature_batched`, and `noise_spectrum_batched`'s variances."""
    from slt_superposition.curvature import curvature_batched
    from slt_superposition.minibatch_noise import curvature_with_noise, noise_spectrum_batched

    x = jax.random.normal(jax.random.key(6), (2, 500, 3)) * jnp.array([1.0, 0.5, 2.0])
    params = {"w": x.mean(axis=1)}
    both = curvature_with_noise(row_quadratic, params, x, data_batched=True, key=jax.random.key(7))
    plain = curvature_batched(row_quadratic, params, x, data_batched=True, key=jax.random.key(7))
    np.testing.assert_allclose(both["eigenvalues"], plain["eigenvalues"], rtol=1e-6)
    np.testing.assert_allclose(both["top"], plain["top"], rtol=1e-6)
    np.testing.assert_array_equal(both["gradient_variance"],
                                  noise_spectrum_batched(row_quadratic, params, x, data_batched=True).gradient_variance)
