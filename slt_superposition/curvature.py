"""Curvature at w* and where chains end: the Hessian spectrum, the quadratic-approximation LLC and a step-size bound.

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

The Hessian is dense (`dense_hessian` of the flattened loss on the full data) up to
`MAX_DENSE_PARAMETERS` parameters; beyond, only its top eigenvalue, by power iteration with
Hessian-vector products, and the bound uses that alone (each direction no more curved).

A bound computed at w* holds where the chain stays near w*. Along flat directions (a deep
network's rescaling symmetries, for one) a long chain can travel to where the loss is more curved
across them, and a step size unbiased at w* is biased there (docs/experiments/dln_validation.md).
`curvature_at_positions` evaluates the spectrum at the chains' final positions and
`predicted_step_bias` the bias it predicts at the run's step size: a check that costs a Hessian per
chain, no chain.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from slt_superposition.memory import tree_bytes

PyTree = Any
MAX_DENSE_PARAMETERS = 2048
POWER_ITERATIONS = 100
# `dense_hessian` on a CPU computes together as many Hessian columns as keep their number times the
# data's bytes within this: the fastest column count or within 15% of it on every shape that
# `benchmarks/hessian_columns.py` measures (TMS 5x2 to 20x5 on 2048 to 16,384 rows, a DLN's compressed rows)
HESSIAN_CACHE_BYTES = 2**21


def _flat_loss(loss_fn: Callable, params: PyTree) -> tuple[Callable, jax.Array]:
    w_star, unravel = ravel_pytree(params)
    return lambda w, data: loss_fn(unravel(w), data), w_star


def hessian_columns(d: int, data: PyTree) -> int:
    """How many Hessian columns `dense_hessian` computes together: on a CPU as many as keep their
    number times the data's bytes within `HESSIAN_CACHE_BYTES` (at least 1, at most d); on an
    accelerator all d."""
    if jax.default_backend() != "cpu":
        return d
    return int(max(1, min(d, HESSIAN_CACHE_BYTES // max(tree_bytes(data), 1))))


def dense_hessian(f: Callable, w: jax.Array, data: PyTree, columns: int | None = None) -> jax.Array:
    """The Hessian `(d, d)` in w of `f(w, data)` at `w: (d,)`, symmetrised, a few columns at a time.

    Each column is a Hessian-vector product with a basis vector (forward over reverse), `columns`
    of them vectorised together (`lax.map`; None: `hessian_columns`). `jax.hessian` pushes all d basis
    vectors through at once, and its intermediates (d copies of every activation of the forward
    pass over the whole data) outgrow a CPU's caches on the flagship's TMS 20x5 at n = 16,384: there
    a few at a time is several times faster, and the memory no longer grows with d
    (`python benchmarks/hessian_columns.py`; docs/benchmarks.md). Same values up to float32 rounding.
    """
    grad = jax.grad(lambda v: f(v, data))
    H = jax.lax.map(lambda v: jax.jvp(grad, (w,), (v,))[1], jnp.eye(w.size, dtype=w.dtype),
                    batch_size=columns or hessian_columns(w.size, data))
    return 0.5 * (H + H.T)


def hessian_matrix(loss_fn: Callable, params: PyTree, data: PyTree) -> jax.Array:
    """The dense Hessian `(d, d)` of `loss_fn(params, data)` in the flattened parameters
    (`jax.flatten_util.ravel_pytree` order), by `dense_hessian`."""
    flat, w = _flat_loss(loss_fn, params)
    return dense_hessian(flat, w, data)


def hessian_eigenvalues(loss_fn: Callable, params: PyTree, data: PyTree) -> jax.Array:
    """Eigenvalues `(d,)` (ascending) of the Hessian of `loss_fn(., data)` at `params`."""
    return jnp.linalg.eigvalsh(hessian_matrix(loss_fn, params, data))


def top_hessian_eigenvalue(loss_fn: Callable, params: PyTree, data: PyTree, key,
                           iterations: int = POWER_ITERATIONS) -> jax.Array:
    """The largest Hessian eigenvalue by power iteration (Hessian-vector products).

    Power iteration finds the eigenvalue of largest magnitude; where that one is negative (a saddle
    whose most negative curvature outweighs the most positive), a second power iteration on the
    shifted Hessian H - lambda I (eigenvalues >= 0, the largest lambda_max - lambda) gives the top."""
    flat, w = _flat_loss(loss_fn, params)
    grad = jax.grad(flat)
    hvp = lambda v: jax.jvp(lambda x: grad(x, data), (w,), (v,))[1]
    v0 = jax.random.normal(key, w.shape, w.dtype)
    v0 = v0 / jnp.linalg.norm(v0)

    def largest_magnitude(shift):
        def body(_, v):
            u = hvp(v) - shift * v
            return u / (jnp.linalg.norm(u) + 1e-30)

        v = jax.lax.fori_loop(0, iterations, body, v0)
        return jnp.vdot(v, hvp(v))

    first = largest_magnitude(jnp.zeros((), w.dtype))
    return jax.lax.cond(first < 0, largest_magnitude, lambda shift: first, first)


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
    return summed_terms(quadratic_terms(eigenvalues, step_size, localization, nbeta))


def quadratic_terms(eigenvalues, step_size, localization, nbeta) -> np.ndarray:
    """Each direction's share of `quadratic_llc`, `(..., d)`: nbeta h / (2 a (1 - eps a / 4)) for
    h > 0, 0 for flat or negative h, inf where the direction is unstable (eps a >= 4), NaN where h is
    NaN (a non-finite Hessian: `quadratic_llc` and `step_size_bound` are then NaN, not a flat reading)."""
    h = np.clip(np.asarray(eigenvalues, np.float64), 0.0, None)
    eps, gamma, nbeta = (np.asarray(v, np.float64)[..., None] for v in (step_size, localization, nbeta))
    with np.errstate(invalid="ignore", over="ignore"):  # NaN spectra (a non-finite Hessian) stay NaN
        a = nbeta * h + gamma
        curved = h > 0
        stable = ~curved | (eps * a < 4)
        safe_a = np.where(curved, a, 1.0)
        factor = 1 - np.where(stable, eps * safe_a, 0) / 4
        terms = np.where(curved, np.where(stable, nbeta * h / (2 * safe_a * factor), np.inf), 0.0)
        return np.where(np.isnan(h), np.nan, terms)  # an unknown eigenvalue is not a flat one


def summed_terms(terms) -> np.ndarray:
    """`(..., d)` per-direction shares -> `(...)` their sum, NaN where one is inf or NaN."""
    total = np.asarray(terms).sum(axis=-1)
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
    return np.where(np.isnan(h).any(axis=-1), np.nan, lo)  # no bound from an unknown spectrum


def predicted_step_bias(eigenvalues, step_size, localization, nbeta, *, top=None) -> np.ndarray:
    """The relative discretisation bias `quadratic_llc(eps) / quadratic_llc(0) - 1` that a spectrum
    `(..., d)` predicts at `step_size`; with eigenvalues None, the top eigenvalue `top (...)` alone:
    its own direction's bias eps a / (4 - eps a), a = nbeta top + gamma (no direction is more curved,
    so the whole estimate's bias is at most that). Returns `(...)`: inf where a direction is
    unstable (eps a >= 4), 0 without curved directions, NaN for a NaN spectrum."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        eps = np.asarray(step_size, np.float64)
        if eigenvalues is None:
            top = np.asarray(top, np.float64)
            x = eps * (np.asarray(nbeta, np.float64) * np.clip(top, 0, None) + localization)
            return np.where(np.isnan(top), np.nan, np.where(x < 4, x / (4 - x), np.inf))
        h = np.asarray(eigenvalues, np.float64)
        base = quadratic_llc(h, 0.0, localization, nbeta)
        value = quadratic_llc(h, eps, localization, nbeta)
        bad = np.isnan(h).any(axis=-1)
        return np.where(bad, np.nan, np.where(base > 0, np.where(np.isnan(value), np.inf, value / base - 1), 0.0))


