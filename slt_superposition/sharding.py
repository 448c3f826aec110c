"""Sharding grids of instances across devices: one Mesh axis, ``instance``.

Training grids and batched LLC estimates are pytrees whose leaves all carry a leading
instance axis (``W: (instance, hidden, feature)``). Every instance is computed
independently (``vmap``), so the same function runs unchanged on inputs whose instance
axis is split across devices: each device computes its own instances. The single-device
path is the same code (a mesh of one device).

    mesh = instance_mesh()                              # all devices, axis "instance"
    sharded, n = shard_instances(params, mesh)          # pads to a multiple of the device count
    out = unshard(jitted_fn(sharded, replicate(data, mesh)), n)   # numpy, padding removed

or, with bits independent of the device count (see below), in one call:
``run_sharded(vmapped_fn, params, data, mesh=mesh)``.

Bit for bit, by construction. XLA compiles an op for the shape it sees and, for a
vmapped op, may vectorize across instances, computing a remainder that fills no vector by
other code whose rounding differs in the last bit (seen on the CPU: 2e-7 on a loss, 2e-6
on an LLC when the same instances were split 4 ways instead of 1). So an instance's bits
can depend on how many instances share its compiled block. `run_sharded` therefore fixes
the block: the instance axis is cut into blocks of `block` instances (default
`balanced_block(n)`: at most `BLOCK` = 16, a function of the instance count only; the chains and
training pass `block_for(n, working set)`, larger blocks on an accelerator); each device loops (`lax.map`) over its own blocks inside `shard_map`, running
the same compiled block body whatever the device count. One device is the same code with
every block local: `train_grid(..., mesh=None)` and `estimate_llc_batched(..., mesh=None)`
run on `default_mesh()` (the CPU's devices, one per core where the console script split it,
`cpu_devices`; else the default device), and their bits equal those of any mesh.
tests/test_sharding.py checks 4 devices against 1 for a toy function, `train_grid` and
`estimate_llc_batched`.

Padding: the instance axis is padded to a multiple of block x device count by repeating
the last instance (never zeros, which could make a loss or an SVD degenerate) and
the copies are dropped by `unshard`. Padded instances cost compute, nothing else.

Several processes (one per host or per GPU; docs/scaling.md): call
`maybe_initialize_distributed()` first thing in the program (the `train`, `llc` and
`reproduce` commands do). It calls ``jax.distributed.initialize`` when its arguments (the
commands' ``--coordinator``, ``--num-processes``, ``--process-id``) or the environment ask
for it:

* ``JAX_COORDINATOR_ADDRESS=host:port``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``
  (and optionally ``JAX_LOCAL_DEVICE_IDS``): explicit set-up, as `slt-superposition launch`
  gives each local process, or
* ``SLT_DISTRIBUTED=1``: let JAX detect the cluster (Slurm, Open MPI, TPU pods).

Then ``jax.devices()`` lists every process's devices, `instance_mesh()` spans them, and
every process must call the same functions with the same (full) inputs; `unshard` gathers
the result onto every process. `mesh=None` (`default_mesh`) means the mesh of every
process's first device there, since a program on one process's device alone cannot run
under several controllers; the block construction keeps the bits those of one device.
Process 0 writes the results (`io.is_writer`); `broadcast_json` and `broadcast_bytes`
hand its decisions and files to the others.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from slt_superposition.errors import InputError, describe_failure

AXIS = "instance"
BLOCK = 16  # instances per compiled block in run_sharded; see module doc
BLOCK_BYTES = 1 << 30  # on an accelerator: a block's estimated working set (`block_for`)
MAX_BLOCK = 4096


def maybe_initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
    """Call ``jax.distributed.initialize`` if the arguments or the environment ask for it.

    `coordinator` ("host:port" of process 0), `num_processes` and `process_id` win over
    ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; without an
    address, ``SLT_DISTRIBUTED=1`` lets JAX detect the cluster (Slurm, Open MPI, TPU).
    Returns True if this is (now) a multi-process run, False for a single process. Must
    run before any other JAX computation; a second call is a no-op.
    """
    if _distributed_is_initialized():
        return True
    address = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address:
        try:
            count = int(num_processes if num_processes is not None else os.environ["JAX_NUM_PROCESSES"])
            index = int(process_id if process_id is not None else os.environ["JAX_PROCESS_ID"])
        except (KeyError, ValueError):
            raise InputError(
                "with a coordinator address (--coordinator or JAX_COORDINATOR_ADDRESS), the number of processes "
                "and this process's id (--num-processes/--process-id or JAX_NUM_PROCESSES/JAX_PROCESS_ID) "
                "must be integers"
            ) from None
        if not (count >= 1 and 0 <= index < count):
            raise InputError(f"process id must be in [0, {count}) for {count} processes, got {index}")
        if count == 1:
            return False
        _forget_import_time_backend()
        try:
            jax.distributed.initialize(address, num_processes=count, process_id=index)
        except Exception as err:  # noqa: BLE001 - connection failures come in many types
            raise InputError(f"jax.distributed.initialize({address}, process {index} of {count}) failed: "
                             f"{describe_failure(err)}") from None
        return True
    if num_processes is not None or process_id is not None:
        raise InputError("--num-processes and --process-id need --coordinator (or JAX_COORDINATOR_ADDRESS)")
    if os.environ.get("SLT_DISTRIBUTED", "") not in ("", "0"):
        _forget_import_time_backend()
        jax.distributed.initialize()  # cluster auto-detection (Slurm, Open MPI, TPU)
        return jax.process_count() > 1
    return False


def _forget_import_time_backend() -> None:
    """Drop a backend that an import started (a library that builds a constant array at import time,
    as blackjax, which this package used to import, does) so that ``jax.distributed.initialize`` may
    run; nothing of ours has computed yet.
    Uses the public ``jax.extend.backend.clear_backends``."""
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        import jax.extend.backend

        jax.extend.backend.clear_backends()


def _distributed_is_initialized() -> bool:
    try:
        return jax.distributed.is_initialized()
    except AttributeError:  # older jax
        from jax._src import distributed

        return distributed.global_state.client is not None


def is_multiprocess() -> bool:
    """True in a run of several JAX processes (after `maybe_initialize_distributed`)."""
    return jax.process_count() > 1


def broadcast_bytes(content: bytes | None) -> bytes:
    """Process 0's `content` on every process (the others pass None). One process: as is."""
    if not is_multiprocess():
        return content
    from jax.experimental import multihost_utils

    source = jax.process_index() == 0
    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(content) if source else 0)))
    buffer = np.frombuffer(content, np.uint8) if source else np.zeros(size, np.uint8)
    return np.asarray(multihost_utils.broadcast_one_to_all(buffer)).tobytes()


