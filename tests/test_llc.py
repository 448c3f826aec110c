"""The SGLD LLC estimator: known learning coefficients, determinism, batching, bad input,
divergence handling, and compile caching."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from slt_superposition import InputError, SGLDConfig, estimate_llc, estimate_llc_batched, open_result, save_dataset
from slt_superposition.llc import default_nbeta, resolve_nbeta
from slt_superposition.random import random_permutations


def regression_loss(params, batch):
    """Gaussian linear regression (up to constants): mean of (y - x.w)^2 / 2."""
    x, y = batch
    return 0.5 * jnp.mean((y - x @ params["w"]) ** 2)


def regression_problem(d, n, seed):
    """Data (x: (n, d), y: (n,)) and the exact minimiser w* of the empirical loss L_n."""
    kx, ky, kw = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (n, d))
    y = x @ jax.random.normal(kw, (d,)) + 0.5 * jax.random.normal(ky, (n,))
    w_star = np.linalg.solve(np.asarray(x.T @ x, np.float64), np.asarray(x.T @ y, np.float64))
    return {"w": jnp.asarray(w_star, jnp.float32)}, (x, y)


def ula_expected_llc(x, nbeta, gamma, eps):
    """E[nbeta (L_n(w) - L_n(w*))] under the stationary law of the discretised chain.

    For the quadratic potential with Hessian A = nbeta H + gamma I (H = X^T X / n), the
    unadjusted Langevin chain is Gaussian with covariance (A (I - eps A / 4))^-1, so the
    expectation is (nbeta / 2) sum_j h_j / (a_j (1 - eps a_j / 4)); -> d/2 as gamma, eps -> 0.
    """
    h = np.linalg.eigvalsh(np.asarray(x.T @ x, np.float64) / x.shape[0])
    a = nbeta * h + gamma
    return float(np.sum(0.5 * nbeta * h / (a * (1 - eps * a / 4))))


# ---------------------------------------------------------------------- known answers


@pytest.mark.slow
@pytest.mark.parametrize("d", [2, 6])
def test_regular_model_full_batch_gives_d_over_2(d):
    n = 1000
    params, data = regression_problem(d, n, seed=d)
    nbeta = default_nbeta(n)
    eps, gamma = 7e-4, 1.0
    config = SGLDConfig(step_size=eps, localization=gamma, num_chains=8, num_steps=2500, num_burnin=300)
    ds = estimate_llc(regression_loss, params, data, config=config, key=jax.random.key(0))
    estimate = float(ds.llc_mean)
    standard_error = float(ds.llc_se)
    expected = ula_expected_llc(data[0], nbeta, gamma, eps)
    assert abs(expected - d / 2) / (d / 2) < 0.05  # the settings are close to the eps, gamma -> 0 limit
    assert abs(estimate - expected) < 4 * standard_error, (estimate, expected, standard_error)
    assert abs(estimate - d / 2) / (d / 2) < 0.10
    assert int(ds.n_diverged) == 0
    assert float(ds.rhat) < 1.1
    assert 0.9 < float(ds.mala_acceptance.mean()) <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("sampling", ["replacement", "epoch"])
def test_regular_model_minibatch_gives_d_over_2(sampling):
    d, n = 4, 2000
    params, data = regression_problem(d, n, seed=11)
    config = SGLDConfig(step_size=5e-4, localization=1.0, num_chains=8, num_steps=3000, num_burnin=300,
                        batch_size=200, trace_every=10, sampling=sampling)
    ds = estimate_llc(regression_loss, params, data, config=config, key=jax.random.key(1))
    assert abs(float(ds.llc_mean) - d / 2) / (d / 2) < 0.10, float(ds.llc_mean)
    assert ds.sizes["step"] == 300


@pytest.mark.slow
def test_degenerate_quartic_gives_one_quarter():
    """L(w) = w^4: the posterior exp(-nbeta w^4) has E[nbeta w^4] = 1/4 exactly, lambda = 1/4."""
    quartic = lambda params, batch: jnp.mean(batch) * params["w"][0] ** 4
    config = SGLDConfig(step_size=5e-4, localization=0.0, nbeta=1000.0, num_chains=16, num_steps=40000,
                        num_burnin=2000, trace_every=100)
    ds = estimate_llc(quartic, {"w": jnp.zeros(1)}, jnp.ones((10,)), config=config, key=jax.random.key(0))
    standard_error = float(ds.llc_std) / 4
    assert abs(float(ds.llc_mean) - 0.25) < 4 * standard_error, (float(ds.llc_mean), standard_error)
    assert abs(float(ds.llc_mean) - 0.25) < 0.025


# ---------------------------------------------------------------------- determinism, batching, schema

SMALL = SGLDConfig(step_size=1e-3, localization=10.0, num_chains=3, num_steps=60, num_burnin=10, batch_size=50)


def test_same_key_same_dataset_and_schema(tmp_path):
    params, data = regression_problem(3, 200, seed=0)
    a = estimate_llc(regression_loss, params, data, config=SMALL, key=jax.random.key(5))
    b = estimate_llc(regression_loss, params, data, config=SMALL, key=jax.random.key(5))
    c = estimate_llc(regression_loss, params, data, config=SMALL, key=jax.random.key(6))
    xr.testing.assert_identical(a, b)
    assert not np.array_equal(a.llc_per_chain.values, c.llc_per_chain.values)
    for name in ("llc_mean", "llc_std", "init_loss", "rhat", "ess", "n_diverged"):
        assert a[name].dims == ()
    for name in ("llc_per_chain", "mala_acceptance", "frac_below_init", "diverged"):
        assert a[name].dims == ("chain",)
    assert a.loss_trace.dims == ("chain", "step") and a.loss_trace.shape == (3, 60)
    assert all("long_name" in a[v].attrs for v in a.data_vars)
    assert a.attrs["nbeta"] == pytest.approx(200 / np.log(200))
    np.testing.assert_allclose(float(a.init_loss), float(regression_loss(params, data)), rtol=1e-6)
    # the LLC formula, from the stored trace (trace_every=1 keeps every step)
    post = a.loss_trace.sel(step=slice(10, None)).mean("step")
    np.testing.assert_allclose(a.llc_per_chain, a.attrs["nbeta"] * (post - a.init_loss), rtol=2e-4)
    np.testing.assert_allclose(float(a.llc_mean), float(a.llc_per_chain.mean()), rtol=1e-12)
    np.testing.assert_allclose(float(a.llc_std), float(a.llc_per_chain.std(ddof=1)), rtol=1e-12)
    path = save_dataset(a, tmp_path / "llc.nc")
    back = open_result(path, kind="llc")
    np.testing.assert_array_equal(back.llc_per_chain, a.llc_per_chain)
    assert back.diverged.dtype == bool


def test_thinned_trace_keeps_the_estimate():
    params, data = regression_problem(3, 200, seed=0)
    full = estimate_llc(regression_loss, params, data, config=SMALL, key=jax.random.key(5))
    thin_config = SGLDConfig(**{**SMALL.to_dict(), "trace_every": 7})
    thin = estimate_llc(regression_loss, params, data, config=thin_config, key=jax.random.key(5))
    np.testing.assert_allclose(thin.llc_per_chain, full.llc_per_chain, rtol=1e-5)
    assert thin.sizes["step"] == 9 and list(thin.step.values[:2]) == [0, 7]
    np.testing.assert_allclose(thin.loss_trace.isel(step=0), full.loss_trace.isel(step=slice(0, 7)).mean("step"),
                               rtol=1e-5)
    np.testing.assert_allclose(thin.loss_trace.isel(step=-1), full.loss_trace.isel(step=slice(56, 60)).mean("step"),
                               rtol=1e-5)


def test_batched_equals_looped_single_calls():
    problems = [regression_problem(3, 200, seed=s) for s in range(3)]
    params = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[p for p, _ in problems])
    data = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[d for _, d in problems])
    key = jax.random.key(9)
    batched = estimate_llc_batched(regression_loss, params, data, config=SMALL, key=key,
                                   instance_dims={"seed": [10, 20, 30]})
    assert batched.llc_per_chain.dims == ("seed", "chain")
    assert batched.loss_trace.dims == ("seed", "chain", "step")
    assert list(batched.seed.values) == [10, 20, 30]
    for i, key_i in enumerate(jax.random.split(key, 3)):
        single = estimate_llc(regression_loss, problems[i][0], problems[i][1], config=SMALL, key=key_i)
        np.testing.assert_allclose(batched.llc_per_chain[i], single.llc_per_chain, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(batched.loss_trace[i], single.loss_trace, rtol=1e-5)
        np.testing.assert_allclose(batched.init_loss[i], single.init_loss, rtol=1e-6)
        # the stored checks too: their chains run on the keys the single call gives them
        for name in ("llc_check", "llc_step_check", "llc_full_batch_check", "batch_check_rel_diff"):
            np.testing.assert_allclose(batched[name][i], single[name], rtol=1e-4, err_msg=name)


def test_batched_shared_data_and_grid_dims():
    params, data = regression_problem(2, 100, seed=1)
    grid = jax.tree_util.tree_map(lambda w: jnp.broadcast_to(w, (2, 3) + w.shape) * 1.0, params)
    config = SGLDConfig(step_size=1e-3, localization=10.0, num_chains=2, num_steps=20)
    ds = estimate_llc_batched(regression_loss, grid, data, config=config, key=jax.random.key(0),
                              instance_dims=("feature_probability", "seed"), data_batched=False)
    assert ds.llc_mean.dims == ("feature_probability", "seed")
    assert ds.loss_trace.shape == (2, 3, 2, 20)
    # same w* and data in every instance, different keys: same init_loss, different chains
    np.testing.assert_allclose(ds.init_loss, float(ds.init_loss[0, 0]), rtol=1e-6)
    assert len(np.unique(ds.llc_per_chain.values)) == 12


@pytest.mark.parametrize("n", [7, 1000, 5000])
def test_random_permutations_are_permutations(n):
    perms = np.asarray(random_permutations(jax.random.key(0), 50, n))
    np.testing.assert_array_equal(np.sort(perms, axis=-1), np.broadcast_to(np.arange(n), (50, n)))
    assert len({tuple(p) for p in perms}) == 50  # distinct
    # every position takes every value about equally often: first element roughly uniform
    if n == 7:
        many = np.asarray(random_permutations(jax.random.key(1), 7000, n))[:, 0]
        assert np.bincount(many, minlength=7).min() > 850


def test_epoch_sampling_uses_disjoint_batches():
    """sampling='epoch': the 4 minibatches (of 50) of each epoch cover all 200 rows once; with
    replacement they do not."""
    from slt_superposition.chain import ChainShape, _chunk_batches

    for sampling, partition in (("epoch", True), ("replacement", False)):
        shape = ChainShape(2, 4, 50, sampling, 200, 2)
        idx = np.asarray(_chunk_batches(shape, 8, jax.random.key(0), 0))
        assert idx.shape == (8, 50)
        covers = [np.array_equal(np.sort(idx[e * 4:(e + 1) * 4].ravel()), np.arange(200)) for e in range(2)]
        assert all(covers) == partition


def test_minibatch_excess_is_paired_with_the_same_rows_at_w_star():
    """The LLC's excess with a minibatch is L_B(w_t) - L_B(w*), the same rows at w*: a loss that
    only averages the data has excess 0 at every step (LLC exactly 0), where L_B(w_t) - L_n(w*)
    would read the batch's sampling noise; the loss trace is L_n(w*) + excess."""
    data = jnp.arange(200.0)
    loss = lambda p, batch: jnp.mean(batch) + 0.0 * jnp.sum(p["w"])
    for sampling in ("epoch", "replacement"):
        config = SGLDConfig(step_size=1e-3, localization=1.0, num_chains=2, num_steps=8, batch_size=50,
                            sampling=sampling, trace_every=1)
        ds = estimate_llc(loss, {"w": jnp.zeros(2)}, data, config=config, key=jax.random.key(0), checks=False)
        # to float32 rounding of two sums of the same rows (L_B - L_n(w*) reads hundreds here)
        np.testing.assert_allclose(ds.llc_per_chain, 0.0, atol=1e-3)
        np.testing.assert_allclose(ds.loss_trace, 99.5, rtol=1e-6)