def curvature_at_positions(loss_fn: Callable, params: PyTree, data: PyTree, positions, *, data_batched: bool,
                           step_size, localization, nbeta, key) -> dict:
    """The curvature where chains ended: per instance and chain, the Hessian's top eigenvalue at each
    position and the discretisation bias `predicted_step_bias` gives there at the run's settings.

    params: leaves `(instance, ...)` (only their structure is used); positions: `(instance, chain, d)`
    flat parameter vectors (`ravel_pytree` order of one instance); step_size, localization, nbeta:
    scalars or `(instance,)`. Returns `top`, `bias`: `(instance, chain)` (NaN at a non-finite position).
    """
    positions = np.asarray(positions)
    n_inst, n_chains = positions.shape[:2]
    _, unravel = ravel_pytree(jax.tree_util.tree_map(lambda x: x[0], params))
    settings = [np.broadcast_to(np.asarray(v, np.float64).reshape(-1), (n_inst,)) for v in (step_size, localization,
                                                                                             nbeta)]
    top, bias = np.full((n_inst, n_chains), np.nan), np.full((n_inst, n_chains), np.nan)
    for c in range(n_chains):
        finite = np.isfinite(positions[:, c]).all(axis=1)
        where = np.where(finite[:, None], positions[:, c], 0.0).astype(positions.dtype)
        at = curvature_batched(loss_fn, jax.vmap(unravel)(jnp.asarray(where)), data, data_batched=data_batched,
                               key=jax.random.fold_in(key, c))
        top[:, c] = np.where(finite, at["top"], np.nan)
        eigenvalues = None if at["eigenvalues"] is None else np.where(finite[:, None], at["eigenvalues"], np.nan)
        bias[:, c] = predicted_step_bias(eigenvalues, *settings, top=top[:, c])
    return {"top": top, "bias": bias}
