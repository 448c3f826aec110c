"""Sums over a long axis, rewritten for XLA:CPU, for the SGLD chains' loss gradient.

A loss gradient sums over the minibatch rows: the loss itself (a sum over rows of a sum over
features, which XLA merges into one reduction over both), and every parameter that is broadcast
over rows in the forward pass (the transpose of a broadcast is a sum). XLA:CPU turns a reduction
over an axis longer than 32 into a windowed reduction whose loops run one output element at a
time, so a sum over both a row axis and a short minor axis, or a sum whose outputs are a
(2, 6) block of an outer product, runs at a few percent of what the same arithmetic costs
elementwise. `python benchmarks/chain_profile.py` prints the chain program with and without this
rewrite, side by side.

    fast = long_sums_rewritten(jax.value_and_grad(loss))   # same signature, same values up to rounding

How: the function is traced to a jaxpr at the shapes it is called with (after differentiation,
so the gradient's sums are in it), and every floating `reduce_sum` with a reduced axis longer
than `LONG` is evaluated as

- `split`: when the kept axes (the outputs) are at least two, the sum is taken separately for each
  entry of the shortest kept axis (if that axis has at most `SPLIT` entries) and the results
  stacked: (rows, 2, 6) -> two sums over (rows, 6), each fused with the product that feeds it;
- otherwise an `optimization_barrier` on the summed array, so that XLA neither merges the sum
  with another sum (the loss: over features, then over rows) nor fuses it into a windowed
  reduction that recomputes its input.

Every other primitive is bound unchanged (nested jits inlined), so `vmap` of the result works as for
the original. The additions run in another order than XLA's, so results differ in the last bits
(tests/test_long_sums.py checks values agree to float32 rounding). The rewrite depends only on
shapes, so a program is the same on every device count.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from slt_superposition.small_dots import rewritten

LONG = 32  # XLA:CPU splits reductions over axes longer than this into windowed reductions
SPLIT = 8  # a kept axis with at most this many entries is split into separate sums


def long_sum(x: jax.Array, axes: tuple[int, ...], *, barrier: bool = True) -> jax.Array:
    """`jnp.sum(x, axes)`, written so that XLA:CPU runs it fast (see the module docstring).

    x: any floating array; axes: the summed axes. Returns the array of the kept axes."""
    axes = tuple(sorted(axes))
    kept = [a for a in range(x.ndim) if a not in axes]
    if len(kept) >= 2:
        a = min(kept, key=lambda k: x.shape[k])
        if x.shape[a] <= SPLIT:
            rest = tuple(b - (b > a) for b in axes)
            parts = [long_sum(jax.lax.index_in_dim(x, j, axis=a, keepdims=False), rest, barrier=False)
                     for j in range(x.shape[a])]
            return jnp.stack(parts, axis=kept.index(a))
    if barrier:
        x = jax.lax.optimization_barrier(x)
    return jnp.sum(x, axis=axes)


def _rule(eqn, values):
    if eqn.primitive.name != "reduce_sum":
        return None
    aval = eqn.invars[0].aval
    axes = tuple(eqn.params["axes"])
    if not jnp.issubdtype(aval.dtype, jnp.floating) or not any(aval.shape[a] > LONG for a in axes):
        return None
    return [long_sum(values[0], axes).astype(eqn.outvars[0].aval.dtype)]


def long_sums_rewritten(fun: Callable) -> Callable:
    """`fun` (pytrees in, pytree out) with its sums over long axes written as `long_sum`.

    Apply it after differentiation (to `jax.value_and_grad(loss)`), not before: the gradient's sums
    only appear then. The result is not meant to be differentiated again."""
    return rewritten(fun, _rule)
