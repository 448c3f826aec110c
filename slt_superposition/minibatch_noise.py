"""The minibatch's share of an LLC estimate, predicted on the quadratic approximation from the
rows' gradients at w*.

With i.i.d. minibatch indices (`SGLDConfig.sampling="replacement"`, the default) a step's
gradient is grad L_B(w) = grad L_n(w) + e_B. Near w* the error e_B is the spread of the rows'
own gradients there: mean 0 and covariance C / B, with C the covariance over the n rows of
grad l_j(w*) (l_j the loss of row j; `loss_fn` must be the mean of its rows' losses and take a
batch of one row, which the minibatch chains require too: `llc` refuses any other loss before a
chain runs). On L_n's quadratic approximation, Hessian H = V diag(h) V^T, the chain

    u' = (I - eps K / 2) u - (eps nbeta / 2) e_B + sqrt(eps) xi,   K = nbeta H + gamma I,

is linear with step noise of covariance eps I + (eps nbeta / 2)^2 C / B, independent of u. Its
stationary covariance solves the discrete Lyapunov equation, and the estimate's expectation
nbeta tr(H Sigma) / 2 (the minibatch B_t of step t is independent of w_t, so E[L_B(w_t) -
L_B(w*)] = E[L_n(w_t) - L_n(w*)]) needs only its diagonal in H's eigenbasis:

    sum_i  nbeta h_i / (2 a_i (1 - eps a_i / 4))  *  (1 + eps nbeta^2 c_i / (4 B)),

a_i = nbeta h_i + gamma, c_i = v_i^T C v_i. The first factor is full batch's discretised
prediction (`curvature.quadratic_llc`); the second, the minibatch's, grows linearly in eps / B.
So the minibatch bias relative to full batch is a weighted mean of eps nbeta^2 c_i / (4 B): a
number from one Hessian and one pass of per-row gradients, no chain.

What it leaves out: the rows' Hessians also differ (noise that grows with |u|, second order near
w*), everything beyond the quadratic approximation (flat and singular directions), and
"epoch" sampling, whose successive minibatches are not independent.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from slt_superposition.curvature import (MAX_DENSE_PARAMETERS, curvature_batched, dense_hessian, quadratic_terms,
                                        summed_terms)
from slt_superposition.errors import require

PyTree = Any
ROW_CHUNK = 4096  # rows whose gradients are computed together


class NoiseSpectrum(NamedTuple):
    """The Hessian of L_n at w* and the rows' gradient spread, in the Hessian's eigenbasis.

    eigenvalues:        `(d,)` ascending, h_i.
    gradient_variance:  `(d,)` c_i = v_i^T C v_i, the variance over the rows of the row gradients'
                        component along eigenvector i.
    """

    eigenvalues: np.ndarray
    gradient_variance: np.ndarray


def _one_instance(loss_fn: Callable, params: PyTree, data: PyTree, chunk: int) -> tuple[jax.Array, jax.Array]:
    """Traced, one instance: H's eigenvalues `(d,)` (`jnp.linalg.eigvalsh`, as
    `curvature.hessian_eigenvalues`) and the rows' gradient variance along its eigenvectors `(d,)`,
    the rows taken `chunk` at a time (a running sum: memory `chunk x d`)."""
    w, unravel = ravel_pytree(params)
    flat = lambda v, rows: loss_fn(unravel(v), rows)
    H = dense_hessian(flat, w, data)
    V = jnp.linalg.eigh(H)[1]
    n = jax.tree_util.tree_leaves(data)[0].shape[0]
    chunk = min(chunk, n)
    n_chunks = -(-n // chunk)
    one_row = lambda row: jax.grad(flat)(w, jax.tree_util.tree_map(lambda a: a[None], row)) @ V

    def add(sums, c):
        index = c * chunk + jnp.arange(chunk)
        valid = (index < n)[:, None]
        rows = jax.tree_util.tree_map(lambda a: jnp.take(a, jnp.minimum(index, n - 1), axis=0), data)
        P = jnp.where(valid, jax.vmap(one_row)(rows), 0.0)
        return (sums[0] + P.sum(axis=0), sums[1] + (P ** 2).sum(axis=0)), None

    zeros = jnp.zeros_like(w)
    (total, squares), _ = jax.lax.scan(add, (zeros, zeros), jnp.arange(n_chunks))
    mean = total / n
    return jnp.linalg.eigvalsh(H), jnp.maximum(squares / n - mean ** 2, 0.0)


@functools.lru_cache(maxsize=16)
def _batched(loss_fn: Callable, data_batched: bool, chunk: int) -> Callable:
    """jit(params, data -> (eigenvalues, gradient_variance), each `(instance, d)`), one instance at a
    time (lax.map: a dense Hessian holds d x n intermediates per instance)."""
    one = lambda p, x: _one_instance(loss_fn, p, x, chunk)
    if data_batched:
        return jax.jit(lambda p, x: jax.lax.map(lambda a: one(*a), (p, x)))
    return jax.jit(lambda p, x: jax.lax.map(lambda a: one(a, x), p))


def noise_spectrum_batched(loss_fn: Callable, params: PyTree, data: PyTree, *, data_batched: bool,
                           chunk: int = ROW_CHUNK) -> NoiseSpectrum:
    """`noise_spectrum` for every instance (leading axis of params, and of data if `data_batched`),
    in one compiled program: a `NoiseSpectrum` of `(instance, d)` arrays."""
    h, c = _batched(loss_fn, data_batched, chunk)(params, data)
    return NoiseSpectrum(np.asarray(h, np.float64), np.asarray(c, np.float64))


def curvature_with_noise(loss_fn: Callable, params: PyTree, data: PyTree, *, data_batched: bool, key) -> dict:
    """`curvature.curvature_batched`'s dict plus `gradient_variance (instance, d)` (None beyond
    `MAX_DENSE_PARAMETERS`), from one Hessian per instance: for the checks and the calibration of
    minibatch chains, which need both."""
    d = sum(int(np.prod(np.shape(x)[1:])) for x in jax.tree_util.tree_leaves(params))
    if d > MAX_DENSE_PARAMETERS:
        return {**curvature_batched(loss_fn, params, data, data_batched=data_batched, key=key),
                "gradient_variance": None}
    spectrum = noise_spectrum_batched(loss_fn, params, data, data_batched=data_batched)
    return {"eigenvalues": spectrum.eigenvalues, "top": spectrum.eigenvalues[:, -1],
            "gradient_variance": spectrum.gradient_variance}


def noise_spectrum(loss_fn: Callable, params: PyTree, data: PyTree, chunk: int = ROW_CHUNK) -> NoiseSpectrum:
    """H's eigenvalues at `params` and the rows' gradient variance along each eigenvector, `(d,)` each
    (one instance; data leaves `(n, ...)`): `noise_spectrum_batched` of a one-instance stack. A dense
    Hessian: for models of up to a few thousand parameters."""
    stacked = jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None], params)
    h, c = noise_spectrum_batched(loss_fn, stacked, data, data_batched=False, chunk=chunk)
    return NoiseSpectrum(h[0], c[0])


def minibatch_factors(gradient_variance, step_size, nbeta, batch_size) -> np.ndarray:
    """Each direction's minibatch factor 1 + eps nbeta^2 c_i / (4 B), `(..., d)`; 1 for full batch
    (`batch_size` None)."""
    c = np.asarray(gradient_variance, np.float64)
    if batch_size is None:
        return np.ones_like(c)
    eps, nbeta, B = (np.asarray(v, np.float64)[..., None] for v in (step_size, nbeta, batch_size))
    require(np.all(B >= 1), f"batch_size must be a positive whole number, not {batch_size}")
    return 1 + eps * nbeta ** 2 * c / (4 * B)


def quadratic_llc_minibatch(spectrum: NoiseSpectrum, step_size, localization, nbeta, batch_size) -> np.ndarray:
    """E[lambda_hat] of SGLD with i.i.d. minibatches of `batch_size` (None: full batch) on the quadratic
    approximation: `curvature.quadratic_llc`'s terms times `minibatch_factors`. Settings broadcast
    over the spectrum's leading axes; NaN where a direction is unstable."""
    terms = quadratic_terms(spectrum.eigenvalues, step_size, localization, nbeta)
    return summed_terms(terms * minibatch_factors(spectrum.gradient_variance, step_size, nbeta, batch_size))


def predicted_batch_bias(spectrum: NoiseSpectrum, step_size, localization, nbeta, batch_size) -> np.ndarray:
    """The minibatch's relative bias against full batch at the same step size,
    `quadratic_llc_minibatch(B) / quadratic_llc_minibatch(None) - 1`; 0 without curved directions."""
    full = quadratic_llc_minibatch(spectrum, step_size, localization, nbeta, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        mini = quadratic_llc_minibatch(spectrum, step_size, localization, nbeta, batch_size)
        return np.where(full > 0, mini / full - 1, 0.0)