def broadcast_json(value):
    """Process 0's JSON-able `value` on every process. One process: `value` as is."""
    if not is_multiprocess():
        return value
    return json.loads(broadcast_bytes(json.dumps(value).encode() if jax.process_index() == 0 else None))


def instance_mesh(devices=None) -> Mesh:
    """A 1-D `Mesh` with axis ``"instance"`` over `devices` (default: every device, all hosts)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise InputError("instance_mesh needs at least one device")
    return Mesh(np.array(devices), (AXIS,))


def instance_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the mesh, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def _n_instances(tree) -> int:
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise InputError("shard_instances got an empty pytree")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if None in sizes or len(sizes) != 1:
        raise InputError(
            f"every leaf must share one leading instance axis; found leading sizes {sorted(map(str, sizes))}"
        )
    return sizes.pop()


def pad_instances(tree, multiple: int) -> tuple[Any, int]:
    """Repeat the last instance so the leading axis is a multiple of `multiple`.

    Returns ``(padded_tree, n_instances)``.
    """
    n = _n_instances(tree)
    pad = (-n) % multiple

    def _pad(leaf):
        # jax arrays stay jax arrays (typed PRNG keys have no numpy form)
        xp = jax.numpy if isinstance(leaf, jax.Array) else np
        leaf = xp.asarray(leaf)
        if pad == 0:
            return leaf
        return xp.concatenate([leaf, xp.repeat(leaf[-1:], pad, axis=0)], axis=0)

    return jax.tree_util.tree_map(_pad, tree), n


def _put(leaf, sharding: NamedSharding) -> jax.Array:
    if jax.process_count() == 1:
        return jax.device_put(leaf, sharding)
    # Several processes: each holds the full array and supplies the shards its devices own.
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        data = np.asarray(jax.random.key_data(leaf))  # typed keys: place their data, wrap again
        placed = jax.make_array_from_callback(data.shape, sharding, lambda index: data[index])
        return jax.random.wrap_key_data(placed, impl=jax.random.key_impl(leaf))
    leaf = np.asarray(leaf)
    return jax.make_array_from_callback(leaf.shape, sharding, lambda index: leaf[index])


def _put_tree(tree, sharding: NamedSharding):
    """Every leaf of `tree` placed with `sharding`: in a single process in one `jax.device_put`
    call; on CPU devices from host arrays (typed keys as their key data, wrapped again), since
    reading a jax array back to the host costs less there than resharding it device to device
    (about 1.6 ms per call for a one-instance LLC, docs/benchmarks.md); leaf by leaf (`_put`)
    across processes."""
    if jax.process_count() > 1:
        return jax.tree_util.tree_map(lambda leaf: _put(leaf, sharding), tree)
    if sharding.mesh.devices.flat[0].platform != "cpu":
        return jax.device_put(tree, sharding)
    is_key = lambda leaf: isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
    host = jax.tree_util.tree_map(lambda leaf: np.asarray(jax.random.key_data(leaf) if is_key(leaf) else leaf), tree)
    placed = jax.device_put(host, sharding)
    return jax.tree_util.tree_map(lambda leaf, put: jax.random.wrap_key_data(put, impl=jax.random.key_impl(leaf))
                                  if is_key(leaf) else put, tree, placed)


def shard_instances(tree, mesh: Mesh, *, multiple: int = 1) -> tuple[Any, int]:
    """Place `tree` (leaves with a leading instance axis) on `mesh`, split along that axis.

    Pads to a multiple of ``multiple * device count``. Returns ``(sharded_tree,
    n_instances)``; pass `n_instances` to `unshard`. Calling a jitted function on the
    result partitions it over the devices (XLA's SPMD partitioner); for bits that do not
    depend on the device count use `run_sharded`.
    """
    padded, n = pad_instances(tree, multiple * mesh.devices.size)
    return _put_tree(padded, instance_sharding(mesh)), n


def replicate(tree, mesh: Mesh):
    """Place `tree` on every device of `mesh` (shared data, importances, keys)."""
    return _put_tree(tree, NamedSharding(mesh, PartitionSpec()))


def unshard(tree, n_instances: int, *, blocked: bool = False):
    """Bring a sharded result back to host numpy arrays and drop the padding instances.

    `blocked`: the leaves are (blocks, block, ...), joined into (instances, ...) on the host.
    Leaves without a leading axis of the padded size are returned whole.
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        tree = multihost_utils.process_allgather(tree, tiled=True)
    tree = jax.tree_util.tree_map(np.asarray, tree)
    if blocked:
        tree = _unblocked(tree)
    return jax.tree_util.tree_map(lambda leaf: leaf[:n_instances] if leaf.ndim else leaf, tree)


def _blocked(tree, block: int):
    return jax.tree_util.tree_map(lambda x: x.reshape((x.shape[0] // block, block) + x.shape[1:]), tree)


def _unblocked(tree):
    return jax.tree_util.tree_map(lambda x: x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:]), tree)


@functools.lru_cache(maxsize=64)
def _block_program(fn: Callable, mesh: Mesh, n_shared: int, compiler_options: tuple = ()) -> Callable:
    """jit(shard_map(each device: lax.map of `fn` over its blocks)), cached per fn and mesh."""

    def local(blocks, *shared):
        return jax.lax.map(lambda one_block: fn(one_block, *shared), blocks)

    specs = (PartitionSpec(AXIS),) + (PartitionSpec(),) * n_shared
    # check_vma=False: fn may scan with carries that mix sharded and replicated values
    program = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(AXIS), check_vma=False)
    return jax.jit(program, compiler_options=dict(compiler_options) or None)


def default_mesh() -> Mesh:
    """The mesh that `mesh=None` means in `train_grid`, `estimate_llc_batched` and the other grid
    programs: every device of this process where they are CPU devices (the cores of this machine,
    split by `cpu_devices`; one device unless split), else the default device alone (several
    accelerators are opted into with an explicit mesh, the commands' ``--all-devices``). The
    blocked program gives the same bits on any of these meshes.

    In a multi-process run: the mesh of every process's first local device (each process
    must own a part of the mesh), which the block construction keeps bit-identical."""
    if is_multiprocess():
        firsts = {}
        for device in jax.devices():
            firsts.setdefault(device.process_index, device)
        return instance_mesh([firsts[p] for p in sorted(firsts)])
    devices = jax.local_devices()
    return instance_mesh(devices if devices[0].platform == "cpu" else devices[:1])


def working_mesh(mesh: Mesh, n_blocks: int) -> Mesh:
    """`mesh` cut to its first `n_blocks` devices in a single process (a device with no block of
    its own would compute padding copies); unchanged when every device gets a block, and in a
    multi-process run, where every process must take part."""
    if is_multiprocess() or mesh.devices.size <= n_blocks:
        return mesh
    return instance_mesh(list(mesh.devices.flat)[:max(1, n_blocks)])


def padded_blocks(n_instances: int, block: int, mesh: Mesh) -> int:
    """How many blocks of `block` instances `run_sharded` computes on `mesh`, padding included."""
    n_blocks = -(-n_instances // block)
    devices = working_mesh(mesh, n_blocks).devices.size
    return -(-n_blocks // devices) * devices


def balanced_block(n_instances: int, block: int = BLOCK) -> int:
    """The block size `run_sharded` uses by default: at most `block`, as even as possible.

    ceil(n / ceil(n / block)): 20 instances run as 2 blocks of 10 (not 16 + 4 padding);
    1 instance as a block of 1. It depends on n only, never on the device count, so the
    bits do not either.
    """
    n_blocks = -(-n_instances // block)
    return -(-n_instances // n_blocks)


def block_for(n_instances: int, bytes_per_instance: int) -> int:
    """Instances per block for a program whose working set is about `bytes_per_instance` each.

    On a CPU: `balanced_block(n_instances)` (at most `BLOCK`), as `run_sharded` uses by default.
    On an accelerator, small blocks leave it waiting on one serial step after another, so a block
    holds as many instances as a working set of `BLOCK_BYTES` allows (at least `BLOCK`, at most
    `MAX_BLOCK`), balanced the same way. The environment variable `SLT_BLOCK_BYTES` replaces
    `BLOCK_BYTES` (0: the CPU rule everywhere). A function of the sizes and the backend only, never
    of the device count, so the bits do not depend on it either.
    """
    text = os.environ.get("SLT_BLOCK_BYTES", str(BLOCK_BYTES))
    if not text.strip().isdigit():
        raise InputError(f"SLT_BLOCK_BYTES must be a whole number of bytes (0: blocks of {BLOCK}), got {text!r}")
    budget = int(text)
    if jax.default_backend() == "cpu" or budget <= 0:
        return balanced_block(n_instances)
    return balanced_block(n_instances, int(min(MAX_BLOCK, max(BLOCK, budget // max(1, int(bytes_per_instance))))))


def run_sharded(fn: Callable, instanced, *shared, mesh: Mesh | None = None, block: int | None = None,
                compiler_options: dict | None = None):
    """``fn(instanced, *shared)`` computed in blocks of `block` instances, split over `mesh`.

    `fn(instanced_block, *shared)` maps a pytree whose leaves carry a leading instance
    axis (of size `block`) to outputs that all carry it too (a vmapped function; jitted or
    not). `shared` arguments (data, step counters, scalars) are replicated on every device.
    `mesh=None` means every device (`instance_mesh()`), cut to as many devices as there are
    blocks (`working_mesh`); `block=None` means `balanced_block(n_instances)`. `compiler_options` are XLA options for this program.
    Returns numpy arrays with the padding removed, the same bits for any device count
    (see module doc). The compiled program is cached per (fn, mesh): pass the same
    function object to reuse it.
    """
    mesh = instance_mesh() if mesh is None else mesh
    n_instances = _n_instances(instanced)
    block = balanced_block(n_instances) if block is None else block
    if not (isinstance(block, int) and block > 0):
        raise InputError(f"block must be a positive integer, got {block!r}")
    mesh = working_mesh(mesh, -(-n_instances // block))
    padded, n = pad_instances(instanced, block * mesh.devices.size)
    # the blocks are joined on the host (unshard): the program stays the one computation over several devices
    sharded = _put_tree(_blocked(padded, block), instance_sharding(mesh))
    options = tuple(sorted((compiler_options or {}).items()))
    out = _block_program(fn, mesh, len(shared), options)(sharded, *replicate(shared, mesh))
    return unshard(out, n, blocked=True)
