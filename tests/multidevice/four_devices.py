"""Sharded over 4 (virtual CPU) devices == unsharded on one, bit for bit: one test per claim.

XLA reads the device count when jax starts, so these tests need a process of their own:
tests/test_sharding.py runs this module as

    XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu pytest tests/multidevice/four_devices.py

(the name does not start with test_, so the suite's own process does not collect it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slt_superposition.sharding import (balanced_block, default_mesh, instance_mesh, padded_blocks, run_sharded,
                                        shard_instances, working_mesh)

if jax.device_count() != 4:
    pytest.skip("needs 4 devices: run with XLA_FLAGS=--xla_force_host_platform_device_count=4 "
                "(tests/test_sharding.py does)", allow_module_level=True)

N_TOY = 38  # not a multiple of 4: the last block is padded


def assert_bitwise(a, b) -> None:
    """Every leaf of pytrees `a` and `b`: same shape, dtype and bits (NaN equal to NaN)."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape and x.dtype == y.dtype, (x.shape, y.shape)
        assert np.array_equal(x, y, equal_nan=True), float(np.max(np.abs(x - y)))


def _toy():
    """A vmapped scan of 50 noisy gradient steps per instance with its own key (matmuls,
    reductions and RNG, as training and SGLD do): (function of (w, keys), x; inputs)."""
    def one(w, key, x):
        def step(w, k):
            loss, g = jax.value_and_grad(lambda w: jnp.mean(jnp.tanh(x @ w) ** 2))(w)
            return w - 0.1 * g + 0.01 * jax.random.normal(k, w.shape), loss
        return jax.lax.scan(step, w, jax.random.split(key, 50))

    fn = jax.vmap(one, in_axes=(0, 0, None))
    w = jax.random.normal(jax.random.PRNGKey(0), (N_TOY, 8, 3))
    keys = jax.random.split(jax.random.PRNGKey(1), N_TOY)
    x = jax.random.normal(jax.random.PRNGKey(2), (64, 8))
    return fn, w, keys, x


@pytest.fixture(scope="module")
def toy():
    fn, w, keys, x = _toy()
    g = lambda t, x: fn(t[0], t[1], x)
    sharded = run_sharded(g, (w, keys), x, mesh=instance_mesh())
    return fn, w, keys, x, g, sharded


def test_run_sharded_over_4_devices_equals_1_device_bitwise(toy):
    _, w, keys, x, g, sharded = toy
    assert sharded[0].shape == (N_TOY, 8, 3) and sharded[1].shape == (N_TOY, 50)
    assert_bitwise(run_sharded(g, (w, keys), x, mesh=instance_mesh(jax.devices()[:1])), sharded)


def test_run_sharded_computes_the_function(toy):
    # the numbers are the function's, to float32 rounding (the bits are the block's)
    fn, w, keys, x, _, sharded = toy
    np.testing.assert_allclose(sharded[0], np.asarray(jax.jit(fn)(w, keys, x)[0]), rtol=1e-5, atol=1e-6)


def test_shard_instances_splits_over_the_4_devices():
    _, w, keys, _ = _toy()
    sharded_in, n_inst = shard_instances((w, keys), instance_mesh())
    assert n_inst == N_TOY and sharded_in[0].shape[0] == 40  # padded to a multiple of 4
    assert len(sharded_in[0].sharding.device_set) == 4


def test_default_mesh_spans_the_cpu_devices():
    # mesh=None: every CPU device (the cores, where the console script split the CPU)
    assert default_mesh().devices.size == 4


def test_a_device_without_a_block_is_left_out(toy):
    # 2 blocks on 4 devices: 2 devices, no padding copies; 5 blocks: 2 per device, 8 in all
    assert working_mesh(instance_mesh(), 2).devices.size == 2 and working_mesh(instance_mesh(), 9).devices.size == 4
    assert padded_blocks(20, 10, instance_mesh()) == 2 and padded_blocks(50, 10, instance_mesh()) == 8
    _, w, keys, x, g, sharded = toy
    few = run_sharded(g, (w[:3], keys[:3]), x, mesh=instance_mesh(), block=3)  # one block, one device
    assert_bitwise(few, run_sharded(g, (w[:3], keys[:3]), x, mesh=instance_mesh(jax.devices()[:1]), block=3))


def test_balanced_block():
    assert balanced_block(20) == 10 and balanced_block(1) == 1 and balanced_block(33) == 11


