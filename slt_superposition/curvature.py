"""Curvature at w*: the Hessian spectrum, the quadratic-approximation LLC and a step-size bound.

Near a minimum, L_n(w) ~ L_n(w*) + (1/2) sum_j h_j v_j^2 in the Hessian's eigenbasis. SGLD's
Euler chain on a direction of curvature a = nbeta h + gamma (localization gamma) is an AR(1)
process with stationary variance 1 / (a (1 - eps a / 4)), so each direction contributes

    nbeta h / (2 a (1 - eps a / 4))

to E[nbeta (L_n(w) - L_n(w*))]: 1/2 as eps -> 0 and gamma << nbeta h, less where the
localization dominates, more at large step sizes. `quadratic_llc` sums it over the spectrum;
`step_size_bound` is the largest eps whose predicted discretisation bias, relative to the
eps -> 0 value, is at most `tol` (and which keeps every direction stable, eps a < 4).
Flat directions (h = 0) contribute nothing to the quadratic prediction; at singular points
the LLC exceeds it by what the higher-order directions add, so a measured estimate above
`llc_quadratic` is information about the model, not an error.

The Hessian is dense (`jax.hessian` of the flattened loss on the full data) up to
`MAX_DENSE_PARAMETERS` parameters; beyond, only its top eigenvalue, by power iteration with
Hessian-vector products, and the bound uses that alone (each direction no more curved).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

PyTree = Any
MAX_DENSE_PARAMETERS = 2048
POWER_ITERATIONS = 100


def _flat_loss(loss_fn: Callable, params: PyTree) -> tuple[Callable, jax.Array]:
    w_star, unravel = ravel_pytree(params)
    return lambda w, data: loss_fn(unravel(w), data), w_star


def hessian_eigenvalues(loss_fn: Callable, params: PyTree, data: PyTree) -> jax.Array:
    """Eigenvalues `(d,)` (ascending) of the Hessian of `loss_fn(., data)` at `params`."""
    flat, w = _flat_loss(loss_fn, params)
    H = jax.hessian(flat)(w, data)
    return jnp.linalg.eigvalsh(0.5 * (H + H.T))


def top_hessian_eigenvalue(loss_fn: Callable, params: PyTree, data: PyTree, key,
                           iterations: int = POWER_ITERATIONS) -> jax.Array:
    """The largest-magnitude Hessian eigenvalue by power iteration (Hessian-vector products)."""
    flat, w = _flat_loss(loss_fn, params)
    grad = jax.grad(flat)
    hvp = lambda v: jax.jvp(lambda x: grad(x, data), (w,), (v,))[1]
    v0 = jax.random.normal(key, w.shape, w.dtype)

    def body(_, v):
        u = hvp(v)
        return u / (jnp.linalg.norm(u) + 1e-30)

    v = jax.lax.fori_loop(0, iterations, body, v0 / jnp.linalg.norm(v0))
    return jnp.vdot(v, hvp(v))


def curvature_batched(loss_fn: Callable, params: PyTree, data: PyTree, *, data_batched: bool, key) -> dict:
    """Per instance (leading axis of params, and of data if `data_batched`): `eigenvalues
    (instance, d)` (None when d > MAX_DENSE_PARAMETERS) and `top (instance,)`."""
    d = sum(int(np.prod(np.shape(x)[1:])) for x in jax.tree_util.tree_leaves(params))
    n_inst = np.shape(jax.tree_util.tree_leaves(params)[0])[0]
    keys = jax.random.split(key, n_inst)
    dense = d <= MAX_DENSE_PARAMETERS
    out = np.asarray(_per_instance(loss_fn, dense, data_batched)(params, data, keys), np.float64)
    if dense:
        return {"eigenvalues": out, "top": out[:, -1]}
    return {"eigenvalues": None, "top": out}


@functools.lru_cache(maxsize=32)
def _per_instance(loss_fn: Callable, dense: bool, data_batched: bool) -> Callable:
    """jit(params, data, keys -> per-instance spectrum or top eigenvalue), one instance at a time
    (lax.map: a dense Hessian holds d x n intermediate rows per instance); one function object per
    (loss_fn, kind), so jax.jit's cache compiles it once per shape."""
    one = ((lambda p, x, k: hessian_eigenvalues(loss_fn, p, x)) if dense else
           (lambda p, x, k: top_hessian_eigenvalue(loss_fn, p, x, k)))
    if data_batched:
        return jax.jit(lambda p, x, k: jax.lax.map(lambda a: one(*a), (p, x, k)))
    return jax.jit(lambda p, x, k: jax.lax.map(lambda a: one(a[0], x, a[1]), (p, k)))


