"""Deep linear networks (DLN), as in Furman & Lau (2024) and Aoyagi (2024).

    f(x) = W_L ... W_2 W_1 x (+ biases)     W_l: (H_l, H_{l-1}), widths = (H_0, ..., H_L)

Parameters are a list of weight matrices `[W_1, ..., W_L]`, or with `bias=True` a list of
dicts `[{"W": (H_l, H_{l-1}), "b": (H_l,)}, ...]`. Data: x ~ U[-10, 10]^{H_0}, y = f(x; w*);
the loss is the MSE averaged over the batch and the output coordinates.

True parameters (`dln_true_params`): "singular" (every layer has rank r, W_l = A_l B_l with
inner dimension r: as singular as the rank allows, so the local learning coefficient equals
Aoyagi's global one) or "less_singular" (one layer of rank r, the others generic, full rank:
its local coefficient can be larger).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slt_superposition.errors import require

TRUE_PARAM_KINDS = ("singular", "less_singular")


def _check_widths(widths) -> tuple[int, ...]:
    widths = tuple(int(h) for h in widths)
    require(len(widths) >= 2, f"a DLN needs at least 2 widths (input, output), got {widths}")
    require(all(h >= 1 for h in widths), f"DLN widths must be positive, got {widths}")
    return widths


def dln_init_params(key, widths, *, bias: bool = False, scale: float = 1.0) -> list:
    """Random DLN parameters: W_l ~ N(0, scale^2 / H_{l-1}), zero biases.

    Returns `[W_1 (H_1, H_0), ..., W_L (H_L, H_{L-1})]`, or a list of {"W", "b"} dicts.
    """
    widths = _check_widths(widths)
    keys = jax.random.split(key, len(widths) - 1)
    params = []
    for k, (fan_in, fan_out) in zip(keys, zip(widths[:-1], widths[1:])):
        W = scale * jax.random.normal(k, (fan_out, fan_in), jnp.float32) / jnp.sqrt(fan_in)
        params.append({"W": W, "b": jnp.zeros((fan_out,), jnp.float32)} if bias else W)
    return params


def dln_forward(params, x: jax.Array) -> jax.Array:
    """`x: (batch, H_0)` -> `(batch, H_L)`; params as from `dln_init_params`."""
    h = x
    for layer in params:
        if isinstance(layer, dict):
            h = h @ layer["W"].T + layer["b"]
        else:
            h = h @ layer.T
    return h


def dln_loss(params, batch) -> jax.Array:
    """MSE averaged over batch and output coordinates; `batch = (x (n, H_0), y (n, H_L))`."""
    x, y = batch
    return jnp.mean((dln_forward(params, x) - y) ** 2)


def dln_end_to_end(params) -> jax.Array:
    """The end-to-end matrix W_L ... W_1: `(H_L, H_0)` (biases ignored)."""
    mats = [layer["W"] if isinstance(layer, dict) else layer for layer in params]
    out = mats[0]
    for W in mats[1:]:
        out = W @ out
    return out


def _low_rank(key, shape, rank: int) -> jax.Array:
    """A (out, in) matrix A B with A: (out, rank), B: (rank, in), Gaussian factors scaled so
    that entries are O(1 / sqrt(in)) like a generic layer."""
    out_dim, in_dim = shape
    if rank == 0:
        return jnp.zeros(shape, jnp.float32)
    ka, kb = jax.random.split(key)
    A = jax.random.normal(ka, (out_dim, rank), jnp.float32) / jnp.sqrt(rank)
    B = jax.random.normal(kb, (rank, in_dim), jnp.float32) / jnp.sqrt(in_dim)
    return A @ B


def dln_true_params(key, widths, rank: int, kind: str = "singular") -> list[jax.Array]:
    """A true parameter w* (weights only) whose end-to-end matrix has rank `rank`.

    kind "singular": every layer W_l = A_l B_l with inner dimension r (each of rank r).
    kind "less_singular": the layer at list index L // 2 (the middle one for odd L; W_2 for L = 2)
    has rank r, the others are generic
    Gaussian (full rank). Factors are N(0, 1/fan) so that entries are O(1/sqrt(fan_in)).
    Returns `[W_1 (H_1, H_0), ..., W_L (H_L, H_{L-1})]` float32.
    """
    widths = _check_widths(widths)
    require(kind in TRUE_PARAM_KINDS, f"unknown true-parameter kind '{kind}' (known: {', '.join(TRUE_PARAM_KINDS)})")
    require(0 <= rank <= min(widths), f"rank {rank} must be in [0, min(widths) = {min(widths)}]")
    n_layers = len(widths) - 1
    keys = jax.random.split(key, n_layers)
    reduced = range(n_layers) if kind == "singular" else [n_layers // 2]
    params = []
    for i, k in enumerate(keys):
        shape = (widths[i + 1], widths[i])
        if i in reduced:
            params.append(_low_rank(k, shape, rank))
        else:
            params.append(jax.random.normal(k, shape, jnp.float32) / jnp.sqrt(widths[i]))
    return params


def dln_data(key, params, n: int, *, input_range: float = 10.0) -> tuple[jax.Array, jax.Array]:
    """Furman & Lau data: x ~ U[-input_range, input_range]^{H_0}, y = f(x; params).

    Returns `(x: (n, H_0), y: (n, H_L))` float32.
    """
    require(n >= 1, f"n must be >= 1, got {n}")
    first = params[0]["W"] if isinstance(params[0], dict) else params[0]
    x = jax.random.uniform(key, (n, first.shape[1]), jnp.float32, -input_range, input_range)
    return x, dln_forward(params, x)


def dln_compressed_data(x, y) -> tuple[jax.Array, jax.Array]:
    """The n rows `(x (n, H_0), y (n, H_L))` as k = H_0 + H_L rows with the same `dln_loss` at
    every parameter: full batch at the cost of k rows.

    The loss is the mean over rows and outputs of (x A^T - y)^2 with A the end-to-end matrix, so
    n out L = ||[x y] [A^T; -I]||_F^2, which depends on the data only through [x y]^T [x y]. With
    [x y] = Q U (thin QR in float64, U: (k, k)) that is ||U [A^T; -I]||_F^2, so the rows of
    U sqrt(k / n), split into their first H_0 and last H_L columns, give the same mean (exact in
    float64; float32 rounding as for the n rows). Needs n >= k. Biases are not covered (weights-only
    parameters, as `dln_true_params` gives).
    """
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    require(x64.ndim == 2 and y64.ndim == 2 and len(x64) == len(y64), "dln_compressed_data needs x (n, H_0), y (n, H_L)")
    n, k = len(x64), x64.shape[1] + y64.shape[1]
    require(n >= k, f"dln_compressed_data needs n >= H_0 + H_L = {k} rows, got {n}")
    rows = np.linalg.qr(np.concatenate([x64, y64], axis=1), mode="r") * np.sqrt(k / n)
    return jnp.asarray(rows[:, : x64.shape[1]], jnp.float32), jnp.asarray(rows[:, x64.shape[1]:], jnp.float32)


def matrix_ranks(params, tol: float = 1e-4) -> list[int]:
    """Numerical rank of each layer (singular values above `tol` x the largest)."""
    ranks = []
    for layer in params:
        W = np.asarray(layer["W"] if isinstance(layer, dict) else layer, dtype=np.float64)
        s = np.linalg.svd(W, compute_uv=False)
        ranks.append(int(np.sum(s > tol * max(s.max(), 1e-30))) if s.max() > 0 else 0)
    return ranks


class DeepLinearNetwork(nnx.Module):
    """A DLN as an nnx module; `params` gives the pure-function parameter list."""

    def __init__(self, widths, *, rngs: nnx.Rngs, bias: bool = False):
        self.widths = _check_widths(widths)
        self.bias = bias
        init = dln_init_params(rngs.params(), self.widths, bias=bias)
        self.layers = nnx.List([nnx.Param(layer["W"]) for layer in init] if bias else
                               [nnx.Param(W) for W in init])
        self.biases = nnx.List([nnx.Param(layer["b"]) for layer in init]) if bias else None

    @property
    def params(self) -> list:
        Ws = [p[...] for p in self.layers]
        if self.bias:
            return [{"W": W, "b": b[...]} for W, b in zip(Ws, self.biases)]
        return Ws

    def __call__(self, x: jax.Array) -> jax.Array:
        """`x: (batch, H_0)` -> `(batch, H_L)`."""
        return dln_forward(self.params, x)

    def loss(self, x: jax.Array, y: jax.Array) -> jax.Array:
        return dln_loss(self.params, (x, y))
