"""Keyed, jittable generators of sparse feature data.

Every generator takes an explicit `key` and static sizes and returns
`x: (batch, n_features)` float32. Same key, same numbers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from slt_superposition.random import classic_threefry

GENERATORS = ("sparse_uniform", "high_sparsity_limit", "correlated_pairs", "anticorrelated_pairs")


@classic_threefry
def sparse_uniform(key, batch_size: int, n_features: int, feature_probability) -> jax.Array:
    """Elhage et al.: x_i = 0 with probability S = 1 - p, else U[0, 1], independently.

    `feature_probability` is a scalar or a `(n_features,)` array of per-feature p = 1 - S.
    Returns `(batch_size, n_features)`.

    One uniform u per entry decides both: present iff u < p, and then x = u / p, which is
    U[0, 1) given u < p: the same distribution as separate mask and value draws, at half the
    random-number cost (the dominant cost of training these models on a CPU), but on a coarser
    grid: u is a multiple of 2^-23, so x takes about p 2^23 values (spacing 2^-23 / p: 1.2e-5
    at p = 0.01, 1.2e-3 at p = 1e-4) where a separate draw would take 2^23.
    """
    p = jnp.asarray(feature_probability, jnp.float32)
    u = jax.random.uniform(key, (batch_size, n_features))
    return jnp.where(u < p, u / p, 0.0)


@classic_threefry
def high_sparsity_limit(key, batch_size: int, n_features: int, feature_probability=None) -> jax.Array:
    """Chen et al. 2023: x = mu * e_i, i uniform over the features, mu ~ U[0, 1].

    Exactly one feature is active per sample. `feature_probability` is accepted for a
    uniform signature and ignored. Returns `(batch_size, n_features)`.
    """
    index_key, value_key = jax.random.split(key)
    index = jax.random.randint(index_key, (batch_size,), 0, n_features)
    mu = jax.random.uniform(value_key, (batch_size,))
    return jax.nn.one_hot(index, n_features) * mu[:, None]


def _paired(key, batch_size: int, n_features: int, feature_probability, anti: bool) -> jax.Array:
    if n_features % 2:
        raise ValueError("paired feature generators need an even n_features")
    value_key, pair_key, side_key = jax.random.split(key, 3)
    n_pairs = n_features // 2
    values = jax.random.uniform(value_key, (batch_size, n_pairs, 2))
    pair_active = jax.random.uniform(pair_key, (batch_size, n_pairs)) < feature_probability
    if anti:
        # at most one of the pair: an active pair shows exactly one member, chosen fairly
        first = jax.random.bernoulli(side_key, 0.5, (batch_size, n_pairs))
        mask = jnp.stack([first, ~first], axis=-1) & pair_active[..., None]
    else:
        mask = jnp.broadcast_to(pair_active[..., None], values.shape)
    return jnp.where(mask, values, 0.0).reshape(batch_size, n_features)


@classic_threefry
def correlated_pairs(key, batch_size: int, n_features: int, feature_probability) -> jax.Array:
    """Features come in pairs (0,1), (2,3), ... that are present together (prob. p per pair).

    `feature_probability`: a scalar or one p per pair, `(n_features // 2,)`.
    Returns `(batch_size, n_features)`; `n_features` must be even.
    """
    return _paired(key, batch_size, n_features, feature_probability, anti=False)


@classic_threefry
def anticorrelated_pairs(key, batch_size: int, n_features: int, feature_probability) -> jax.Array:
    """Features come in pairs that are never present together: with probability p a pair
    is active and exactly one of its two members (chosen uniformly) is nonzero, so each
    feature is present with probability p / 2.

    `feature_probability`: a scalar or one p per pair, `(n_features // 2,)`.
    Returns `(batch_size, n_features)`; `n_features` must be even.
    """
    return _paired(key, batch_size, n_features, feature_probability, anti=True)


def get_generator(name: str):
    """The generator function called `name` (one of `GENERATORS`)."""
    if name not in GENERATORS:
        from slt_superposition.errors import InputError

        raise InputError(f"unknown data generator '{name}' (known: {', '.join(GENERATORS)})")
    return globals()[name]