@pytest.fixture(scope="module")
def grids():
    """The same grid trained on a 4-device mesh, a 1-device mesh and without a mesh (every CPU
    device). 20 instances run as 2 blocks of 10: 1 device runs both, 2 of the 4 devices one each."""
    from toy_models.train import TrainConfig, train_grid

    config = TrainConfig(n_features=5, n_hidden=2, feature_probabilities=(0.05, 0.1, 0.3, 0.6, 1.0),
                         seeds=4, steps=60, batch_size=32, chunk_steps=25, loss_curve_points=3,
                         eval_samples=256, snapshot_steps=(30,))
    return {name: train_grid(config, progress=False, mesh=mesh)
            for name, mesh in (("four", instance_mesh()), ("one", instance_mesh(jax.devices()[:1])), ("none", None))}


def test_train_grid_on_4_devices_equals_1_device_bitwise(grids):
    names = ("W", "b", "loss", "loss_curve", "W_snapshot", "b_snapshot")
    four = [grids["four"][v].values for v in names]
    assert_bitwise([grids["one"][v].values for v in names], four)
    assert_bitwise([grids["none"][v].values for v in names], four)
    assert grids["four"].W.shape == (5, 1, 4, 2, 5) and np.isfinite(grids["four"].loss.values).all()


def test_estimate_llc_batched_on_4_devices_equals_1_device_bitwise(grids):
    from slt_superposition import SGLDConfig, estimate_llc_batched
    from toy_models.train import GRID_DIMS, llc_inputs

    four = grids["four"]
    loss_fn, params, data = llc_inputs(four, n_samples=200, key=jax.random.key(1))
    sgld = SGLDConfig(step_size=1e-4, localization=10.0, num_chains=2, num_steps=30, num_burnin=10,
                      batch_size=50, trace_every=10)
    dims = {d: four[d].values for d in GRID_DIMS}
    results = [estimate_llc_batched(loss_fn, params, data, config=sgld, key=jax.random.key(2),
                                    instance_dims=dims, mesh=mesh)
               for mesh in (instance_mesh(), instance_mesh(jax.devices()[:1]), None)]
    for other in results[1:]:
        assert sorted(other.data_vars) == sorted(results[0].data_vars)
        differ = [v for v in results[0].data_vars
                  if not np.array_equal(results[0][v].values, other[v].values, equal_nan=True)]
        assert not differ, "not bitwise equal across meshes: " + ", ".join(differ)
    assert results[0].llc_per_chain.shape == (5, 1, 4, 2)
    assert np.isfinite(results[0].llc_mean.values).all()


def test_one_instance_chains_on_spare_devices_equal_1_device_bitwise(grids):
    """One instance, 4 devices: its chains run as groups on the spare devices (8 chains as 4 x 2,
    6 as 3 x 2; 2 chains stay together, `chain_groups.MIN_GROUP_CHAINS`), and every variable of the
    estimate (checks included) equals the one-device run's bit for bit."""
    import slt_superposition.llc as llc_module
    from slt_superposition import SGLDConfig, estimate_llc_batched
    from toy_models.train import GRID_DIMS, llc_inputs

    one = grids["four"].isel(feature_probability=[2], seed=[0])
    loss_fn, params, data = llc_inputs(one, n_samples=200, key=jax.random.key(1))
    join = llc_module.join_instances
    for num_chains, groups in ((8, {4}), (6, {3}), (2, set())):
        sgld = SGLDConfig(step_size=1e-4, localization=10.0, num_chains=num_chains, num_steps=30, num_burnin=10,
                          batch_size=50, trace_every=10)
        seen = []
        llc_module.join_instances = lambda out, g: (g > 1 and seen.append(g)) or join(out, g)  # groups that ran
        try:
            results = [estimate_llc_batched(loss_fn, params, data, config=sgld, key=jax.random.key(2),
                                            instance_dims={d: one[d].values for d in GRID_DIMS}, mesh=mesh)
                       for mesh in (instance_mesh(), instance_mesh(jax.devices()[:1]))]
        finally:
            llc_module.join_instances = join
        assert set(seen) == groups, (num_chains, seen)
        differ = [v for v in results[0].data_vars
                  if not np.array_equal(results[0][v].values, results[1][v].values, equal_nan=True)]
        assert not differ, f"{num_chains} chains: not bitwise equal across meshes: " + ", ".join(differ)
        assert results[0].llc_per_chain.shape[-1] == num_chains and np.isfinite(results[0].llc_mean.values).all()
