"""The dense Hessian two ways, side by side: `jax.hessian` against `curvature.dense_hessian`.

    python benchmarks/hessian_columns.py [--rounds 5]

`jax.hessian` (forward over reverse) pushes all d basis vectors through the gradient at once;
`curvature.dense_hessian` pushes `curvature.hessian_columns(d, data)` at a time (`lax.map` over the
columns; on a CPU as many as keep their number times the data's bytes within
`curvature.HESSIAN_CACHE_BYTES`). Both give the same matrix up to float32 rounding (printed: the largest difference relative to the largest entry).
Shapes: the TMS Hessians the flagship computes (the calibration's and the stored checks' at w* and
at the chains' ends on the LLC's n samples; the weight basis's on `hessian_samples`), plus a deep
linear network on its compressed rows (`toy_models.dln`), each jitted, compiled before timing, and
timed in interleaved rounds (best wall time of each). `--columns` column counts are printed
beside the rule's choice, to show where it sits.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from slt_superposition import curvature
from toy_models.data import sparse_uniform
from toy_models.dln import dln_compressed_data, dln_data, dln_loss, dln_true_params
from toy_models.tms import tms_init_params, tms_loss


def cases():
    """(label, flat loss f(w, data), w, data)."""
    for n, m, rows in ((20, 5, 16_384), (20, 5, 2048), (6, 2, 4096), (6, 2, 16_384), (5, 2, 4096)):
        w, unravel = ravel_pytree(tms_init_params(jax.random.key(0), n, m))
        x = sparse_uniform(jax.random.key(1), rows, n, 0.1)
        yield f"TMS {n}x{m}, n = {rows}", (lambda v, x, unravel=unravel: tms_loss(unravel(v), x)), w, x
    widths = (3, 10, 10, 3)
    params = dln_true_params(jax.random.key(2), widths, 2, "singular")
    data = dln_compressed_data(*dln_data(jax.random.key(3), params, 10_000))
    w, unravel = ravel_pytree(params)
    yield "DLN 3-10-10-3, compressed rows", (lambda v, d, unravel=unravel: dln_loss(unravel(v), d)), w, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--columns", type=int, nargs="*", default=[1, 4, 16], help="other column counts to time")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, jax {jax.__version__}, {jax.default_backend()}; "
          f"HESSIAN_CACHE_BYTES = {curvature.HESSIAN_CACHE_BYTES}")
    for label, f, w, data in cases():
        chosen = curvature.hessian_columns(w.size, data)
        shipped = f"dense_hessian ({chosen} column{'s' if chosen > 1 else ''})"
        forms = {
            "jax.hessian": jax.jit(lambda w, data, f=f: (lambda H: 0.5 * (H + H.T))(jax.hessian(f)(w, data))),
            shipped: jax.jit(lambda w, data, f=f: curvature.dense_hessian(f, w, data)),
            **{f"{b} columns": jax.jit(lambda w, data, f=f, b=b: curvature.dense_hessian(f, w, data, b))
               for b in args.columns if b != chosen and b < w.size},
        }
        reference = np.asarray(forms["jax.hessian"](w, data))
        scale = np.abs(reference).max()
        diff = max(float(np.abs(np.asarray(g(w, data)) - reference).max() / scale) for g in forms.values())
        best = dict.fromkeys(forms, float("inf"))
        for _ in range(args.rounds):
            for name, g in forms.items():
                start = time.perf_counter()
                jax.block_until_ready(g(w, data))
                best[name] = min(best[name], time.perf_counter() - start)
        print(f"{label} (d = {w.size}): " + "; ".join(f"{k} {v * 1e3:.1f} ms" for k, v in best.items())
              + f"; ratio jax.hessian / dense_hessian {best['jax.hessian'] / best[shipped]:.2f}x"
              + f"; largest difference {diff:.1e} of the largest entry", flush=True)


if __name__ == "__main__":
    main()
