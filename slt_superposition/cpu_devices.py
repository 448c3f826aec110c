"""One JAX device per CPU core, so that a grid's blocks of instances run side by side.

On a CPU, JAX shows one device, and XLA:CPU runs the loops of one compiled program on one
thread: a grid of instances then uses one core however many the machine has. The grid
programs (`sharding.run_sharded`) already split their blocks of instances over the devices of
a mesh, with the same bits for any device count (the block size never depends on it). So
splitting the CPU into one device per core (``jax_num_cpu_devices``) lets them use every
core without changing a number: `sharding.default_mesh()` spans those devices.

It must happen before JAX starts its backend, that is before the first computation and
before importing blackjax (which computes at import). The console script does it first when
``SLT_SPLIT_CPU=1`` (`slt_superposition.entry`; off by default: one quick flagship run of four hung
with two devices, its two model threads each launching programs over both devices); a script of one's own can call `split_cpu_into_cores()` right
after ``import jax``. Left alone when the user chose (``JAX_NUM_CPU_DEVICES``, or
``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``) and in a multi-process run
(`slt-superposition launch` gives each process one device; docs/scaling.md).
"""

from __future__ import annotations

import os

FORCE_FLAG = "xla_force_host_platform_device_count"
MAX_DEVICES = 64


def core_count() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def chosen_by_user(environ=os.environ) -> bool:
    """True when the environment already says how many CPU devices JAX should make."""
    return "JAX_NUM_CPU_DEVICES" in environ or FORCE_FLAG in environ.get("XLA_FLAGS", "")


def split_cpu_into_cores(count: int | None = None) -> int | None:
    """Make JAX's CPU backend `count` devices (default: one per core, at most `MAX_DEVICES`).

    Returns the count set, or None where nothing was changed: the user chose, or JAX's
    backend has already started (then it is too late, and the run keeps its devices).
    """
    import jax
    from jax._src import xla_bridge

    if chosen_by_user() or xla_bridge.backends_are_initialized():
        return None
    count = min(core_count(), MAX_DEVICES) if count is None else int(count)
    jax.config.update("jax_num_cpu_devices", max(1, count))
    return max(1, count)
