"""Running sums along a chain that keep their digits over many millions of steps.

A plain float32 running sum loses the part of each term below half a unit in the last place
(ulp) of the total. Along an SGLD chain the terms are small and alike (the excess loss
L_B(w_t) - L_B(w*), about lambda / nbeta; an acceptance probability in [0, 1]), so once the
total is large enough every term is rounded the same way: a sum of values in [0, 1] stops
growing at 2^24, and a sum of 32 million excess losses of a deep linear network (nbeta about
8,700, lambda about 5) reads a few percent off. Neumaier's compensated sum carries the rounding
error of every addition in a second float32 and adds it back at the end: the result is within
about one ulp of the total whatever the number of terms, for two additions and a comparison per
term. XLA does not reassociate floating-point arithmetic (no fast-math), so the compensation
survives compilation (tests/test_compensated.py checks it through `jax.jit`).

`CompensatedSum` is a pytree of two arrays of the same shape (a scalar, or one entry per block),
so it can sit in a `lax.scan` carry or an observer's state. `ENABLED = False` (read when a program
is traced) turns every sum back into a plain float32 sum, for the ablation in
`experiments/long_chain_sums.py`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

ENABLED = True


class CompensatedSum(NamedTuple):
    """total + compensation is the running sum; both float32 arrays of one shape."""

    total: jax.Array
    compensation: jax.Array


def zeros(shape: tuple[int, ...] = (), dtype=jnp.float32) -> CompensatedSum:
    """An empty sum of `shape`."""
    return CompensatedSum(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def add(state: CompensatedSum, value: jax.Array) -> CompensatedSum:
    """state + value (elementwise; `value` broadcasts to the state's shape)."""
    total = state.total + value
    if not ENABLED:
        return CompensatedSum(total, state.compensation)
    # the rounding error of total = state.total + value, exactly (Neumaier's branch on the larger term)
    error = jnp.where(jnp.abs(state.total) >= jnp.abs(value), (state.total - total) + value,
                      (value - total) + state.total)
    return CompensatedSum(total, state.compensation + error)


def add_at(state: CompensatedSum, index: jax.Array, value: jax.Array) -> CompensatedSum:
    """Add `value` to entry `index` of a 1-d sum (the other entries unchanged)."""
    entry = add(CompensatedSum(state.total[index], state.compensation[index]), value)
    return CompensatedSum(state.total.at[index].set(entry.total),
                          state.compensation.at[index].set(entry.compensation))


def value(state: CompensatedSum) -> jax.Array:
    """The sum, rounded once."""
    return state.total + state.compensation