def test_minibatch_chains_refuse_a_loss_that_is_not_a_mean_over_rows():
    """The paired excess reads L_B(w*) as the mean of one-row losses: a summed loss would bias
    every minibatch estimate, so it is refused (one line, before compiling); a mean plus a penalty
    on the params is a mean over rows and passes; full batch needs no rows alone."""
    params, data = regression_problem(3, 200, seed=0)
    summed = lambda p, batch: regression_loss(p, batch) * batch[1].shape[0]  # a sum over the rows
    penalised = lambda p, batch: regression_loss(p, batch) + 0.1 * jnp.sum(p["w"] ** 2)
    config = SGLDConfig(step_size=1e-4, localization=1.0, num_chains=2, num_steps=20, batch_size=50)
    with pytest.raises(InputError, match="mean of its rows' losses") as err:
        estimate_llc(summed, params, data, config=config, key=jax.random.key(0), checks=False)
    assert "\n" not in str(err.value)
    # realizable data (every row's loss 0 at w*, where a sum and a mean agree): refused all the same
    x = data[0]
    with pytest.raises(InputError, match="mean of its rows' losses"):
        estimate_llc(summed, params, (x, x @ params["w"]), config=config, key=jax.random.key(0), checks=False)
    for loss in (penalised, regression_loss):
        assert np.isfinite(float(estimate_llc(loss, params, data, config=config, key=jax.random.key(0),
                                              checks=False)["llc_mean"]))
    full = SGLDConfig(step_size=1e-4, localization=1.0, num_chains=2, num_steps=20, batch_size=None)
    assert np.isfinite(float(estimate_llc(summed, params, data, config=full, key=jax.random.key(0),
                                          checks=False)["llc_mean"]))


