"""Weight-basis measures on models whose Hessian / Jacobian ranks are known analytically."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from analysis.weight_basis import (
    default_rtol,
    gauss_newton_rank,
    hessian_spectrum,
    llc_bound_check,
    numerical_rank,
    rank_above_gradient_floor,
    weight_basis_measures,
)
from slt_superposition.errors import InputError
from toy_models.tms import tms_forward, tms_loss


def quadratic(d, r, seed=0):
    """L(w) = 1/2 (w - w0)^T Q (w - w0) with Q = A A^T of rank r; returns (loss_fn, params, Q)."""
    A = np.random.default_rng(seed).normal(size=(d, r))
    Q = A @ A.T
    w0 = np.random.default_rng(seed + 1).normal(size=d).astype(np.float32)
    Qj = jnp.asarray(Q, jnp.float32)

    def loss(params, batch):
        u = params["w"] - batch
        return 0.5 * u @ Qj @ u

    return loss, {"w": jnp.asarray(w0) + 0.3}, jnp.asarray(w0), Q


def test_quadratic_spectrum_and_rank():
    d, r = 60, 17
    loss, params, data, Q = quadratic(d, r)
    eig = hessian_spectrum(loss, params, data)
    truth = np.linalg.eigvalsh(Q)[::-1]
    assert eig.dims == ("eigen",) and eig.attrs["n_parameters"] == d and eig.attrs["method"] == "exact"
    assert np.all(np.diff(eig.values) <= 0)
    np.testing.assert_allclose(eig.values, truth, atol=1e-5 * truth[0])
    assert int(numerical_rank(eig)) == r
    assert numerical_rank(eig.values) == r
    # a tolerance above the smallest nonzero eigenvalue drops it
    assert numerical_rank(truth, rtol=1.01 * truth[r - 1] / truth[0]) == r - 1


def test_linear_regression_hessian_and_gn_rank():
    """L = mean (x.w - y)^2 with inputs in a 4-dim subspace of R^9: H = 2 X^T X / n, rank 4."""
    rng = np.random.default_rng(3)
    X = (rng.normal(size=(200, 4)) @ rng.normal(size=(4, 9))).astype(np.float32)
    y = rng.normal(size=200).astype(np.float32)
    loss = lambda p, batch: jnp.mean((batch[0] @ p["w"] + p["c"] - batch[1]) ** 2)
    forward = lambda p, x: x @ p["w"] + p["c"]
    params = {"w": jnp.zeros(9), "c": jnp.zeros(())}
    ds = weight_basis_measures(loss, forward, params, (jnp.asarray(X), jnp.asarray(y)), inputs=jnp.asarray(X))
    assert int(ds.n_parameters) == 10
    assert int(ds.hessian_rank) == 5  # 4 input directions + the intercept
    assert int(ds.gn_rank) == 5
    assert float(ds.grad_norm) > 0  # w = 0 is not the least-squares solution
    for var in ds.data_vars.values():
        assert "long_name" in var.attrs and "units" in var.attrs


@pytest.mark.slow
def test_lanczos_agrees_with_exact():
    d, r = 200, 30
    loss, params, data, Q = quadratic(d, r, seed=5)
    exact = hessian_spectrum(loss, params, data, method="exact")
    top = hessian_spectrum(loss, params, data, method="lanczos", num_eigs=8, num_steps=60)
    assert top.attrs["method"] == "lanczos" and top.sizes["eigen"] == 8
    np.testing.assert_allclose(top.values, exact.values[:8], rtol=1e-4)
    # as many steps as parameters: the whole spectrum, and the rank (restarts past the kernel)
    full = hessian_spectrum(loss, params, data, method="lanczos", num_eigs=d, num_steps=d)
    np.testing.assert_allclose(full.values, exact.values, atol=1e-4 * exact.values[0])
    assert int(numerical_rank(full)) == r == int(numerical_rank(exact))


def dln_forward(params, x):
    """f(x) = W2 W1 x; `x: (batch, H0)` -> `(batch, H2)`."""
    W1, W2 = params
    return x @ W1.T @ W2.T


def dln_point(widths, r1, r2, seed):
    """W1 (H1, H0) of rank r1 and W2 (H2, H1) of rank r2, generic otherwise."""
    H0, H1, H2 = widths
    rng = np.random.default_rng(seed)
    W1 = rng.normal(size=(H1, r1)) @ rng.normal(size=(r1, H0))
    W2 = rng.normal(size=(H2, r2)) @ rng.normal(size=(r2, H1))
    return [jnp.asarray(W1, jnp.float32), jnp.asarray(W2, jnp.float32)]


@pytest.mark.parametrize(
    "widths, r1, r2",
    [((4, 3, 5), 1, 1), ((4, 3, 5), 2, 2), ((5, 4, 3), 2, 2), ((4, 3, 5), 3, 1), ((3, 6, 4), 3, 4)],
)
def test_dln_gauss_newton_rank_is_tangent_dimension(widths, r1, r2):
    """The tangent of (W1, W2) -> W2 W1 is {A W1 + W2 B}: matrices with rows in row(W1) plus
    matrices with columns in col(W2), which meet in a r1 r2 dimensional space, so its dimension
    is H2 r1 + H0 r2 - r1 r2; with both layers of rank r this is r (H0 + H2 - r). The inputs
    span R^H0, so the Jacobian over the data sees the whole tangent."""
    H0, H1, H2 = widths
    params = dln_point(widths, r1, r2, seed=sum(widths) + r1)
    x = jax.random.normal(jax.random.PRNGKey(0), (40, H0))
    expected = H2 * r1 + H0 * r2 - r1 * r2
    if r1 == r2:
        assert expected == r1 * (H0 + H2 - r1)
    assert gauss_newton_rank(dln_forward, params, x) == expected
    assert gauss_newton_rank(dln_forward, params, x, chunk_size=7) == expected  # TSQR over 6 chunks


def test_batched_matches_single_instances():
    widths = (4, 3, 5)
    points = [dln_point(widths, r, r, seed=r) for r in (1, 2, 3)]
    stacked = [jnp.stack([p[i] for p in points]) for i in range(2)]
    x = jax.random.normal(jax.random.PRNGKey(1), (30, 4))
    gn = gauss_newton_rank(dln_forward, stacked, x, instance_dims=("seed",), instance_chunk=2)
    assert gn.dims == ("seed",)
    assert gn.values.tolist() == [r * (4 + 5 - r) for r in (1, 2, 3)]
    y = dln_forward(points[0], x)
    loss = lambda p, batch: jnp.mean((dln_forward(p, batch[0]) - batch[1]) ** 2)
    eig = hessian_spectrum(loss, stacked, (x, y), instance_dims=("seed",))
    assert eig.dims == ("seed", "eigen") and eig.attrs["n_parameters"] == 27
    for i, p in enumerate(points):
        np.testing.assert_allclose(eig.isel(seed=i).values, hessian_spectrum(loss, p, (x, y)).values, rtol=2e-4,
                                   atol=1e-5 * float(np.abs(eig.isel(seed=i)).max()))


@pytest.mark.slow
def test_pentagon_critical_point_rank_and_bound():
    """Chen et al.'s 5-gon in 6 features (d = 18): 4 flat directions (rotation, the spare
    column's 2 weights, its bias at the ReLU kink), so d1 = 14 and the bound is 7 <= lambda <= 8,
    which the paper's theoretical LLC 7 meets. The rotation direction picks up curvature of
    order |grad| on a finite sample, so the rank is counted with rtol above that scale."""
    l, b = 1.17046, -0.28230
    angle = 2 * np.pi * np.arange(5) / 5
    W = np.zeros((2, 6), np.float32)
    W[:, :5] = l * np.stack([np.cos(angle), np.sin(angle)])
    params = {"W": jnp.asarray(W), "b": jnp.asarray(np.r_[np.full(5, b), 0.0], jnp.float32)}
    index = jax.random.randint(jax.random.PRNGKey(0), (60000,), 0, 6)
    x = jax.nn.one_hot(index, 6) * jax.random.uniform(jax.random.PRNGKey(1), (60000,))[:, None]
    ds = weight_basis_measures(lambda p, x: tms_loss(p, x), lambda p, x: tms_forward(p, x), params, x, rtol=1e-2)
    assert int(ds.hessian_rank) == 14
    eig = ds.hessian_eigenvalues.values
    assert np.all(np.abs(eig[14:]) < 1e-2 * eig[0]) and eig[13] > 0.03 * eig[0]
    check = llc_bound_check(7.0, int(ds.hessian_rank), int(ds.n_parameters))
    assert float(check.lower_bound) == 7.0 and float(check.upper_bound) == 8.0
    assert not bool(check.violates_bound)


def test_llc_bound_check_flags_and_broadcasts():
    llc = xr.DataArray([3.0, 5.0, 8.5, 10.0], dims="instance")
    # bounds 4 <= lambda <= 4 + 22/4 = 9.5
    check = llc_bound_check(llc, d1=8, d=30, llc_std=xr.DataArray([1.0, 1.0, 0.25, 0.25], dims="instance"))
    assert check.violates_bound.values.tolist() == [True, False, False, True]
    np.testing.assert_allclose(check.bound_excess.values, [-1.0, 0.0, 0.0, 0.5])
    np.testing.assert_allclose(check.bound_excess_in_std.values, [-1.0, 0.0, 0.0, 2.0])
    # the quadratic of rank r has lambda = r/2 exactly: on the lower bound, not a violation
    assert not bool(llc_bound_check(8.5, 17, 60).violates_bound)
    # a NaN estimate or rank is unknown: NaN excess, never 0 ("inside")
    unknown = llc_bound_check(xr.DataArray([np.nan, 10.0]), xr.DataArray([14.0, np.nan]), 18, llc_std=1.0)
    assert np.isnan(unknown.bound_excess.values).all() and np.isnan(unknown.bound_excess_in_std.values).all()
    assert unknown.violates_bound.values.tolist() == [False, False]


def test_default_tolerance_and_errors():
    assert default_rtol(100) == pytest.approx(10 * 100 * np.finfo(np.float32).eps)
    assert numerical_rank(np.array([[1.0, 1e-9, 0.0], [2.0, 1.0, np.nan]])).tolist() == [1, 2]
    loss, params, data, _ = quadratic(10, 3)
    with pytest.raises(InputError):
        hessian_spectrum(loss, params, data, method="power")
    with pytest.raises(InputError):
        hessian_spectrum(loss, params, data, method="lanczos", num_eigs=11)


def test_rank_above_the_gradient_floor_is_unknown_where_the_floor_or_the_spectrum_is():
    # a NaN gradient norm (or a spectrum with no finite eigenvalue) read as rank 0 before
    eig = xr.DataArray([[4.0, 0.5, 1e-3], [4.0, 0.5, 1e-3], [np.nan, np.nan, np.nan]], dims=("instance", "eigen"))
    rank = rank_above_gradient_floor(eig, xr.DataArray([1e-2, np.nan, 1e-2], dims="instance"))
    assert rank.values[0] == 2 and np.isnan(rank.values[1:]).all()
    finite = rank_above_gradient_floor(eig[:2], xr.DataArray([1e-2, 1.0], dims="instance"))
    assert finite.dtype == np.int64 and finite.values.tolist() == [2, 1]


def test_quadratic_llc_prediction_matches_the_euler_chain():
    from analysis.weight_basis import quadratic_llc_prediction

    # one direction: E[nbeta h w^2 / 2] of w <- w - eps/2 (nbeta h + gamma) w + N(0, eps), simulated
    nbeta, h, gamma, eps = 1000.0, 0.5, 10.0, 1e-3  # eps a = 0.51: far from the small-step limit
    a = nbeta * h + gamma
    rng = np.random.default_rng(0)
    w, total, steps = 0.0, 0.0, 200_000
    noise = rng.normal(scale=np.sqrt(eps), size=steps)
    for z in noise:
        w = w - eps / 2 * a * w + z
        total += w * w
    simulated = nbeta * h * total / steps / 2
    predicted = quadratic_llc_prediction([h, 0.0], nbeta=nbeta, step_size=eps, localization=gamma, floor=1e-9)
    assert predicted == pytest.approx(simulated, rel=0.03)
    # limits: 1/2 per curved direction as eps, gamma -> 0; flat directions add nothing
    assert quadratic_llc_prediction([0.3, 2.0, 0.0], nbeta=1e6, step_size=0.0, localization=0.0) == pytest.approx(1.0)
