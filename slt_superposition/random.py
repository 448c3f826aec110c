"""Bulk random draws, cheap on a CPU: the classic threefry layout and 32-bit indices.

Used by the SGLD chains (noise, minibatch indices, epoch permutations) and by the data
generators of `toy_models.data`. Every draw takes an explicit key; same key, same numbers.

Why the classic layout: on a CPU the non-partitionable ("classic") threefry layout generates
bits several times faster than the partitionable one (jax's default), and random numbers are
most of the cost of training and sampling these small models (`benchmarks/llc_throughput.py`
and `benchmarks/train_throughput.py` print both layouts side by side). Only bulk draws use it;
key splits keep the global setting. Each chain or instance draws from its own key, so
sharding never splits one draw across devices, and fixing the layout here keeps the numbers
identical under either global setting.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp


def classic_threefry(draw: Callable) -> Callable:
    """Decorator: run `draw` with the classic (non-partitionable) threefry layout."""

    @functools.wraps(draw)
    def wrapped(*args, **kwargs):
        with jax.threefry_partitionable(False):
            return draw(*args, **kwargs)

    return wrapped


@classic_threefry
def standard_normal(key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    """`jax.random.normal(key, shape, dtype)` drawn with the classic threefry layout."""
    return jax.random.normal(key, shape, dtype)


@classic_threefry
def uniform_indices(key: jax.Array, shape: tuple[int, ...], n: int) -> jax.Array:
    """Indices uniform on 0..n-1, `shape` int32, from one uint32 per index.

    For n < 2^16 the index is floor(u n / 2^32) of a uniform 32-bit u (Lemire's multiply-
    high, computed exactly in 16-bit halves), within n / 2^32 of uniform per index, as
    `jax.random.randint` is, from half the random bits (`randint` draws two words per
    index). Larger n falls back to `jax.random.randint`.
    """
    if n >= 2**16:
        return jax.random.randint(key, shape, 0, n)
    u = jax.random.bits(key, shape, jnp.uint32)
    m = jnp.uint32(n)
    high = (u >> 16) * m + (((u & jnp.uint32(0xFFFF)) * m) >> 16)  # < 2^32: no overflow for n < 2^16
    return (high >> 16).astype(jnp.int32)


@classic_threefry
def random_permutations(key: jax.Array, count: int, n: int) -> jax.Array:
    """`count` independent uniformly random permutations of 0..n-1: `(count, n)` int32.

    Sorting random keys (one sort per permutation, not `jax.random.permutation`'s several
    rounds). For n <= 4096 the index rides in the low 12 bits of a single uint32 sort key
    (a plain sort, cheaper on a CPU than a key-value sort); the remaining 20 random
    bits tie for a given pair with probability 2^-20 (ties keep index order), about 0.5 tied
    pairs per permutation at n = 1000, a negligible departure from uniform.
    """
    bits = jax.random.bits(key, (count, n))
    if n <= 4096:
        low = jnp.uint32(4095)
        packed = (bits & ~low) | jnp.arange(n, dtype=jnp.uint32)
        return (jnp.sort(packed, axis=-1) & low).astype(jnp.int32)
    index = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (count, n))
    return jax.lax.sort_key_val(bits, index, dimension=-1, is_stable=False)[1]
