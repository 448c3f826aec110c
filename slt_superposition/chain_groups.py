"""An instance's chains split into groups, so that devices with no instance of their own help.

The chain programs run in blocks of instances, one block per device at a time
(`sharding.run_sharded`). With fewer instances than devices (one model estimated on a CPU whose
cores are devices, `cpu_devices`) the spare devices would idle. A chain's numbers depend only on
its own key (`chain.chains_program`), so `llc.sample_chains` can instead run each instance as
`groups` copies, copy g holding chains g C / G .. (g + 1) C / G - 1 of the C, and join the copies'
chains again: the same keys, the same chains.

The same bits too, where XLA compiles a chain's arithmetic the same whatever the number of chains
beside it: the TMS at a minibatch, every small model's products written elementwise
(`small_dots`), MALA and epoch sampling, deep linear networks (tests/multidevice/four_devices.py,
and a scratch comparison of those models at 4 to 12 chains). Not always: TMS 20x5 at full batch,
whose products XLA hands to its matrix library, differed in the last float32 bit (about 1e-7
relative) between 2 and 4 chains per program. So a one-instance estimate on several devices can
differ from the same call on one device in its last bits; grids with at least as many instances
as devices never group and keep the same bits on any device count. Groups of one chain are never
made (`MIN_GROUP_CHAINS`).

Shapes: `n_inst` instances of `num_chains` chains become `n_inst * groups` instances of
`num_chains // groups` chains, the copies of one instance next to each other.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from slt_superposition.memory import tree_bytes
from slt_superposition.sharding import is_multiprocess

PyTree = Any
# the most data bytes per instance that are copied to run its chains as groups (each group's device
# needs the instance's data): beyond it an instance's chains stay together
GROUP_DATA_BYTES = 1 << 28
# chains per group at least: XLA compiles a vmap over one chain as a program without the chain axis,
# whose float results differed in the last bits from the same chain beside others even on the TMS
# at a minibatch, where groups of 2 or more chains gave the same bits
MIN_GROUP_CHAINS = 2


def chain_groups(n_inst: int, num_chains: int, n_devices: int, *, instance_data_bytes: int = 0) -> int:
    """How many groups each instance's chains run as: the largest divisor of `num_chains` that
    keeps `n_inst * groups` within `n_devices` and at least `MIN_GROUP_CHAINS` chains in a group
    (1 when there are at least as many instances as devices, in a multi-process run, or when an
    instance's data exceed `GROUP_DATA_BYTES` copied)."""
    spare = n_devices // max(1, n_inst)
    if spare <= 1 or is_multiprocess():
        return 1
    fits = [g for g in range(1, min(spare, num_chains // MIN_GROUP_CHAINS) + 1)
            if num_chains % g == 0 and g * instance_data_bytes <= GROUP_DATA_BYTES]
    return max(fits, default=1)


def instance_data_bytes(data: PyTree, n_inst: int, data_batched: bool) -> int:
    """Bytes of one instance's data (0 when the data are shared by every instance)."""
    return tree_bytes(data) // max(1, n_inst) if data_batched else 0


def in_groups(params: PyTree, data: PyTree, keys: jax.Array, settings: PyTree, shape, *, n_devices: int,
              block_size: int, data_batched: bool) -> tuple[int, tuple, Any]:
    """The one decision both chain programs' launchers make (`llc.sample_chains`,
    `coupled.sample_coupled`): with blocks of one instance (`block_size` 1), `chain_groups` on
    `n_devices`; returns (groups, (params, data, chain or instance keys, settings), shape with each
    group's chain count). With 1 group the inputs and shape come back unchanged; run the program
    with the chains' keys otherwise, and give its outputs to `join_instances`."""
    n_inst = int(np.shape(keys)[0])
    groups = 1 if block_size != 1 else chain_groups(
        n_inst, shape.num_chains, n_devices, instance_data_bytes=instance_data_bytes(data, n_inst, data_batched))
    if groups == 1:
        return 1, (params, data, keys, settings), shape
    inputs = split_instances(params, data, keys, settings, groups=groups, num_chains=shape.num_chains,
                             data_batched=data_batched)
    return groups, inputs, shape._replace(num_chains=shape.num_chains // groups)


def split_instances(params: PyTree, data: PyTree, keys: jax.Array, settings: PyTree, *, groups: int,
                    num_chains: int, data_batched: bool) -> tuple[PyTree, PyTree, jax.Array, PyTree]:
    """(params, data, chain keys, settings) for `groups` copies of every instance.

    params, settings: leaves `(n_inst, ...)`; data: `(n_inst, n, ...)` when `data_batched`, else
    shared and returned as given; keys: `(n_inst,)` instance keys. Returns the leaves with
    `(n_inst * groups, ...)` and the chain keys `(n_inst * groups, num_chains // groups)`: copy g of
    instance i holds chains `jax.random.split(keys[i], num_chains)[g C / G : (g + 1) C / G]`."""
    params, batched, keys, settings = _split(params, data if data_batched else None, keys, settings,
                                             groups=groups, num_chains=num_chains)
    return params, batched if data_batched else data, keys, settings


@functools.partial(jax.jit, static_argnames=("groups", "num_chains"))
def _split(params, data, keys, settings, *, groups: int, num_chains: int):
    """`split_instances` as one compiled call (one dispatch per call instead of one per leaf)."""
    repeat = lambda tree: jax.tree_util.tree_map(lambda leaf: jnp.repeat(leaf, groups, axis=0), tree)
    chain_keys = jax.vmap(lambda k: jax.random.split(k, num_chains))(keys)
    chain_keys = chain_keys.reshape((keys.shape[0] * groups, num_chains // groups) + chain_keys.shape[2:])
    return repeat(params), repeat(data), chain_keys, repeat(settings)


def join_instances(out: dict[str, np.ndarray], groups: int) -> dict[str, np.ndarray]:
    """The program's outputs for `groups` copies of every instance back on the instances:
    `init_loss` `(n_inst * groups,)` -> `(n_inst,)` (every copy computed the same value), every
    per-chain output `(n_inst * groups, num_chains // groups, ...)` -> `(n_inst, num_chains, ...)`.
    `groups` 1: `out` as it is."""
    if groups == 1:
        return out
    joined = {}
    for name, value in out.items():
        value = np.asarray(value)
        if name == "init_loss":
            joined[name] = value[::groups]
        else:
            n, per_group = value.shape[:2]
            joined[name] = value.reshape((n // groups, groups * per_group) + value.shape[2:])
    return joined
