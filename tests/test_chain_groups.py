"""An instance's chains as groups on spare devices (slt_superposition.chain_groups); the bitwise
claim across device counts is in tests/multidevice/four_devices.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from slt_superposition.chain_groups import (GROUP_DATA_BYTES, chain_groups, instance_data_bytes, join_instances,
                                            split_instances)


def test_chain_groups_uses_spare_devices_with_whole_chains():
    assert chain_groups(1, 8, 2) == 2
    assert chain_groups(1, 8, 16) == 4  # at least 2 chains per group (MIN_GROUP_CHAINS)
    assert chain_groups(1, 2, 4) == 1 and chain_groups(1, 4, 4) == 2
    assert chain_groups(3, 8, 16) == 4  # 16 // 3 = 5 devices per instance: 4 groups of 2
    assert chain_groups(1, 6, 4) == 3 and chain_groups(1, 6, 2) == 2
    assert chain_groups(1, 7, 4) == 1  # no divisor of 7 in 2..4
    assert chain_groups(2, 8, 2) == 1 and chain_groups(5, 8, 4) == 1  # no spare device
    assert chain_groups(1, 8, 1) == 1


def test_chain_groups_keeps_large_data_together():
    big = GROUP_DATA_BYTES // 2 + 1  # two copies exceed the budget
    assert chain_groups(1, 8, 4, instance_data_bytes=big) == 1
    assert chain_groups(1, 8, 4, instance_data_bytes=GROUP_DATA_BYTES // 4) == 4
    data = np.zeros((3, 10, 4), np.float32)
    assert instance_data_bytes(data, 3, True) == 10 * 4 * 4 and instance_data_bytes(data, 3, False) == 0


def test_split_then_join_keeps_every_chain_on_its_own_key():
    n_inst, chains, groups = 3, 6, 3
    keys = jax.random.split(jax.random.key(0), n_inst)
    params = {"W": jnp.arange(n_inst * 2.0).reshape(n_inst, 2)}
    data = np.arange(n_inst * 5.0).reshape(n_inst, 5, 1)
    settings = (jnp.arange(n_inst),)
    p, d, ck, s = split_instances(params, data, keys, settings, groups=groups, num_chains=chains, data_batched=True)
    assert p["W"].shape == (9, 2) and d.shape == (9, 5, 1) and ck.shape == (9, 2) and s[0].shape == (9,)
    np.testing.assert_array_equal(s[0], np.repeat(np.arange(n_inst), groups))
    # each chain's key, read back through join, is chain c of jax.random.split(keys[i], chains)
    key_bits = np.asarray(jax.random.key_data(ck))[..., 0]  # (9, 2)
    out = join_instances({"init_loss": np.repeat(np.arange(n_inst), groups), "k": key_bits}, groups)
    want = np.stack([np.asarray(jax.random.key_data(jax.random.split(k, chains)))[:, 0] for k in keys])
    np.testing.assert_array_equal(out["k"], want)
    np.testing.assert_array_equal(out["init_loss"], np.arange(n_inst))
    shared = data[0]  # data shared by every instance are not copied
    assert split_instances(params, shared, keys, settings, groups=groups, num_chains=chains,
                           data_batched=False)[1] is shared