def test_nbeta_conventions():
    assert default_nbeta(1000) == pytest.approx(1000 / np.log(1000))
    assert default_nbeta(1000, 100, "batch") == pytest.approx(100 / np.log(100))
    assert resolve_nbeta(SGLDConfig(1e-3, 1.0, nbeta="batch", batch_size=64), 1000) == pytest.approx(64 / np.log(64))
    assert resolve_nbeta(SGLDConfig(1e-3, 1.0), 1000) == pytest.approx(1000 / np.log(1000))
    assert resolve_nbeta(SGLDConfig(1e-3, 1.0, nbeta=3.5), 1000) == 3.5


# ---------------------------------------------------------------------- compile once


def test_repeated_call_does_not_retrace():
    traces = []

    def counted_loss(params, batch):
        traces.append(1)  # runs only while jax traces the function
        return regression_loss(params, batch)

    params, data = regression_problem(3, 200, seed=2)
    estimate_llc(counted_loss, params, data, config=SMALL, key=jax.random.key(0))
    after_first = len(traces)
    assert after_first > 0
    other = SGLDConfig(**{**SMALL.to_dict(), "step_size": 2e-3, "localization": 5.0, "nbeta": 10.0})
    params2 = {"w": params["w"] + 0.1}
    estimate_llc(counted_loss, params2, data, config=other, key=jax.random.key(1))
    assert len(traces) == after_first  # new values, same shapes and static settings: no retrace
    # the chain length is a runtime value too: 120 steps in blocks of 2 keep the 60 trace blocks
    longer = SGLDConfig(**{**SMALL.to_dict(), "num_steps": 120, "num_burnin": 30, "trace_every": 2})
    estimate_llc(counted_loss, params, data, config=longer, key=jax.random.key(0))
    assert len(traces) == after_first
    # the chain program holds llc.trace_capacity(blocks) trace blocks (at least 256): 70 blocks share
    # the 60-block program (the checks' coupled chains are a program of their own: checks=False),
    # 300 blocks need a new one
    more_blocks = SGLDConfig(**{**SMALL.to_dict(), "num_steps": 70})
    ds = estimate_llc(counted_loss, params, data, config=more_blocks, key=jax.random.key(0), checks=False)
    assert len(traces) == after_first and ds.sizes["step"] == 70
    many_blocks = SGLDConfig(**{**SMALL.to_dict(), "num_steps": 300})
    ds = estimate_llc(counted_loss, params, data, config=many_blocks, key=jax.random.key(0), checks=False)
    assert len(traces) > after_first and ds.sizes["step"] == 300



# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p, d, c: (jax.tree_util.tree_map(lambda w: w.at[0].set(jnp.nan), p), d, c), r"params\['w'\] contains non-finite"),
        (lambda p, d, c: (p, (d[0].at[3, 1].set(jnp.inf), d[1]), c), r"data\[0\] contains non-finite"),
        (lambda p, d, c: (p, d, SGLDConfig(**{**c.to_dict(), "num_chains": 0})), "num_chains"),
        (lambda p, d, c: (p, d, SGLDConfig(**{**c.to_dict(), "num_steps": 0})), "num_steps"),
        (lambda p, d, c: (p, d, SGLDConfig(**{**c.to_dict(), "num_burnin": 60})), "num_burnin"),
        (lambda p, d, c: (p, d, SGLDConfig(**{**c.to_dict(), "batch_size": 201})), "larger than the number of samples"),
        (lambda p, d, c: (p, d, SGLDConfig(**{**c.to_dict(), "step_size": 0.0})), "step_size"),
        (lambda p, d, c: (p, d, SGLDConfig(**{**c.to_dict(), "step_size": -1e-3})), "step_size"),
        (lambda p, d, c: (p, d, SGLDConfig(**{**c.to_dict(), "nbeta": "devinterp"})), "nbeta"),
        (lambda p, d, c: (p, (d[0][:100], d[1]), c), "disagree on the number of samples"),
    ],
)
def test_bad_input_raises_before_compiling(change, message):
    params, data = regression_problem(3, 200, seed=0)
    params, data, config = change(params, data, SMALL)
    traced = []

    def counted_loss(p, batch):
        traced.append(jnp.shape(batch[0])[0])  # runs while jax traces: eval_shape (batch 50) or the program
        return regression_loss(p, batch)

    with pytest.raises(InputError, match=message):
        estimate_llc(counted_loss, params, data, config=config, key=jax.random.key(0))
    assert len(traced) <= 1  # at most the shape check; nothing compiled


