"""A progress bar for SGLD sampling, which runs as one compiled program.

The chain program loops over chunks of steps (`slt_superposition.chain`); when it is built
with progress on, each chunk iteration makes one host call (`jax.pure_callback` with
`vmap_method="expand_dims"`: one call per iteration for a whole vmapped block of instances
and chains, not one per chain). The call returns int32 zeros that the program adds to its
step counter, so it cannot be optimised away and changes no number. On the host the call
advances the bar that `sampling_bar` opened; without an open bar it does nothing.

The bar is `progress.make_bar`'s: redrawn in place on a terminal, a line per redraw in a log.

One sampling bar at a time per process: the host call runs on an XLA thread and knows only its
chunk index, so every program built with progress advances the innermost open bar. Programs
sampled from several threads at once (the flagship's models) must run without it, as they do
(`estimate_llc_batched(..., verbose=False)`); their stages report through host-side bars instead.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from slt_superposition.progress import LineFile, make_bar  # noqa: F401  (LineFile: re-exported for tests)

_lock = threading.Lock()
_active: list = []  # the open bars, innermost last


def _tick(chunk_index):
    """Host side of the per-chunk call: advance the innermost open bar by one chunk iteration."""
    with _lock:
        if _active:
            _active[-1].update(1)
    return np.zeros(np.shape(chunk_index), np.int32)


def chunk_tick(chunk_index):
    """Traced: an int32 zero shaped like `chunk_index` that comes from the host call above.
    Add it to the chunk's step counter (`t + chunk_tick(c)`) to report progress."""
    import jax
    import jax.numpy as jnp

    return jax.pure_callback(_tick, jax.ShapeDtypeStruct(jnp.shape(chunk_index), jnp.int32), chunk_index,
                             vmap_method="expand_dims")


@contextlib.contextmanager
def sampling_bar(total_iterations: int, *, steps_per_iteration: int, desc: str, enabled: bool = True):
    """Open a bar of `total_iterations` chunk iterations (each `steps_per_iteration` SGLD steps) for the program
    calls made inside the `with` block; yields the tqdm bar (or None when disabled)."""
    if not enabled:
        yield None
        return
    bar = make_bar(total_iterations, desc, unit="chunk", postfix=f"{steps_per_iteration} steps per chunk")
    with _lock:
        _active.append(bar)
    try:
        yield bar
    finally:
        with _lock:
            _active.remove(bar)
        bar.close()
