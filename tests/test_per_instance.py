"""Per-instance SGLD settings in one program, the stored bias checks, and the curvature bound."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from slt_superposition import SGLDConfig, estimate_llc, estimate_llc_batched
from slt_superposition.curvature import hessian_eigenvalues, quadratic_llc, step_size_bound
from slt_superposition.errors import InputError
from linear_regression import regression_loss, regression_problem  # tests/linear_regression.py


@pytest.fixture(scope="module")
def problem():
    return regression_problem()


def test_per_instance_settings_equal_one_instance_calls(problem):
    params, data = problem
    grid = {"w": jnp.stack([params["w"]] * 3)}
    config = SGLDConfig(step_size=np.array([1e-3, 3e-4, 2e-3]), localization=np.array([1.0, 10.0, 3.0]),
                        nbeta=np.array([50.0, 66.0, 80.0]), num_chains=3, num_steps=np.array([300, 500, 100]),
                        num_burnin=np.array([100, 250, 20]), batch_size=100, trace_every=10)
    batched = estimate_llc_batched(regression_loss, grid, data, config=config, key=jax.random.key(1),
                                   data_batched=False, checks=False)
    keys = jax.random.split(jax.random.key(1), 3)
    for i in range(3):
        one = SGLDConfig(step_size=float(config.step_size[i]), localization=float(config.localization[i]),
                         nbeta=float(config.nbeta[i]), num_chains=3, num_steps=int(config.num_steps[i]),
                         num_burnin=int(config.num_burnin[i]), batch_size=100, trace_every=10)
        single = estimate_llc(regression_loss, params, data, config=one, key=keys[i], checks=False)
        np.testing.assert_allclose(batched.llc_per_chain.values[i], single.llc_per_chain.values, rtol=2e-5)
        np.testing.assert_allclose(batched.mala_acceptance.values[i], single.mala_acceptance.values, rtol=2e-5)
        blocks = single.sizes["step"]
        np.testing.assert_allclose(batched.loss_trace.values[i, :, :blocks], single.loss_trace.values, rtol=2e-5)
        # a shorter chain's trace ends in NaN blocks inside the longer program
        assert np.isnan(batched.loss_trace.values[i, :, blocks:]).all()
        assert float(batched.step_size[i]) == pytest.approx(one.step_size)
        assert int(batched.num_steps[i]) == one.num_steps


def test_per_instance_settings_take_the_grid_shape(problem):
    params, data = problem
    grid = {"w": jnp.broadcast_to(params["w"], (2, 3, 3))}
    config = SGLDConfig(step_size=np.full((2, 3), 1e-3), localization=1.0, num_chains=2, num_steps=50, batch_size=50)
    ds = estimate_llc_batched(regression_loss, grid, data, config=config, key=jax.random.key(0),
                              instance_dims=("a", "b"), data_batched=False, checks=False)
    assert ds.llc_mean.dims == ("a", "b") and ds.step_size.dims == ("a", "b")
    bad = SGLDConfig(step_size=np.full((3, 2), 1e-3), localization=1.0, num_chains=2, num_steps=50, batch_size=50)
    with pytest.raises(InputError, match="instance shape"):
        estimate_llc_batched(regression_loss, grid, data, config=bad, key=jax.random.key(0),
                             instance_dims=("a", "b"), data_batched=False, checks=False)
    with pytest.raises(InputError, match="step_size"):
        estimate_llc_batched(regression_loss, grid, data, key=jax.random.key(0), instance_dims=("a", "b"),
                             data_batched=False, config=SGLDConfig(step_size=np.array([1e-3, -1.0]), localization=1.0))
    with pytest.raises(InputError, match="per-instance"):
        estimate_llc(regression_loss, params, data, key=jax.random.key(0),
                     config=SGLDConfig(step_size=np.array([1e-3, 1e-3]), localization=1.0))


def test_one_chain_is_refused(problem):
    params, data = problem
    with pytest.raises(InputError, match="num_chains must be an integer >= 2"):
        estimate_llc(regression_loss, params, data, key=jax.random.key(0),
                     config=SGLDConfig(step_size=1e-3, localization=1.0, num_chains=1))


def test_nan_gradient_is_a_divergence(problem):
    """w ** 0 has a NaN gradient at w = 0 in JAX while the loss stays finite: the chain diverged."""
    params, data = problem
    loss = lambda p, batch: regression_loss(p, batch) + jnp.sum(p["z"] ** 0.0)
    with pytest.warns(RuntimeWarning, match="diverged"):
        ds = estimate_llc(loss, {**params, "z": jnp.zeros(2)}, data, key=jax.random.key(0), checks=False,
                          config=SGLDConfig(step_size=1e-4, localization=1.0, num_chains=2, num_steps=20))
    assert ds.diverged.values.all() and np.isnan(float(ds.llc_mean))


def test_quadratic_llc_and_the_step_size_bound():
    h = np.array([0.0, 1.0, 4.0])
    nbeta, gamma = 100.0, 1.0
    # eps -> 0: each curved direction counts nbeta h / (2 (nbeta h + gamma)); flat ones nothing
    expected = sum(nbeta * x / (2 * (nbeta * x + gamma)) for x in h[1:])
    assert quadratic_llc(h, 0.0, gamma, nbeta) == pytest.approx(expected)
    bound = float(step_size_bound(h, gamma, nbeta, tol=0.02))
    ratio = quadratic_llc(h, bound, gamma, nbeta) / quadratic_llc(h, 0.0, gamma, nbeta)
    assert ratio == pytest.approx(1.02, rel=1e-6)
    assert quadratic_llc(h, 2 * bound, gamma, nbeta) / quadratic_llc(h, 0.0, gamma, nbeta) > 1.03
    # an unstable step size gives NaN, not a number
    assert np.isnan(quadratic_llc(h, 4.0 / (nbeta * 4 + gamma), gamma, nbeta))
    # from the top eigenvalue alone: that direction's own bias is tol
    top = float(step_size_bound(None, gamma, nbeta, top=4.0, tol=0.02))
    a = nbeta * 4 + gamma
    assert (1 / (1 - top * a / 4) - 1) == pytest.approx(0.02)


def test_quadratic_prediction_matches_sgld_on_a_quadratic(problem):
    """On a regular model the estimate at a large step size follows the Euler formula."""
    params, data = problem
    eigs = np.asarray(hessian_eigenvalues(regression_loss, params, data))
    n = 400
    nbeta = n / np.log(n)
    eps = 2.0 / (nbeta * eigs.max() + 1.0)  # eps a / 4 = 1/2 on the top direction: a large bias
    config = SGLDConfig(step_size=eps, localization=1.0, num_chains=8, num_steps=6000, num_burnin=1000)
    ds = estimate_llc(regression_loss, params, data, config=config, key=jax.random.key(3))
    predicted = quadratic_llc(eigs, eps, 1.0, nbeta)
    assert predicted > 1.2 * quadratic_llc(eigs, 0.0, 1.0, nbeta)  # the prediction sees the bias
    assert float(ds.llc_mean) == pytest.approx(predicted, abs=4 * float(ds.llc_se))
    assert float(ds.llc_quadratic) == pytest.approx(predicted)
    assert float(ds.hessian_top_eigenvalue) == pytest.approx(eigs.max(), rel=1e-4)


def test_stored_checks_flag_a_biased_step_size(problem):
    params, data = problem
    fine = SGLDConfig(step_size=3e-4, localization=1.0, num_chains=64, num_steps=4000, num_burnin=1000,
                      batch_size=200)
    ds = estimate_llc(regression_loss, params, data, config=fine, key=jax.random.key(4), check_steps=2000)
    for name in ("llc_step_check", "step_check_rel_diff", "batch_check_rel_diff", "llc_quadratic", "trusted"):
        assert name in ds, name
    assert float(ds.step_check_se) <= 0.05 and bool(ds.trusted)  # resolved, and within tolerance
    # checks too short to leave w* (fewer than MIN_CHECK_DRAWS post-burn-in steps) are not resolved
    short = estimate_llc(regression_loss, params, data, config=SGLDConfig(**{**fine.to_dict(), "num_chains": 2}),
                         key=jax.random.key(4), check_steps=20)
    assert not float(short.step_check_se) <= 0.05 and not bool(short.trusted)
    # near the stability edge the estimate at eps / 3 (equal sampler time) reads far lower
    eigs = np.asarray(hessian_eigenvalues(regression_loss, params, data))
    nbeta = 400 / np.log(400)
    coarse = SGLDConfig(**{**fine.to_dict(), "step_size": 3.6 / (nbeta * eigs.max() + 1.0)})
    ds = estimate_llc(regression_loss, params, data, config=coarse, key=jax.random.key(4), check_steps=2000)
    assert float(ds.step_check_rel_diff) > 0.3 and not bool(ds.trusted)


def test_calibration_argument_joins_trusted(problem):
    """`estimate_llc(..., calibration=...)`: `trusted` also requires that the calibration's
    chain-length rule settled (what the CLI and the flagship store)."""
    params, data = problem
    fine = SGLDConfig(step_size=3e-4, localization=1.0, num_chains=64, num_steps=4000, num_burnin=1000,
                      batch_size=200)
    run = lambda converged: estimate_llc(regression_loss, params, data, config=fine, key=jax.random.key(4),
                                         check_steps=2000, calibration=xr.Dataset(attrs={"converged": converged}))
    settled, unsettled = run(1), run(0)
    assert bool(settled.trusted) and bool(settled.calibration_converged)  # the checks pass here (test above)
    assert not bool(unsettled.trusted) and not bool(unsettled.calibration_converged)
    assert float(settled.llc_mean) == float(unsettled.llc_mean)
    grid = {"w": jnp.stack([params["w"]] * 2)}
    with pytest.raises(InputError, match="instance dims"):
        estimate_llc_batched(regression_loss, grid, data, config=fine, key=jax.random.key(0), data_batched=False,
                             calibration=xr.Dataset({"converged": (("seed",), [True, False])}))
    with pytest.raises(InputError, match="checks=True"):
        estimate_llc(regression_loss, params, data, config=fine, key=jax.random.key(0), checks=False,
                     calibration=xr.Dataset(attrs={"converged": 1}))
    with pytest.raises(InputError, match="calibrate"):
        estimate_llc(regression_loss, params, data, config=fine, key=jax.random.key(0), calibration={"converged": 1})


def test_instance_dims_and_data_layout_are_checked(problem):
    params, (x, y) = problem
    grid = {"w": jnp.stack([params["w"]] * 2)}
    config = SGLDConfig(step_size=1e-3, localization=1.0, num_chains=2, num_steps=20, batch_size=None)
    run = lambda data, **kw: estimate_llc_batched(regression_loss, grid, data, config=config, key=jax.random.key(0),
                                                  checks=False, **kw)
    for name in ("chain", "step"):  # the result's own dims: the dataset would be malformed
        with pytest.raises(InputError, match="collide with the result's own dims"):
            run((x, y), instance_dims=[name], data_batched=False)
    with pytest.raises(InputError, match="repeats a name"):
        run((x, y), instance_dims=["a", "a"], data_batched=False)
    per_instance = (jnp.stack([x] * 2), jnp.stack([y] * 2))  # (instance, row, ...)
    with pytest.raises(InputError, match="per-instance data need data_batched=True"):
        run(per_instance, data_batched=False)  # would read the 2 instances as 2 samples
    ds = run(per_instance, data_batched=True)
    np.testing.assert_array_equal(ds.llc_per_chain.values, run((x, y), data_batched=False).llc_per_chain.values)


def test_float64_inputs_under_x64_are_refused_on_one_line(problem):
    params, (x, y) = problem
    config = SGLDConfig(step_size=1e-3, localization=1.0, num_chains=2, num_steps=20, batch_size=None)
    with jax.enable_x64(True):  # the chains' sums are float32: a float64 carry failed deep in the scan
        with pytest.raises(InputError, match="compute in float32, but with jax_enable_x64 on the inputs hold float64"):
            estimate_llc(regression_loss, {"w": np.asarray(params["w"], np.float64)}, (x, y), config=config,
                         key=jax.random.key(0), checks=False)