def test_non_finite_batched_params_name_the_instance():
    params, data = regression_problem(3, 200, seed=0)
    grid = {"w": jnp.broadcast_to(params["w"], (2, 3, 3)).at[1, 2, 0].set(jnp.inf)}
    with pytest.raises(InputError, match=r"params\['w'\] contains non-finite values .* at instance "
                                         r"fp=0.5, seed=7 \(1 of 6 instances"):
        estimate_llc_batched(regression_loss, grid, data, config=SMALL, key=jax.random.key(0), data_batched=False,
                             instance_dims={"fp": [0.1, 0.5], "seed": [5, 6, 7]})


def test_an_unhashable_loss_fn_is_a_one_line_error():
    class Unhashable:  # defines __eq__ only: compiled programs cannot be cached by it
        def __eq__(self, other):
            return self is other

        def __call__(self, p, batch):
            return regression_loss(p, batch)

    params, data = regression_problem(3, 200, seed=0)
    with pytest.raises(InputError, match="loss_fn must be hashable"):
        estimate_llc(Unhashable(), params, data, config=SMALL, key=jax.random.key(0))


def test_loss_fn_must_return_a_scalar():
    params, data = regression_problem(3, 200, seed=0)
    per_sample = lambda p, batch: (batch[1] - batch[0] @ p["w"]) ** 2
    with pytest.raises(InputError, match=r"scalar.*shape \(50,\)"):
        estimate_llc(per_sample, params, data, config=SMALL, key=jax.random.key(0))
    broken = lambda p, batch: batch[0] @ p["missing"]
    with pytest.raises(InputError, match="loss_fn.*failed"):
        estimate_llc(broken, params, data, config=SMALL, key=jax.random.key(0))


# ---------------------------------------------------------------------- divergence


def cliff_loss(params, batch):
    """w^2 / 2, but 10^6 times steeper past w = 2.5: a chain that wanders there explodes."""
    w = params["w"][0]
    return 0.5 * w**2 * jnp.where(w > 2.5, 1e6, 1.0) + 0.0 * jnp.mean(batch)


