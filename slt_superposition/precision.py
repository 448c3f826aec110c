"""Float32 matrix products everywhere, unless the user chose otherwise.

On NVIDIA GPUs since Ampere (A100, H100, H200) JAX computes a float32 `dot` with TensorFloat-32
by default: the inputs are rounded to 10 mantissa bits. The LLC reads nbeta (L(w) - L(w*)),
differences of the loss far below that rounding at the n used here, and L-BFGS's refinement
to a critical point of L_n stalls at the rounding's gradient noise (measured on an H200:
docs/benchmarks.md, "Matmul precision"). Importing this package therefore sets JAX's
`jax_default_matmul_precision` to "highest" (true float32) when it is unset, so the numbers
are the same computation on a CPU and a GPU. A user who set it (the environment variable
JAX_DEFAULT_MATMUL_PRECISION, or `jax.config.update` before the import) keeps their choice. A
CPU computes float32 products in float32 either way.

Importing this module does not import JAX: before JAX is imported, the setting goes into the
environment variable JAX reads when it starts (if unset), so a command's `--help` stays quick.
"""

from __future__ import annotations

import os
import sys

PRECISION = "highest"
ENVIRONMENT_VARIABLE = "JAX_DEFAULT_MATMUL_PRECISION"


def ensure_float32_matmuls() -> str:
    """Make `jax_default_matmul_precision` `PRECISION` if nobody set it; returns the setting in
    force (or, before JAX is imported, the one it will start with)."""
    if "jax" not in sys.modules:
        return os.environ.setdefault(ENVIRONMENT_VARIABLE, PRECISION)
    import jax

    if jax.config.jax_default_matmul_precision is None:
        jax.config.update("jax_default_matmul_precision", PRECISION)
    return str(jax.config.jax_default_matmul_precision)


ensure_float32_matmuls()
