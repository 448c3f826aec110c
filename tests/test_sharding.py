"""Sharded over 4 (virtual CPU) devices == unsharded on one, bit for bit.

XLA_FLAGS must be set before jax is imported, so each check runs in a fresh subprocess
that prints "OK" only when every array compared equal.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from slt_superposition.errors import InputError


def run_with_4_devices(body: str, timeout: float = 240) -> str:
    """Run `body` in a python subprocess that sees 4 CPU devices; returns its stdout."""
    prelude = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        assert jax.device_count() == 4, jax.devices()
        from slt_superposition.sharding import instance_mesh, run_sharded, shard_instances, unshard, replicate

        def assert_bitwise(a, b):
            la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
            assert len(la) == len(lb)
            for x, y in zip(la, lb):
                x, y = np.asarray(x), np.asarray(y)
                assert x.shape == y.shape and x.dtype == y.dtype, (x.shape, y.shape)
                assert np.array_equal(x, y, equal_nan=True), float(np.max(np.abs(x - y)))
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(body)],
        capture_output=True, text=True, timeout=timeout, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_shard_instances_rejects_mismatched_leading_axes():
    from slt_superposition.sharding import instance_mesh, shard_instances

    with pytest.raises(InputError, match="leading instance axis"):
        shard_instances({"W": np.zeros((3, 2)), "b": np.zeros((4,))}, instance_mesh())


def test_pad_instances_repeats_last_instance():
    from slt_superposition.sharding import pad_instances

    padded, n = pad_instances({"W": np.arange(5.0)}, 4)  # also works on jax arrays
    assert n == 5
    np.testing.assert_array_equal(padded["W"], [0, 1, 2, 3, 4, 4, 4, 4])


def test_maybe_initialize_distributed_is_a_noop_without_env(monkeypatch):
    from slt_superposition.sharding import maybe_initialize_distributed

    for var in ("JAX_COORDINATOR_ADDRESS", "SLT_DISTRIBUTED"):
        monkeypatch.delenv(var, raising=False)
    assert maybe_initialize_distributed() is False
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
    monkeypatch.delenv("JAX_NUM_PROCESSES", raising=False)
    with pytest.raises(InputError, match="JAX_NUM_PROCESSES"):
        maybe_initialize_distributed()


def test_sharded_equals_single_device_bitwise():
    # (1) run_sharded on a toy vmapped scan: 50 noisy gradient steps per instance with its own
    # key (matmuls, reductions and RNG, as training and SGLD do); 38 instances.
    # (2) The public API: train_grid and estimate_llc_batched with a 4-device mesh, a 1-device
    # mesh and mesh=None (one device) give the same bits. 20 instances run as 2 blocks of 10:
    # 1 device runs both, 4 devices run one each (and two blocks of padding).
    out = run_with_4_devices(
        """
        def one(w, key, x):
            def step(w, k):
                loss, g = jax.value_and_grad(lambda w: jnp.mean(jnp.tanh(x @ w) ** 2))(w)
                w = w - 0.1 * g + 0.01 * jax.random.normal(k, w.shape)
                return w, loss
            return jax.lax.scan(step, w, jax.random.split(key, 50))

        fn = jax.vmap(one, in_axes=(0, 0, None))
        g = lambda t, x: fn(t[0], t[1], x)
        n = 38
        w = jax.random.normal(jax.random.PRNGKey(0), (n, 8, 3))
        keys = jax.random.split(jax.random.PRNGKey(1), n)
        x = jax.random.normal(jax.random.PRNGKey(2), (64, 8))

        sharded = run_sharded(g, (w, keys), x, mesh=instance_mesh())
        assert sharded[0].shape == (38, 8, 3) and sharded[1].shape == (38, 50)
        single = run_sharded(g, (w, keys), x, mesh=instance_mesh(jax.devices()[:1]))
        assert_bitwise(single, sharded)
        # and the numbers are the function's (to float32 rounding; the bits are the block's)
        np.testing.assert_allclose(sharded[0], np.asarray(jax.jit(fn)(w, keys, x)[0]), rtol=1e-5, atol=1e-6)

        # shard_instances: inputs really are split over the 4 devices
        sharded_in, n_inst = shard_instances((w, keys), instance_mesh())
        assert n_inst == 38 and sharded_in[0].shape[0] == 40
        assert len(sharded_in[0].sharding.device_set) == 4
        from slt_superposition import SGLDConfig, estimate_llc_batched
        from slt_superposition.sharding import balanced_block
        from toy_models.train import TrainConfig, train_grid, llc_inputs, GRID_DIMS

        assert balanced_block(20) == 10 and balanced_block(1) == 1 and balanced_block(33) == 11
        config = TrainConfig(n_features=5, n_hidden=2, feature_probabilities=(0.05, 0.1, 0.3, 0.6, 1.0),
                             seeds=4, steps=60, batch_size=32, chunk_steps=25, loss_curve_points=3,
                             eval_samples=256, snapshot_steps=(30,))
        four = train_grid(config, progress=False, mesh=instance_mesh())
        one = train_grid(config, progress=False, mesh=instance_mesh(jax.devices()[:1]))
        default = train_grid(config, progress=False)
        names = ("W", "b", "loss", "loss_curve", "W_snapshot", "b_snapshot")
        assert_bitwise([one[v].values for v in names], [four[v].values for v in names])
        assert_bitwise([one[v].values for v in names], [default[v].values for v in names])
        assert four.W.shape == (5, 1, 4, 2, 5) and np.isfinite(four.loss.values).all()

        loss_fn, params, data = llc_inputs(four, n_samples=200, key=jax.random.key(1))
        sgld = SGLDConfig(step_size=1e-4, localization=10.0, num_chains=2, num_steps=30, num_burnin=10,
                          batch_size=50, trace_every=10)
        dims = {d: four[d].values for d in GRID_DIMS}
        results = [estimate_llc_batched(loss_fn, params, data, config=sgld, key=jax.random.key(2),
                                        instance_dims=dims, mesh=mesh)
                   for mesh in (instance_mesh(), instance_mesh(jax.devices()[:1]), None)]
        for other in results[1:]:
            assert_bitwise([results[0][v].values for v in results[0].data_vars],
                           [other[v].values for v in results[0].data_vars])
        assert results[0].llc_per_chain.shape == (5, 1, 4, 2)
        assert np.isfinite(results[0].llc_mean.values).all()
        print("OK")
        """
    )
    assert "OK" in out


def test_distributed_flags_are_checked_before_joining(monkeypatch):
    from slt_superposition.sharding import maybe_initialize_distributed

    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLT_DISTRIBUTED"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(InputError, match=r"process id must be in \[0, 2\)"):
        maybe_initialize_distributed("localhost:1234", 2, 2)
    with pytest.raises(InputError, match="need --coordinator"):
        maybe_initialize_distributed(None, 2, 0)
    assert maybe_initialize_distributed("localhost:1234", 1, 0) is False  # one process: nothing to join
