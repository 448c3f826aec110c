"""One JAX device per CPU core, so that a grid's blocks of instances run side by side.

On a CPU, JAX shows one device, and XLA:CPU runs the loops of one compiled program on one
thread: a grid of instances then uses one core however many the machine has. The grid
programs (`sharding.run_sharded`) already split their blocks of instances over the devices of
a mesh, with the same bits for any device count (the block size never depends on it). So
splitting the CPU into one device per core (``jax_num_cpu_devices``) lets them use every
core without changing a number: `sharding.default_mesh()` spans those devices.

It must happen before JAX starts its backend, that is before the first computation and
before importing any library that computes at import. The console script does it first
(`slt_superposition.entry`; ``SLT_SPLIT_CPU=0`` keeps one device); a script of one's own can
call `split_cpu_into_cores()` right after ``import jax``. Left alone when the user chose
(``JAX_NUM_CPU_DEVICES``, or ``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``) and in
a multi-process run (`slt-superposition launch` gives each process one device; docs/scaling.md).

**Several CPU devices and threads: computations run inline.** XLA's CPU client launches each
device's part of a multi-device program from a pool of max(cores, devices) threads, and that
launch waits while the device already has 32 computations queued; the queued computations
run on the same pool. With asynchronous dispatch one Python thread can queue 32 small
computations on a device while other threads launch multi-device programs: the pool's threads
then all wait on a queue that only they could empty, and the process stops for good (seen in
the flagship, whose models run in threads; tests/multidevice/threaded_launches.py builds the case,
which stalls within seconds without the remedy). So wherever this process will have several CPU
devices, `dispatch_inline_with_several_devices` turns asynchronous dispatch off
(``jax_cpu_enable_async_dispatch``): a one-device computation then runs on the calling thread,
and a thread holds only the multi-device computations it launched and has not read yet (one in
`sharding.run_sharded`), far below 32. Numbers do not change (the same programs run); a thread
waits for its own computations, as it did anyway before reading a result.
"""

from __future__ import annotations

import os
import re

FORCE_FLAG = "xla_force_host_platform_device_count"
ASYNC_DISPATCH = "jax_cpu_enable_async_dispatch"
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
    """Make JAX's CPU backend `count` devices (default: one per core, at most `MAX_DEVICES`), with
    computations dispatched inline where that makes several (`dispatch_inline_with_several_devices`).

    Returns the count set, or None where nothing was changed: the user chose, or JAX's
    backend has already started (then it is too late, and the run keeps its devices).
    """
    import jax
    from jax._src import xla_bridge

    if chosen_by_user() or xla_bridge.backends_are_initialized():
        return None
    count = max(1, min(core_count(), MAX_DEVICES) if count is None else int(count))
    jax.config.update("jax_num_cpu_devices", count)
    dispatch_inline_with_several_devices()
    return count


def planned_device_count(environ=os.environ) -> int:
    """How many CPU devices JAX's backend will make when it starts: ``jax_num_cpu_devices`` (set by
    `split_cpu_into_cores`, or from ``JAX_NUM_CPU_DEVICES``), else ``XLA_FLAGS``' forced count, else 1."""
    from jax._src import xla_bridge

    if xla_bridge.num_cpu_devices.value > 0:
        return int(xla_bridge.num_cpu_devices.value)
    forced = re.search(FORCE_FLAG + r"=(\d+)", environ.get("XLA_FLAGS", ""))
    return int(forced.group(1)) if forced else 1


def dispatch_inline_with_several_devices() -> bool:
    """Turn asynchronous dispatch off when the CPU backend will have several devices and has not
    started (the module doc says why); returns whether it is off now for that reason."""
    import jax
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized() or planned_device_count() < 2:
        return False
    jax.config.update(ASYNC_DISPATCH, False)
    return True