def test_divergent_chains_are_flagged_and_excluded():
    config = SGLDConfig(step_size=0.5, localization=0.0, nbeta=1.0, num_chains=16, num_steps=200, num_burnin=20)
    with pytest.warns(RuntimeWarning, match=r"diverged.*chain="):
        ds = estimate_llc(cliff_loss, {"w": jnp.zeros(1)}, jnp.zeros((4,)), config=config, key=jax.random.key(0))
    diverged = ds.diverged.values
    assert 0 < diverged.sum() < 16  # some chains hit the cliff, some did not
    assert int(ds.n_diverged) == diverged.sum()
    healthy = ds.llc_per_chain.values[~diverged]
    assert np.all(np.isfinite(healthy))
    np.testing.assert_allclose(float(ds.llc_mean), healthy.mean(), rtol=1e-12)
    np.testing.assert_allclose(float(ds.llc_std), healthy.std(ddof=1), rtol=1e-12)
    assert np.isfinite(float(ds.rhat)) and np.isfinite(float(ds.ess))


def test_huge_step_size_diverges_without_crashing():
    params, data = regression_problem(3, 200, seed=0)
    config = SGLDConfig(step_size=10.0, localization=1.0, num_chains=2, num_steps=50)
    with pytest.warns(RuntimeWarning, match="2 SGLD chain"):
        ds = estimate_llc(regression_loss, params, data, config=config, key=jax.random.key(0))
    assert ds.diverged.values.all() and int(ds.n_diverged) == 2
    assert np.isnan(float(ds.llc_mean))


def test_no_warning_for_healthy_chains():
    params, data = regression_problem(3, 200, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        ds = estimate_llc(regression_loss, params, data, config=SMALL, key=jax.random.key(0))
    assert int(ds.n_diverged) == 0


# ---------------------------------------------------------------------- CLI


def test_cli_llc_on_a_trained_grid(tmp_path, capsys):
    from slt_superposition.cli import main
    from toy_models.train import TrainConfig, train_grid

    grid = train_grid(TrainConfig(n_features=4, n_hidden=2, feature_probabilities=(0.2, 0.5), seeds=2, steps=50,
                                  batch_size=64, loss_curve_points=5, eval_samples=256), progress=False)
    grid_path = save_dataset(grid, tmp_path / "grid.nc")
    out = tmp_path / "llc.nc"
    status = main(["llc", str(grid_path), "--out", str(out), "--chains", "2", "--steps", "30", "--burnin", "10",
                   "--batch-size", "50", "--n-samples", "100", "--step-size", "1e-4"])
    assert status == 0
    ds = open_result(out, kind="llc")
    assert ds.llc_mean.dims == ("feature_probability", "importance_decay", "seed")
    assert ds.loss_trace.dims == ("feature_probability", "importance_decay", "seed", "chain", "step")
    np.testing.assert_allclose(ds.feature_probability, [0.2, 0.5])
    assert np.isfinite(ds.llc_mean).all()
    assert main(["plot", str(out), "--out", str(tmp_path / "figures")]) == 0
    assert (tmp_path / "figures" / "llc_traces.png").stat().st_size > 0
    assert (tmp_path / "figures" / "llc_estimates.png").stat().st_size > 0
    # --no-progress: no bars and no announcement on stderr, the same numbers
    capsys.readouterr()
    assert main(["llc", str(grid_path), "--out", str(tmp_path / "quiet.nc"), "--chains", "2", "--steps", "30",
                 "--burnin", "10", "--batch-size", "50", "--n-samples", "100", "--step-size", "1e-4",
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert not [line for line in err.splitlines() if line.startswith(("sampling", "bias checks"))], err
    assert "llc_mean over" in err
    xr.testing.assert_identical(open_result(tmp_path / "quiet.nc", kind="llc").drop_attrs(), ds.drop_attrs())
    # bad input: a clear one-line error and exit status 2, before any sampling
    capsys.readouterr()
    status = main(["llc", str(grid_path), "--out", str(tmp_path / "x.nc"), "--batch-size", "500",
                   "--n-samples", "100"])
    assert status == 2
    err = capsys.readouterr().err
    assert "batch-size 500 is larger than the number of samples n=100" in err
    assert "sampling" not in err  # validated before anything is announced
    status = main(["llc", str(out), "--out", str(tmp_path / "y.nc")])
    assert status == 2 and "expected a 'train' dataset" in capsys.readouterr().err
