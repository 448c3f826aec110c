"""Memory checks before a run starts: an estimate of what a run needs, against what is free.

A grid of a million instances, a batch of 1e11 samples or a 100000 x 100000 model does not
fit anywhere; without a check it dies minutes later in an allocation traceback, a C++
abort or the out-of-memory killer with no message. `require_memory` turns that into one
line before any compute:

    require_memory(train_bytes(config), "training this grid", "fewer instances or a smaller --batch-size")

The estimates count the arrays a run holds at its peak (float32, 4 bytes a number) with
the copies the programs make (inputs, outputs, optimiser state, one block of per-sample
work); they are meant to be right within a small factor, so that a run they refuse could
not have finished and a run that fits is never refused. The available memory is the
device's free memory on an accelerator, or the host's available memory (and the cgroup
limit, where one is set) on the CPU.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from slt_superposition.errors import InputError

FLOAT = 4  # bytes of a float32
BLOCK = 16  # instances per compiled block (sharding.BLOCK): per-sample work is held for one block


def tree_bytes(tree: Any, skip_axes: int = 0) -> int:
    """Bytes of the arrays of a pytree, each leaf counted over its axes after the first `skip_axes`
    (0: whole leaves; 1 on data `(n, ...)`: one row; 2 on `(instance, n, ...)`: one instance's row)."""
    return sum(int(np.prod(np.shape(leaf)[skip_axes:])) * np.dtype(leaf.dtype).itemsize
               for leaf in jax.tree_util.tree_leaves(tree))


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def host_available_bytes() -> int | None:
    """Memory a new allocation on the host can get now (bytes), or None if unknown."""
    values = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    return min(values) if values else None


def device_available_bytes() -> int | None:
    """Free memory of the default accelerator (bytes); None on the CPU or if unknown."""
    import jax

    device = jax.local_devices()[0]
    if device.platform == "cpu":
        return None
    try:
        stats = device.memory_stats() or {}
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def available_bytes() -> int | None:
    """What a run can use: the device's free memory where there is an accelerator, else the host's."""
    device = device_available_bytes()
    return device if device is not None else host_available_bytes()


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB"


def require_memory(needed: float, what: str, hint: str, *, available: int | None = None) -> None:
    """`InputError` if `needed` bytes exceed the available memory (unknown: no check)."""
    available = available_bytes() if available is None else available
    if available is not None and needed > available:
        raise InputError(f"{what} needs about {gib(needed)} of memory, more than the {gib(available)} available: "
                         f"use {hint}")


def train_bytes(n_instances: int, n_features: int, n_hidden: int, *, batch_size: int, eval_samples: int,
                n_snapshots: int, loss_curve_points: int) -> float:
    """Peak bytes of `toy_models.train.train_grid` on a grid of `n_instances` TMS models.

    Per instance: parameters P = m n + n, held with AdamW's two moments, as inputs and
    outputs of a chunk (x 4), on the host, in snapshots and in the dataset; the importance
    vector and loss curve. Per block of at most 16 instances: a training batch and its
    activations and gradients (about 8 numbers per sample and feature, 2 per hidden unit).
    One evaluation batch of `eval_samples`.
    """
    params = n_hidden * n_features + n_features
    per_instance = params * (3 * 4 + 2 + n_snapshots) + n_features + 3 * loss_curve_points + 32
    block = min(n_instances, BLOCK) * batch_size * (8 * n_features + 2 * n_hidden)
    evaluation = eval_samples * n_features * 3
    return float(FLOAT) * (n_instances * per_instance + block + evaluation)


def llc_bytes(n_instances: int, n_parameters: int, *, n_samples: int, n_features: int, chains: int,
              steps: int, trace_every: int, batch_size: int) -> float:
    """Peak bytes of an LLC estimate over `n_instances` TMS models (`slt-superposition llc`).

    Per instance: its data set (x and the importance rows, n_samples x n_features each,
    twice: host and device), every chain's position, its anchor and gradient, and every
    chain's loss trace (steps / trace_every numbers, in the program and in the dataset).
    Per block of at most 16 instances: one minibatch per chain with its activations.
    """
    trace = chains * -(-steps // trace_every)
    per_instance = 4 * n_samples * n_features + 4 * chains * n_parameters + 3 * trace + 16 * chains
    block = min(n_instances, BLOCK) * chains * batch_size * 8 * n_features
    return float(FLOAT) * (n_instances * per_instance + block)
