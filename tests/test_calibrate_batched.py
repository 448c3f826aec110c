"""`calibrate_batched`: every instance its own step size and chain length, in one call."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slt_superposition import SGLDConfig, calibrate, calibrate_batched, estimate_llc_batched

STEP_SIZES = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
OPTIONS = dict(batch_size=100, num_chains=2, step_sizes=STEP_SIZES, sweep_steps=200, min_steps=400, max_steps=1600,
               batch_check_steps=200)


def regression_loss(params, batch):
    x, y = batch
    return 0.5 * jnp.mean((y - x @ params["w"]) ** 2)


@pytest.fixture(scope="module")
def grid():
    """Three regressions whose inputs are scaled by 1, 3 and 10: curvature x1, x9, x100."""
    xs, ys, ws = [], [], []
    for i, scale in enumerate((1.0, 3.0, 10.0)):
        kx, ky, kw = jax.random.split(jax.random.key(i), 3)
        x = scale * jax.random.normal(kx, (400, 3))
        y = x @ jax.random.normal(kw, (3,)) + 0.5 * jax.random.normal(ky, (400,))
        xs.append(x), ys.append(y), ws.append(jnp.linalg.lstsq(x, y)[0])
    return {"w": jnp.stack(ws)}, (jnp.stack(xs), jnp.stack(ys))


@pytest.fixture(scope="module")
def calibrated(grid):
    params, data = grid
    return calibrate_batched(regression_loss, params, data, key=jax.random.key(5), instance_dims={"scale": [1, 3, 10]},
                             **OPTIONS)


def test_every_instance_gets_its_own_settings(calibrated):
    config, ds = calibrated
    assert isinstance(config, SGLDConfig) and config.per_instance
    eps = np.asarray(config.step_size)
    assert eps.shape == (3,) and np.asarray(config.num_steps).shape == (3,)
    # more curvature, smaller step size: within each instance's curvature bound
    assert eps[0] > eps[2]
    assert (eps <= ds["step_size_bound"].values).all()
    np.testing.assert_array_equal(eps, ds["chosen_step_size"].values)
    np.testing.assert_array_equal(np.asarray(config.num_steps), ds["chosen_num_steps"].values)
    assert (np.asarray(config.num_burnin) == np.asarray(config.num_steps) // 2).all()
    # the Hessian's top eigenvalue grows with the scale squared
    top = ds["hessian_top_eigenvalue"].values
    assert top[1] / top[0] == pytest.approx(9, rel=0.5) and top[2] / top[0] == pytest.approx(100, rel=0.5)


def test_dataset_has_the_instance_dims_and_a_verdict_each(calibrated):
    _, ds = calibrated
    for name, var in ds.data_vars.items():
        assert var.dims[0] == "scale", name
        assert "long_name" in var.attrs, name
    assert ds["verdict"].shape == (3,) and all(v.startswith("chose step_size") for v in ds["verdict"].values)
    # each instance's chosen step size is flagged once in the sweep, and it and every smaller one is healthy
    chosen = ds["chosen"].values
    assert (chosen.sum(axis=1) == 1).all()
    for i in range(3):
        j = int(chosen[i].argmax())
        assert ds["healthy"].values[i, : j + 1].all()


def test_the_config_feeds_one_batched_estimate(grid, calibrated):
    params, data = grid
    config, _ = calibrated
    ds = estimate_llc_batched(regression_loss, params, data, config=config, key=jax.random.key(6),
                              instance_dims={"scale": [1, 3, 10]})
    # a regular model of d = 3: lambda = 3/2 (up to the localization's small pull and the checks' noise)
    np.testing.assert_allclose(ds["llc_mean"].values, 1.5, rtol=0.2)
    np.testing.assert_array_equal(ds["step_size"].values, np.asarray(config.step_size))
    # trusted only where both checks resolved their tolerance and agree within it (+ 2 SE)
    trusted = ds["trusted"].values
    assert not (trusted & ~(ds["step_check_se"].values <= 0.05)).any()
    assert not (trusted & ~(np.abs(ds["step_check_rel_diff"].values) <= 0.05 + 2 * ds["step_check_se"].values)).any()


def test_minibatch_check_records_the_paired_runs(calibrated):
    config, ds = calibrated
    assert ds["batch_check"].values[0] == 100
    assert np.isfinite(ds["batch_check_rel_diff"].values[:, 0]).all()
    passed = ds["batch_check_passed"].values
    # the dataset's rel_diff and se (both relative to the full-batch estimate) reproduce its verdicts
    from slt_superposition.checks import within
    checked = np.isfinite(ds["batch_check_rel_diff"].values)
    np.testing.assert_array_equal(passed[checked], within(ds["batch_check_rel_diff"].values[checked],
                                                          ds["batch_check_se"].values[checked], 0.02))
    # each check ran min(chain length, 200) steps, or longer (at most 8x and the chain length) where
    # that left it unresolved (`checks.resolving_steps`)
    first = np.minimum(ds["chosen_num_steps"].values, 200)[:, None] * np.ones_like(passed, dtype=int)
    steps = ds["batch_check_steps"].values
    assert (steps[checked] >= first[checked]).all()
    assert (steps[checked] <= np.minimum(ds["chosen_num_steps"].values[:, None], 8 * first)[checked]).all()
    if config.batch_size == 100:  # the first batch size passed on every instance
        assert passed[:, 0].all()
    else:  # some instance failed it, and a larger batch (or full batch) was taken
        assert not passed[:, 0].all()


def test_minibatch_stage_stores_the_predicted_bias_of_every_batch_it_tried(grid, calibrated):
    """`batch_bias_predicted (scale, batch_check)`: each instance's prediction from its own rows at its
    chosen step size and localization (`minibatch_noise`), for every batch size tried; it grows with
    eps / B, so it shrinks 4x from one tried batch to the next."""
    from slt_superposition.llc import default_nbeta
    from slt_superposition.minibatch_noise import noise_spectrum, predicted_batch_bias

    params, data = grid
    _, ds = calibrated
    predicted = ds["batch_bias_predicted"].values
    assert predicted.shape == ds["batch_check_rel_diff"].shape and (predicted > 0).all()
    for i in range(3):
        one = lambda tree: jax.tree_util.tree_map(lambda x: x[i], tree)
        spectrum = noise_spectrum(regression_loss, one(params), one(data))
        for j, b in enumerate(ds["batch_check"].values):
            expected = predicted_batch_bias(spectrum, float(ds["chosen_step_size"][i]),
                                            float(ds["chosen_localization"][i]), default_nbeta(400), int(b))
            assert predicted[i, j] == pytest.approx(float(expected), rel=1e-4)


def test_calibrate_is_the_one_instance_case(grid):
    params, data = grid
    one = lambda tree: jax.tree_util.tree_map(lambda x: x[0], tree)
    single, ds_single = calibrate(regression_loss, one(params), one(data), key=jax.random.key(5), **OPTIONS)
    batched, ds_batched = calibrate_batched(regression_loss, jax.tree_util.tree_map(lambda x: x[:1], params),
                                            jax.tree_util.tree_map(lambda x: x[:1], data), key=jax.random.key(5),
                                            **OPTIONS)
    assert single.step_size == float(np.asarray(batched.step_size)[0])
    assert single.num_steps == int(np.asarray(batched.num_steps)[0])
    np.testing.assert_array_equal(ds_single["llc_sweep"].values, ds_batched["llc_sweep"].values[0])


def _fake_sampler(noise_of_batch):
    """A `Sampler` whose minibatch runs equal full batch on average (llc 10, no bias) with a
    paired per-block difference of standard deviation `noise_of_batch[batch]`; one instance."""
    from slt_superposition.calibration import TRACE_BLOCKS, Runs, Sampler

    def run(key, step_size, num_steps, localization, batch_size):
        rng = np.random.default_rng(0)
        chains = 4
        trace = np.zeros((1, chains, TRACE_BLOCKS))
        if batch_size is not None:  # a zero-mean paired difference of this size per block
            noise = rng.normal(size=trace.shape)
            trace = (noise - noise.mean()) * noise_of_batch[batch_size]
        post = np.zeros((1, TRACE_BLOCKS), bool)
        post[:, TRACE_BLOCKS // 2:] = True
        per_chain = np.full((1, chains), 10.0)
        one = np.ones(1)
        return Runs(10 * one, 0.1 * one, 0.9 * one, 0 * one, one, per_chain, trace, post)

    return Sampler(run, 1)


def test_the_minibatch_check_keeps_a_batch_only_where_it_resolved_the_tolerance():
    """The calibration's batch rule is the stored check's (`checks.within`): a batch whose paired
    difference is zero but whose check cannot resolve 2% is not kept; the next batch size is
    tried (here its check resolves, so it is kept)."""
    from slt_superposition.calibration import batch_check_stage

    nbeta = 1.0
    noisy = {100: 50.0, 400: 0.001}  # per-block SD of the paired difference: unresolved, then resolved
    stage = batch_check_stage(_fake_sampler(noisy), jax.random.key(0), np.array([1e-4]), np.array([1000]),
                              np.array([1.0]), batch_size=100, n=3000, nbeta=nbeta, tol=0.02, check_steps=1000,
                              progress=False)
    assert stage.batch_sizes == [100, 400] and stage.chosen == 400
    assert np.abs(stage.rel_diff[0, 0]) < 0.02  # agreed within the tolerance, yet was not kept
    assert stage.diff_se[0, 0] / 10 > 0.02 and not stage.passed[0, 0]
    assert stage.passed[0, 1] and stage.diff_se[0, 1] / 10 <= 0.02