def quadratic_llc(eigenvalues, step_size, localization, nbeta) -> np.ndarray:
    """Sum over the spectrum of nbeta h / (2 a (1 - eps a / 4)), a = nbeta h + gamma, h > 0.

    eigenvalues: `(..., d)`; step_size, localization, nbeta: broadcastable to `(...)`.
    Returns `(...)`; NaN where some curved direction is unstable at that step size (eps a >= 4).
    Negative eigenvalues (w* not a minimum) are left out, as flat ones.
    """
    h = np.clip(np.asarray(eigenvalues, np.float64), 0.0, None)
    eps, gamma, nbeta = (np.asarray(v, np.float64)[..., None] for v in (step_size, localization, nbeta))
    with np.errstate(invalid="ignore", over="ignore"):  # NaN spectra (a non-finite Hessian) stay NaN
        return _quadratic_llc(h, eps, gamma, nbeta)


def _quadratic_llc(h, eps, gamma, nbeta) -> np.ndarray:
    a = nbeta * h + gamma
    curved = h > 0
    stable = ~curved | (eps * a < 4)
    safe_a = np.where(curved, a, 1.0)
    factor = 1 - np.where(stable, eps * safe_a, 0) / 4
    terms = np.where(curved, np.where(stable, nbeta * h / (2 * safe_a * factor), np.inf), 0.0)
    total = terms.sum(axis=-1)
    return np.where(np.isfinite(total), total, np.nan)


def step_size_bound(eigenvalues, localization, nbeta, *, tol: float = 0.02, top=None) -> np.ndarray:
    """The largest step size whose quadratic prediction exceeds its eps -> 0 value by at most
    `tol` (relative). eigenvalues `(..., d)`, or None with `top (...)` the largest eigenvalue
    alone (then the bound is eps a_top / 4 <= tol / (1 + tol): that direction's own bias).
    Returns `(...)`."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # NaN spectra stay NaN
        return _step_size_bound(eigenvalues, localization, nbeta, tol, top)


def _step_size_bound(eigenvalues, localization, nbeta, tol, top) -> np.ndarray:
    if eigenvalues is None:
        a_top = np.asarray(nbeta, np.float64) * np.clip(np.asarray(top, np.float64), 0, None) + localization
        return 4 * tol / (1 + tol) / a_top
    h = np.clip(np.asarray(eigenvalues, np.float64), 0.0, None)
    gamma = np.asarray(localization, np.float64)
    nb = np.asarray(nbeta, np.float64)
    base = quadratic_llc(h, 0.0, gamma, nb)
    a_top = nb * h.max(axis=-1) + gamma
    hi = 4 / a_top * (1 - 1e-9)  # stability edge
    lo = np.zeros_like(hi)
    # bisection on the monotone relative bias; 60 halvings reach float64 resolution
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        rel = quadratic_llc(h, mid, gamma, nb) / np.where(base > 0, base, np.nan) - 1
        ok = np.nan_to_num(rel, nan=np.inf) <= tol
        ok = np.where(base > 0, ok, mid * a_top / 4 <= tol / (1 + tol))
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    return lo
